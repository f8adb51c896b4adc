"""What every runner shares: the fixed settings, the data, the clock and the one evaluation.

Imported by each runner under its own venv, so it needs only torch and safetensors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
DEFAULT_ACTS = HERE / "data" / "acts.safetensors"

# Held equal for every library.
D_MODEL = 384
EXPANSION = 16
D_SAE = D_MODEL * EXPANSION  # 6144
K = 32
BATCH = 4096
LR = 4e-4
THREADS = 2
SEED = 42
# ReLU+L1 variant (optional): lambda of loss = ||x - x_hat||^2 + lambda * sum_i f_i ||W_dec,i|| on activations
# scaled to E||x|| = sqrt(d) (the Anthropic 2024 recipe; each library keeps its own l1 warm-up).
L1_COEFFICIENT = 5.0
EVAL_CHUNK = 4096

T0 = time.perf_counter()  # process start, as near as a module import gets


@dataclass
class Data:
    train: torch.Tensor  # (N, d) fp32, already shuffled
    eval: torch.Tensor  # (M, d) fp32, held-out windows
    max_steps: int = 0  # smoke tests: train on the first max_steps batches only

    @property
    def steps(self) -> int:
        n = self.train.shape[0] // BATCH
        return min(n, self.max_steps) if self.max_steps > 0 else n

    @property
    def tokens(self) -> int:
        return self.steps * BATCH

    def batches(self) -> Iterator[torch.Tensor]:
        """The training batches, in file order; views, no copy (loading is not timed)."""
        for i in range(self.steps):
            yield self.train[i * BATCH : (i + 1) * BATCH]


def parse_args(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--acts", type=Path, default=DEFAULT_ACTS)
    ap.add_argument("--variant", choices=["topk", "relu"], default="topk")
    ap.add_argument("--out", type=Path, help="append the result JSON line here (default: stdout only)")
    ap.add_argument("--max-steps", type=int, default=0, help="smoke test: only this many batches")
    return ap.parse_args()


def setup(args: argparse.Namespace) -> Data:
    """Fix threads and seeds, load the activation set into memory."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    tensors = load_file(str(args.acts))
    return Data(tensors["train"].float().contiguous(), tensors["eval"].float().contiguous(), args.max_steps)


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def evaluate(
    encode: Callable[[torch.Tensor], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
) -> dict[str, float]:
    """EV, MSE, L0 and dead fraction on the held-out tokens from the library's own encode/decode.

    EV = 1 - SSE / SST, SST around the mean of the whole held-out set. `encode` returns dense
    latents (B, d_sae); a latent is dead if it fires on none of the held-out tokens."""
    mean = x.mean(0)
    sse = sst = l0 = 0.0
    fired: torch.Tensor | None = None
    for chunk in x.split(EVAL_CHUNK):
        z = encode(chunk)
        x_hat = decode(z)
        sse += (x_hat - chunk).pow(2).sum().item()
        sst += (chunk - mean).pow(2).sum().item()
        active = z != 0
        l0 += active.sum().item()
        f = active.any(0)
        fired = f if fired is None else fired | f
    assert fired is not None
    n = x.shape[0]
    return {
        "ev": 1 - sse / sst,
        "mse": sse / (n * x.shape[1]),
        "l0": l0 / n,
        "dead_fraction": 1 - fired.float().mean().item(),
        "d_sae": float(fired.numel()),
        "eval_tokens": float(n),
    }


def report(
    args: argparse.Namespace,
    library: str,
    version: str,
    tokens: int,
    train_s: float,
    metrics: dict[str, float],
    **extra: Any,
) -> dict[str, Any]:
    """Print (and append to --out) one JSON line describing this run."""
    row = {
        "library": library,
        "version": version,
        "variant": args.variant,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "tokens": tokens,
        "train_s": round(train_s, 3),
        "tokens_per_s": round(tokens / train_s, 1),
        "wall_s": round(time.perf_counter() - T0, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        **{k: round(v, 5) for k, v in metrics.items()},
        **extra,
    }
    emit(row, args.out)
    return row


def emit(row: dict[str, Any], out: Path | None) -> None:
    """Print one result row as a JSON line, and append it to `out` when given."""
    line = json.dumps(row)
    print(line, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(line + "\n")


def quiet() -> None:
    """Progress bars off where libraries honour the usual switches."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
