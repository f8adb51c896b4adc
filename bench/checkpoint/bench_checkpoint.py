"""Checkpoint save/load: the safetensors + JSON format vs the pickled `state.pt` it replaced.

Builds the quickstart SAE (d_model 384, expansion 16 -> d_sae 6144, TopK k=32) with its Adam
state after a few steps, then times, interleaved, `--repeats` times each, on the same local
directory (fsync on, as in runs):

  pickle   what saeops wrote before: one `torch.save` of the whole state dict (weights,
           optimizer, trainer state, RNG states) to `state.pt`, loaded with
           `torch.load(weights_only=False)` (which can run code from the file)
  format   `Checkpointer.save` / `Checkpointer.read_latest`: `tensors.safetensors` +
           `state.json` + `manifest.json` (xxh3_128 per file, verified on load), pointer, pruning

and prints the median times, their ratio to `pickle`, and the bytes on disk of each.

    .venv/bin/python bench/checkpoint/bench_checkpoint.py [--repeats 5] [--dir /tmp/saeops-bench-ckpt]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saeops.api import DictionarySpec, TrainerSpec
from saeops.runtime.models import build_dictionary
from saeops.runtime.storage import LocalStorage
from saeops.runtime.train.checkpoint import Checkpointer
from saeops.runtime.train.trainer import Trainer


def quickstart_trainer(steps: int) -> Trainer:
    spec = DictionarySpec(hook_point_in="blocks.3.hook_resid_post", expansion_factor=16, act_fn="topk", top_k=32)
    model = build_dictionary(spec, 384, 384)
    trainer = Trainer(model, TrainerSpec(total_training_tokens=400_000, batch_size=4096, lr=2e-3, log_frequency=10,
                                         progress_bar=False))
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        trainer.train_step({spec.hook_point_in: torch.randn(4096, 384, generator=g)})
    trainer.log_metrics()
    return trainer


def pickle_save(storage: LocalStorage, trainer: Trainer) -> None:
    """The previous format, as `Checkpointer.save` wrote it."""
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    buf = io.BytesIO()
    torch.save({"model": trainer.model.full_state_dict(), "trainer": trainer.state_dict(), "rng": [rng],
                "world_size": 1, "extra": {}}, buf)
    storage.put_bytes("step-00000001/state.pt", buf.getvalue())
    storage.put_json("latest.json", {"step": 1, "key": "step-00000001/state.pt"})


def pickle_load(storage: LocalStorage) -> Any:
    key = storage.get_json("latest.json")["key"]
    return torch.load(io.BytesIO(storage.get_bytes(key)), weights_only=False)


def size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="training steps before checkpointing (Adam state)")
    p.add_argument("--dir", default="/tmp/saeops-bench-ckpt")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    trainer = quickstart_trainer(args.steps)
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    old, new = LocalStorage(root / "pickle"), LocalStorage(root / "format")
    ckpt = Checkpointer(new, keep=1)
    times: dict[str, list[float]] = {"pickle save": [], "format save": [], "pickle load": [], "format load": []}
    for _ in range(args.repeats):
        for name, fn in (("pickle save", lambda: pickle_save(old, trainer)),
                         ("format save", lambda: ckpt.save(trainer.model, trainer)),
                         ("pickle load", lambda: pickle_load(old)),
                         ("format load", lambda: ckpt.read_latest())):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    sizes = {"pickle": size(root / "pickle"), "format": size(root / "format")}
    params = sum(t.numel() for t in trainer.model.state_dict().values())
    print(f"quickstart SAE: {params:,} parameters; {args.repeats} repeats, medians")
    for op in ("save", "load"):
        base = med[f"pickle {op}"]
        for fmt in ("pickle", "format"):
            t = med[f"{fmt} {op}"]
            print(f"  {op} {fmt:<7} {t * 1000:8.1f} ms  ({t / base:.2f}x pickle)")
    for fmt, n in sizes.items():
        print(f"  size {fmt:<7} {n:,} bytes ({n / sizes['pickle']:.4f}x pickle)")
    print(json.dumps({"median_s": med, "bytes": sizes}))


if __name__ == "__main__":
    main()
