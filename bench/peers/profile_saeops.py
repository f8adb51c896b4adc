"""Where a saeops training step spends its time: torch.profiler's top operators over a few steps
of the benchmark's TopK configuration, plus the median step time next to the encoder GEMM alone.

    python bench/peers/profile_saeops.py [--steps 6] [--out profile.txt]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import common

common.quiet()

import floor  # noqa: E402
import torch  # noqa: E402
from run_saeops import HOOK, build  # noqa: E402

from saeops.api import InitializerSpec  # noqa: E402
from saeops.runtime.models import (  # noqa: E402
    Initializer,
    LossContext,
    build_dictionary,
)
from saeops.runtime.train.trainer import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--acts", type=Path, default=common.DEFAULT_ACTS)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.max_steps = args.warmup + 2 * args.steps
    data = common.setup(args)
    sae_spec, trainer_spec = build("topk", common.BATCH * 1000)
    model = build_dictionary(sae_spec, d_in=common.D_MODEL, d_out=common.D_MODEL)
    sample = data.train[:16384]
    Initializer(InitializerSpec(bias_init_method="geometric_median"), seed=common.SEED).initialize(
        model, sample
    )
    trainer = Trainer(model, trainer_spec)
    batches = [{HOOK: x} for x in data.batches()]

    for b in batches[: args.warmup]:
        trainer.train_step(b)
    # Timed without the profiler, each step followed by one encoder GEMM, so that each ratio
    # compares the two under the same (shared, drifting) machine load.
    step_s, gemm_s = [], []
    floor.gemm_seconds(reps=2)
    for b in batches[args.warmup : args.warmup + args.steps]:
        t = time.perf_counter()
        trainer.train_step(b)
        step_s.append(time.perf_counter() - t)
        gemm_s.append(min(floor.gemm_seconds(reps=2, warmup=0)))
    # The same step split into phases (what Trainer.train_step does, minus its lr/bookkeeping).
    ctx = LossContext(trainer_spec, k=common.K)
    phases = {"forward+loss": 0.0, "backward": 0.0, "optimizer": 0.0, "metrics": 0.0}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for b in batches[args.warmup + args.steps :]:
            t = time.perf_counter()
            out = model.compute_loss(b[HOOK], b[HOOK], ctx)
            t, phases["forward+loss"] = time.perf_counter(), phases["forward+loss"] + time.perf_counter() - t
            trainer.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            t, phases["backward"] = time.perf_counter(), phases["backward"] + time.perf_counter() - t
            trainer.optimizer.step()
            t, phases["optimizer"] = time.perf_counter(), phases["optimizer"] + time.perf_counter() - t
            counts = out.acts.fire_counts()
            trainer.window.update(out.x_hat, out.target, out.acts.l0(), counts, {"total": out.loss.detach()})
            trainer.tracker.update(counts, common.BATCH)
            phases["metrics"] += time.perf_counter() - t
    split = ", ".join(f"{k} {v / args.steps * 1e3:.0f} ms" for k, v in phases.items())
    gemm = statistics.median(gemm_s)
    step = statistics.median(step_s)
    ratio = statistics.median(s / g for s, g in zip(step_s, gemm_s, strict=True))
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40)
    text = (
        f"saeops TopK step (4096 tokens, d_sae {common.D_SAE}, k {common.K}, {common.THREADS} threads): "
        f"median {step * 1e3:.0f} ms over {args.steps} steps; encoder GEMM alone {gemm * 1e3:.0f} ms; "
        f"median of per-step ratios step / GEMM = {ratio:.2f}\n"
        f"per step, under the profiler: {split}\n"
        f"torch.profiler, {args.steps} steps, top ops by self CPU time:\n{table}"
    )
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
