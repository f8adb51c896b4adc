"""The shapes one GPU run measures, and their tiny CPU stand-ins (same keys, same code paths).

Imported by the orchestrator and by every peer runner (each under its own interpreter), so it
needs nothing beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    key: str  # stable across modes: rows of a tiny run and of a GPU run line up by key
    d_model: int
    expansion: int
    k: int
    dtype: str  # "fp32" | "bf16": the step bench's parameter dtype, the peers' compute dtype
    steps: int  # peer training steps (fixed: every library trains the same batches)
    batch: int = 4096
    eval_tokens: int = 16384
    bench_iters: int = 20  # timed rounds of the step benchmark

    @property
    def d_sae(self) -> int:
        return self.d_model * self.expansion

    @property
    def tokens(self) -> int:
        return self.steps * self.batch

    def describe(self) -> str:
        return f"d{self.d_model} {self.expansion}x k{self.k} {self.dtype}"

    def step_bench_args(self) -> list[str]:
        """Arguments of bench/kernels/bench_gpu.py for this shape."""
        return [
            "--d-model", str(self.d_model), "--expansion", str(self.expansion), "--k", str(self.k),
            "--batch", str(self.batch), "--dtype", self.dtype, "--iters", str(self.bench_iters),
        ]  # fmt: skip


# Issue 18's shapes: the last one (Gemma-2-2B's residual width) follows neither pattern.
# Steps are sized so that each library's fit stays a few seconds at the slowest (dense) peer.
GPU_SHAPES = [
    Shape("small-fp32", 768, 16, 32, "fp32", steps=150),
    Shape("small-bf16", 768, 16, 32, "bf16", steps=150),
    Shape("large-bf16", 4096, 32, 64, "bf16", steps=40, bench_iters=10),
    Shape("gemma-bf16", 2304, 64, 64, "bf16", steps=40, bench_iters=10),
]

# Same keys on the CPU: widths that still differ per shape, a batch that is a whole number of
# sparsify's 128-token stand-in sequences, a handful of steps.
TINY_SHAPES = [
    Shape("small-fp32", 32, 4, 4, "fp32", steps=6, batch=256, eval_tokens=512, bench_iters=2),
    Shape("small-bf16", 32, 4, 4, "bf16", steps=6, batch=256, eval_tokens=512, bench_iters=2),
    Shape("large-bf16", 64, 4, 8, "bf16", steps=6, batch=256, eval_tokens=512, bench_iters=2),
    Shape("gemma-bf16", 48, 8, 8, "bf16", steps=6, batch=256, eval_tokens=512, bench_iters=2),
]


def select(tiny: bool, keys: str | None = None) -> list[Shape]:
    """The shapes of a mode, optionally only `keys` (comma-separated, in the given order)."""
    table = {s.key: s for s in (TINY_SHAPES if tiny else GPU_SHAPES)}
    if not keys:
        return list(table.values())
    wanted = [k.strip() for k in keys.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in table]
    if unknown:
        raise ValueError(f"--shapes: unknown {', '.join(unknown)} (known: {', '.join(table)})")
    return [table[k] for k in wanted]
