"""The floor: the dense encoder matmul alone (x @ W_enc, 4096x384 @ 384x6144, fp32, 2 threads).

Every TopK trainer here computes this GEMM in its forward pass (and two more of its size in the
backward), so tokens/s of this one matmul bounds any step from above.

    python bench/peers/floor.py [--out results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import common
import torch


def gemm_seconds(reps: int = 30, warmup: int = 5) -> list[float]:
    torch.set_num_threads(common.THREADS)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(common.BATCH, common.D_MODEL, generator=g)
    w = torch.randn(common.D_MODEL, common.D_SAE, generator=g) / common.D_MODEL**0.5
    out = torch.empty(common.BATCH, common.D_SAE)
    times = []
    for i in range(warmup + reps):
        t = time.perf_counter()
        torch.mm(x, w, out=out)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    times = gemm_seconds()
    med = statistics.median(times)
    row = {
        "library": "encoder GEMM (floor)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gemm_ms_median": round(med * 1e3, 2),
        "gemm_ms_min": round(min(times) * 1e3, 2),
        "tokens_per_s": round(common.BATCH / med, 1),
        "gflops": round(2 * common.BATCH * common.D_MODEL * common.D_SAE / med / 1e9, 1),
    }
    line = json.dumps(row)
    print(line)
    if args.out is not None:
        with args.out.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
