"""TopK SAE training-step time: sparse kernels vs the dense path vs the encoder GEMM alone.

    python bench/kernels/bench_topk_step.py                 # d_model 768, 16x, k 32, batch 4096
    python bench/kernels/bench_topk_step.py --d-model 384   # quicker

A step is forward + backward + optimizer step of `x_hat = decode(topk(encode(x - b_dec)))`
with an MSE loss, selection on pre-activations scaled by decoder norms (as saeops' SAE
does). No training step can be cheaper than its own encoder matmul, so step / GEMM says how
close to that floor a path gets. Two floors:

  GEMM x @ W_enc           the dense encoder matmul as any framework evaluates it (a fresh
                           [B, d_sae] output each call, as in every peer's encoder)
  GEMM into a buffer       `torch.mm(x, W_enc, out=buf)`: the same product with the output's
                           page faults removed; the strictest floor

The paths are timed interleaved (one of each per round, so a slow spell of a shared machine
hits all of them) and each ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import saeops.kernels as K

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class SAE:
    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter

    @classmethod
    def create(cls, d_model: int, d_sae: int, dtype: torch.dtype, device: str) -> SAE:
        W_dec = torch.randn(d_sae, d_model, device=device) / d_model**0.5
        return cls(
            nn.Parameter(W_dec.t().contiguous().to(dtype)),
            nn.Parameter(torch.zeros(d_sae, device=device, dtype=dtype)),
            nn.Parameter(W_dec.to(dtype)),
            nn.Parameter(torch.zeros(d_model, device=device, dtype=dtype)),
        )

    def params(self) -> list[nn.Parameter]:
        return [self.W_enc, self.b_enc, self.W_dec, self.b_dec]


def sparse_loss(sae: SAE, kernels: K.Kernels, x: Tensor, k: int) -> Tensor:
    """The step as a saeops SAE runs it: one `Kernels` object across steps (its workspace and
    sort cache are reused), selection on pre-activations scaled by decoder norms."""
    norms = sae.W_dec.detach().norm(dim=-1)
    values, indices = kernels.topk_encode(x, sae.W_enc, sae.b_enc, k, norms, input_bias=sae.b_dec)
    x_hat = kernels.sparse_decode(indices, values, sae.W_dec, sae.b_dec)
    return (x_hat - x).pow(2).sum(-1).mean()


def dense_loss(sae: SAE, x: Tensor, k: int) -> Tensor:
    """The usual dense implementation: dense top-k mask, dense decoder matmul, autograd."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    scores = pre.detach() * sae.W_dec.detach().norm(dim=-1)
    mask = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, scores.topk(k, dim=-1).indices, True)
    x_hat = (pre.relu() * mask) @ sae.W_dec + sae.b_dec
    return (x_hat - x).pow(2).sum(-1).mean()


def make_optimizer(sae: SAE, kind: str) -> torch.optim.Optimizer:
    # fused=True is one multithreaded pass over (param, grad, m, v); foreach runs ~10 passes
    # over 2 x d_model x d_sae floats, which on 2 CPU cores costs half a GEMM.
    opts = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[kind]
    return torch.optim.Adam(sae.params(), lr=1e-4, **opts)


def timed(fn: Callable[[], object], warmup: int, iters: int, sync: Callable[[], None]) -> list[float]:
    return interleaved({"_": fn}, warmup, iters, sync)["_"]


def interleaved(
    fns: dict[str, Callable[[], object]], warmup: int, iters: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Seconds per call of each function, timed round-robin: one call of each per round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def step_fn(sae: SAE, opt: torch.optim.Optimizer, loss_fn: Callable[[], Tensor]) -> Callable[[], None]:
    def step() -> None:
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def report(
    rows: dict[str, list[float]],
    gemm: str,
    dense: str | None,
    floors: tuple[str, ...] = (),
    paired: Collection[str] = (),
) -> None:
    """Print medians and ratios; rows named in `paired` were timed in the same rounds, so
    their ratios are medians of per-round ratios."""
    med = {name: statistics.median(ts) for name, ts in rows.items()}

    def _ratio(a: str, b: str) -> float:
        if a in paired and b in paired:
            return statistics.median(x / y for x, y in zip(rows[a], rows[b], strict=True))
        return med[a] / med[b]

    cols = [gemm, *floors]
    head = "".join(f"{'/ ' + ('GEMM' if c == gemm else 'buffer GEMM'):>14}" for c in cols)
    print(f"{'path':<30}{'median ms':>11}{'min ms':>9}{head}{'/ dense':>9}")
    for name, ts in rows.items():
        rel = "".join(f"{_ratio(name, c):14.2f}" for c in cols)
        rel_dense = f"{_ratio(name, dense):9.2f}" if dense and dense in rows else f"{'':>9}"
        print(f"{name:<30}{med[name] * 1e3:11.1f}{min(ts) * 1e3:9.1f}{rel}{rel_dense}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=9)
    ap.add_argument("--adam", choices=["fused", "foreach", "loop"], default="fused")
    ap.add_argument("--skip-dense", action="store_true", help="skip the (slow) dense path")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of the sparse step")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype, d_sae = DTYPES[args.dtype], args.d_model * args.expansion
    x = torch.randn(args.batch, args.d_model, dtype=dtype)
    sae = SAE.create(args.d_model, d_sae, dtype, "cpu")
    from saeops.kernels import cpu_ext

    ext = "on" if cpu_ext.module() is not None else "off (SAEOPS_CPU_EXT=0 or no compiler)"
    print(
        f"TopK SAE d_model={args.d_model} d_sae={d_sae} k={args.k} batch={args.batch} {args.dtype} "
        f"threads={torch.get_num_threads()} adam={args.adam}; {args.iters} rounds after {args.warmup} warm-up; "
        f"C++ CPU kernels {ext}"
    )

    def noop() -> None:
        pass

    opt = make_optimizer(sae, args.adam)
    for p in sae.params():
        p.grad = torch.zeros_like(p)
    adam = timed(opt.step, args.warmup, args.iters, noop)
    opt.zero_grad(set_to_none=True)
    buf = torch.empty(args.batch, d_sae, dtype=dtype)
    kernels = K.Kernels()
    sparse_step = step_fn(sae, opt, lambda: sparse_loss(sae, kernels, x, args.k))
    fns: dict[str, Callable[[], object]] = {
        "GEMM x @ W_enc (floor)": lambda: x @ sae.W_enc,
        "GEMM into a buffer": lambda: torch.mm(x, sae.W_enc.detach(), out=buf),
        "sparse step (saeops CPU)": sparse_step,
    }
    if not args.skip_dense:
        fns["dense step (autograd)"] = step_fn(sae, opt, lambda: dense_loss(sae, x, args.k))
    rows = interleaved(fns, args.warmup, args.iters, noop)
    rows[f"Adam step ({args.adam})"] = adam
    report(rows, "GEMM x @ W_enc (floor)", None if args.skip_dense else "dense step (autograd)",
           floors=("GEMM into a buffer",), paired=fns.keys())

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                sparse_step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
