"""TopK SAE training step on a CUDA GPU: Triton kernels vs torch sparse vs torch dense.

    python bench/kernels/bench_gpu.py                       # d_model 768, 16x, k 32, batch 4096, fp32
    python bench/kernels/bench_gpu.py --dtype bf16 --d-model 4096 --expansion 32 --k 64

Same step and ratios as bench_topk_step.py (step / encoder GEMM, sparse / dense), timed
with CUDA synchronisation; also the sparse kernels alone (decode forward, decode backward,
encoder backward) per backend. `--device cpu` smoke-tests the script without a GPU (tiny
sizes; add TRITON_INTERPRET=1 to include the Triton backend).
"""

from __future__ import annotations

import argparse
import os

import torch
from bench_topk_step import DTYPES, SAE, dense_loss, make_optimizer, report, sparse_loss, step_fn, timed

import saeops.kernels as K


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--adam", choices=["fused", "foreach", "loop"], default="fused")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--profile", action="store_true", help="kernel-time table of one sparse step per backend")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA device: run bench_topk_step.py for the CPU figures, or --device cpu to smoke-test"
        )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    dtype, d_sae = DTYPES[args.dtype], args.d_model * args.expansion
    x = torch.randn(args.batch, args.d_model, device=device, dtype=dtype)
    sae = SAE.create(args.d_model, d_sae, dtype, str(device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{name}: d_model={args.d_model} d_sae={d_sae} k={args.k} batch={args.batch} {args.dtype} adam={args.adam}"
    )

    backends = ["torch"]
    if K.triton_available() and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        backends.insert(0, "triton")

    kernels = {be: K.Kernels(be) for be in backends}  # type: ignore[arg-type]
    rows: dict[str, list[float]] = {}
    rows["GEMM x @ W_enc (floor)"] = timed(lambda: x @ sae.W_enc, args.warmup, args.iters, sync)
    opt = make_optimizer(sae, args.adam)
    for be in backends:
        step = step_fn(sae, opt, lambda be=be: sparse_loss(sae, kernels[be], x, args.k))
        rows[f"sparse step ({be})"] = timed(step, args.warmup, args.iters, sync)
    rows["dense step (autograd)"] = timed(
        step_fn(sae, opt, lambda: dense_loss(sae, x, args.k)), args.warmup, args.iters, sync
    )

    # The sparse pieces alone, on one fixed selection.
    with torch.no_grad():
        norms = sae.W_dec.norm(dim=-1)
        values, indices = kernels["torch"].topk_encode(x, sae.W_enc, sae.b_enc, args.k, norms)
    grad_out = torch.randn_like(x)
    for be in backends:
        v = values.clone().requires_grad_(True)
        rows[f"  decode fwd ({be})"] = timed(
            lambda be=be, v=v: kernels[be].sparse_decode(indices, v, sae.W_dec, sae.b_dec),
            args.warmup, args.iters, sync,
        )  # fmt: skip

        def decode_bwd(be: str = be, v: torch.Tensor = v) -> None:
            out = kernels[be].sparse_decode(indices, v, sae.W_dec, sae.b_dec)
            torch.autograd.grad(out, [v, sae.W_dec], grad_out)

        rows[f"  decode fwd+bwd ({be})"] = timed(decode_bwd, args.warmup, args.iters, sync)
    report(rows, "GEMM x @ W_enc (floor)", "dense step (autograd)")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        for be in backends:
            step = step_fn(sae, opt, lambda be=be: sparse_loss(sae, kernels[be], x, args.k))
            with profile(activities=activities) as prof:
                for _ in range(3):
                    step()
                sync()
            print(f"-- profile: sparse step ({be}), 3 steps")
            print(prof.key_averages().table(sort_by=sort, row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
