"""What every GPU peer runner shares: arguments, data, warm-up, clocks, memory, the floor GEMM,
evaluation and the result line. Each runner (`peer_<library>.py`) only says how its library
builds, trains and encodes/decodes one SAE.

Runs under each library's interpreter, so it needs only torch (+ the CPU peer harness
`bench/peers/common.py`, whose evaluation function is reused as is: one EV definition for the
CPU and the GPU benchmark).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "peers"))

import common  # noqa: E402  (bench/peers/common.py)
import shapes  # noqa: E402
import synth  # noqa: E402
import torch  # noqa: E402

SEED = 42
LR = common.LR
WARMUP_STEPS = 2
NOT_INSTALLED = 3  # exit code: the library does not import here

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Ctx:
    """One shape's run: where, what, and the activations (already on the device)."""

    shape: shapes.Shape
    device: torch.device
    train: torch.Tensor  # (steps * batch, d) fp32
    eval: torch.Tensor  # (eval_tokens, d) fp32
    warmup: bool = False  # a throwaway run of a few steps (kernels compile, allocator grows)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.shape.dtype]

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def batches(self) -> Iterator[torch.Tensor]:
        """Batch i is rows batch*i... of the training set for every library (views, no copy)."""
        b = self.shape.batch
        for i in range(self.shape.steps):
            yield self.train[i * b : (i + 1) * b]

    def clock(self, fn: Callable[[], object]) -> float:
        """Seconds of `fn()`, device work included."""
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0


@dataclass
class Trained:
    """What a runner hands back after training one SAE."""

    init_s: float  # construction + the library's initialisation (untimed for tokens/s)
    train_s: float  # the library's fit call, device work included
    encode: Callable[[torch.Tensor], torch.Tensor]  # x -> dense latents (B, d_sae)
    decode: Callable[[torch.Tensor], torch.Tensor]  # dense latents -> x_hat (raw space)
    precision: str  # how the library computed at this shape (params / autocast)
    extra: dict[str, Any] = field(default_factory=dict)


class Library(Protocol):
    name: str

    def load(self, ctx_device: torch.device) -> str:
        """Import the library (ImportError: not installed); return its version."""
        ...

    def train(self, ctx: Ctx) -> Trained:
        """Build, initialise (skippable when `ctx.warmup`) and train a fresh SAE on
        `ctx.batches()`, `ctx.shape.steps` steps of `ctx.shape.batch`."""
        ...


def parse_args(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--tiny", action="store_true", help="the tiny CPU shapes")
    ap.add_argument("--shapes", default="", help="comma-separated shape keys (default: all)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, help="append one JSON line per shape here")
    return ap.parse_args()


def floor_gemm_ms(ctx: Ctx, reps: int = 20) -> float:
    """Median ms of `x @ W_enc` at the shape's dtype, torch's default fp32 precision (no TF32):
    the encoder GEMM every step computes; step / this is the ratio the step bench reports."""
    s = ctx.shape
    g = torch.Generator(device=ctx.device).manual_seed(0)
    x = torch.randn(s.batch, s.d_model, generator=g, device=ctx.device).to(ctx.dtype)
    w = (torch.randn(s.d_model, s.d_sae, generator=g, device=ctx.device) / s.d_model**0.5).to(ctx.dtype)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        for _ in range(3):
            x @ w
        times = [ctx.clock(lambda: x @ w) for _ in range(reps)]
    finally:
        torch.set_float32_matmul_precision(before)
    return statistics.median(times) * 1e3


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _mem_mark(ctx: Ctx) -> int:
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
        return torch.cuda.memory_allocated(ctx.device)
    return 0


def _mem_peak_mib(ctx: Ctx, base: int) -> float:
    """GPU: peak allocated above what was held before the SAE was built (the activations).
    CPU: the process's peak RSS (whole process, activations included)."""
    if ctx.cuda:
        return (torch.cuda.max_memory_allocated(ctx.device) - base) / 2**20
    return common.peak_rss_mib()


def run_one(lib: Library, version: str, shape: shapes.Shape, device: torch.device) -> dict[str, Any]:
    train, ev = synth.activations(shape.d_model, shape.tokens, shape.eval_tokens, device, seed=shape.d_model)
    ctx = Ctx(shape, device, train, ev)
    torch.manual_seed(SEED)
    # A throwaway model trained for a few steps first: JIT compilation (Triton), cuBLAS handles
    # and allocator growth stay out of the timed fit, as any long run amortises them.
    warm = lib.train(dataclasses.replace(ctx, shape=dataclasses.replace(shape, steps=WARMUP_STEPS), warmup=True))
    del warm
    _free()
    torch.manual_seed(SEED)
    base = _mem_mark(ctx)
    trained = lib.train(ctx)
    peak = _mem_peak_mib(ctx, base)
    with torch.no_grad():
        metrics = common.evaluate(trained.encode, trained.decode, ctx.eval)
    gemm_ms = floor_gemm_ms(ctx)
    step_ms = trained.train_s / shape.steps * 1e3
    return {
        "library": lib.name,
        "version": version,
        "shape": shape.key,
        "shape_desc": shape.describe(),
        "status": "ok",
        "device": torch.cuda.get_device_name(device) if ctx.cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "precision": trained.precision,
        "steps": shape.steps,
        "batch": shape.batch,
        "tokens": shape.tokens,
        "init_s": round(trained.init_s, 3),
        "train_s": round(trained.train_s, 4),
        "tokens_per_s": round(shape.tokens / trained.train_s, 1),
        "step_ms": round(step_ms, 3),
        "gemm_ms": round(gemm_ms, 4),
        "step_over_gemm": round(step_ms / gemm_ms, 3),
        "peak_mib": round(peak, 1),
        "peak_kind": "gpu_allocated_above_data" if ctx.cuda else "process_rss",
        "data": synth.fingerprint(train),
        **{k: round(v, 5) for k, v in metrics.items()},
        **trained.extra,
    }


def emit(row: dict[str, Any], out: Path | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(line + "\n")


def main(lib: Library, description: str) -> int:
    """Run every selected shape; one JSON line each, a failing shape does not stop the rest."""
    common.quiet()
    args = parse_args(description)
    device = torch.device(args.device)
    selected = shapes.select(args.tiny, args.shapes)
    try:
        version = lib.load(device)
    except ImportError as e:
        for s in selected:
            emit({"library": lib.name, "shape": s.key, "status": f"not installed ({e})"}, args.out)
        return NOT_INSTALLED
    except Exception as e:  # installed but broken here (a version clash): say so per shape
        traceback.print_exc()
        for s in selected:
            emit({"library": lib.name, "shape": s.key, "status": f"failed to import ({type(e).__name__}: {e})"[:300]}, args.out)
        return 1
    failed = 0
    for s in selected:
        t0 = time.perf_counter()
        try:
            row = run_one(lib, version, s, device)
        except Exception as e:  # a shape that fails (OOM, a library error) leaves the others
            traceback.print_exc()
            failed += 1
            row = {"library": lib.name, "version": version, "shape": s.key, "status": f"failed ({type(e).__name__}: {e})"[:300]}
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        emit(row, args.out)
        _free()
    return 1 if failed else 0
