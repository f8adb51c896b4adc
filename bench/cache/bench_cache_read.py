"""Activation-cache read throughput vs. reading the same bytes raw from the same disk.

Writes a local `file://` cache of about `--mb` MB (random activations), then times, in one run:

  raw        plain sequential reads of every shard file into one reused buffer (the disk's speed)
  reader     CacheReader over the cache: read-ahead threads, checksum verification (the
             manifest records sha256 and xxh3-128 per shard; the reader verifies xxh3-128),
             zero-copy safetensors parsing, seeded row shuffling, exact `--batch-size` batches

and prints each as GB/s and as a ratio to `raw` (goal: >= 0.8). It runs "cold" (page cache
dropped before each measurement: needs root and a writable /proc/sys/vm/drop_caches) when
possible, and always "warm" (files already in the page cache, so the disk is not the limit and
the ratio shows the CPU cost of verification and shuffling).

    .venv/bin/python bench/cache/bench_cache_read.py [--mb 500] [--dir /tmp/saeops-bench-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from saeops.runtime.cache import CacheReader, CacheWriter, load_manifest
from saeops.runtime.storage import LocalStorage

HOOK = "blocks.6.hook_resid_post"


def build(root: Path, mb: int, d_model: int, tokens_per_shard: int) -> LocalStorage:
    st = LocalStorage(root)
    tokens = mb * 1_000_000 // (d_model * 4)
    try:
        m = load_manifest(st)
        if m["total_tokens"] == tokens and m["d_model"][HOOK] == d_model and m["tokens_per_shard"] == tokens_per_shard:
            return st
    except Exception:
        pass
    shutil.rmtree(root, ignore_errors=True)
    w = CacheWriter(st, [HOOK], d_model, torch.float32, tokens_per_shard,
                    {"model": {"name": "bench"}, "dataset": {"name": "random"}}, context_size=128, seed=0)
    g = torch.Generator().manual_seed(0)
    step = 8192
    for a in range(0, tokens, step):
        n = min(step, tokens - a)
        rows = torch.arange(a, a + n)
        w.write({HOOK: torch.randn(n, d_model, generator=g)}, torch.randint(0, 50_000, (n,), generator=g),
                (rows % 128).int(), rows // 128)
    w.finalize()
    return st


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def raw_read(paths: list[Path]) -> float:
    """Plain sequential reads of every file into one reused buffer: the fastest way to get the
    bytes into memory (a fresh buffer per file would add page faults the reader avoids too)."""
    buf = np.empty(max(p.stat().st_size for p in paths), dtype=np.uint8)
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            view, got = memoryview(buf[:size]).cast("B"), 0
            while got < size:
                got += f.readinto(view[got:])
    return time.perf_counter() - t0


def reader_read(st: LocalStorage, batch_size: int, read_ahead: int, verify: bool, shuffle: bool) -> tuple[float, int]:
    t0 = time.perf_counter()
    rows = 0
    for b in CacheReader(st, HOOK, batch_size=batch_size, seed=0, read_ahead=read_ahead, verify=verify,
                         shuffle=shuffle):
        rows += b.activations.shape[0]
    return time.perf_counter() - t0, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/saeops-bench-cache")
    ap.add_argument("--mb", type=int, default=500, help="cache size in MB")
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--tokens-per-shard", type=int, default=16384)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--read-ahead", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is kept")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the cache directory afterwards")
    args = ap.parse_args()

    t0 = time.perf_counter()
    st = build(Path(args.dir), args.mb, args.d_model, args.tokens_per_shard)
    m = load_manifest(st)
    paths = [st.path(e["key"]) for e in m["shards"][HOOK]]
    total = sum(e["bytes"] for e in m["shards"][HOOK])
    print(f"cache: {st.uri}  {total / 1e6:.0f} MB in {len(paths)} shards, {m['total_tokens']:,} tokens x "
          f"d_model {args.d_model} float32  (ready in {time.perf_counter() - t0:.1f} s)")
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, batch {args.batch_size}, "
          f"read_ahead {args.read_ahead}")

    cold = drop_caches()
    modes = (["cold"] if cold else []) + ["warm"]
    if not cold:
        print("note: cannot drop the page cache here (needs root); only warm reads are measured")
    variants = [("reader verify+shuffle", True, True), ("reader shuffle, no verify", False, True),
                ("reader verify, in order", True, False)]
    results = []
    for mode in modes:
        def prep(mode: str = mode) -> None:
            if mode == "cold":
                drop_caches()
            else:
                raw_read(paths)  # make sure everything is resident
        best_raw = float("inf")
        for _ in range(args.repeat):
            prep()
            best_raw = min(best_raw, raw_read(paths))
        results.append({"mode": mode, "method": "raw file reads", "seconds": best_raw, "gbps": total / best_raw / 1e9,
                        "ratio": 1.0, "tokens_per_s": m["total_tokens"] / best_raw})
        for name, verify, shuffle in variants:
            best = float("inf")
            for _ in range(args.repeat):
                prep()
                secs, rows = reader_read(st, args.batch_size, args.read_ahead, verify, shuffle)
                best = min(best, secs)
            results.append({"mode": mode, "method": name, "seconds": best, "gbps": total / best / 1e9,
                            "ratio": best_raw / best, "tokens_per_s": rows / best})

    print()
    print(f"{'page cache':<10}  {'method':<26}  {'seconds':>8}  {'GB/s':>6}  {'Mtok/s':>7}  {'ratio':>6}")
    for r in results:
        print(f"{r['mode']:<10}  {r['method']:<26}  {r['seconds']:8.3f}  {r['gbps']:6.2f}  "
              f"{r['tokens_per_s'] / 1e6:7.3f}  {r['ratio']:6.2f}")
    if args.json:
        print(json.dumps({"bytes": total, "shards": len(paths), "results": results}, indent=2))
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
