"""Training groups: wall time of N dictionaries from one activation stream vs one run each.

Three cases, each against its baselines in the same bench run:

- `sweep`: examples/sweep.yaml's first `--trials` trials (k x lr, MiniLM L3, `--tokens`
  each, as issue 20 states it): one trial alone, the trials one after another (grouping off,
  today's behaviour) and grouped (one forward per batch for all). Also checks that every
  trial's final metrics are equal grouped and alone (the wall-clock fields aside).
- `command`: the same slice as a user runs it, whole `saeops run examples/sweep.yaml` commands
  (start-up, model load, training, artifacts, sweep.json and the Pareto plot): one trial, the
  trials grouped and the trials one by one, `--repeat` times in turn (the fastest of each is
  the figure: the others' load only ever adds).
- `layers`: one SAE per layer of MiniLM (`sae.perHookPoint`, 6 hook points) vs six runs,
  one per layer.

    .venv/bin/python bench/group/bench_group.py [--case sweep|command|layers|all] [--tokens 100000] [--trials 4]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from saeops.api import SAESweep, SAETrainingRun, load_resource, parse_resource
from saeops.runtime.sweep_local import run_sweep
from saeops.runtime.train.job import TrainingJob

REPO = Path(__file__).resolve().parents[2]
TIMING = {"seconds", "tokens_per_second"}


def sweep_doc(out: Path, tokens: int, trials: int, grouping: bool) -> dict[str, Any]:
    sweep = load_resource(str(REPO / "examples" / "sweep.yaml"))
    assert isinstance(sweep, SAESweep)
    doc = sweep.model_dump(by_alias=True, exclude_none=True, mode="json")
    spec = doc["spec"]
    spec["maxTrials"] = trials
    spec["grouping"] = {"enabled": grouping, "maxTrials": max(trials, 1)}
    template = spec["trialTemplate"]
    template["trainer"].update(totalTrainingTokens=tokens, progressBar=False)
    template["output"] = {"storageUri": str(out)}
    return doc


CPU: dict[str, float] = {}


def timed(fn: Any, name: str = "") -> float:
    """Wall seconds of `fn()`; its CPU seconds (every thread of this process) go to CPU[name]:
    on a shared machine CPU time shows the work done, wall time also the others' load."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    CPU[name] = time.process_time() - c
    return time.perf_counter() - t


def bench_sweep(tmp: Path, tokens: int, trials: int) -> list[str]:
    def sweep(name: str, grouping: bool) -> SAESweep:
        res = parse_resource(sweep_doc(tmp / name, tokens, trials, grouping), name)
        assert isinstance(res, SAESweep)
        return res

    one_doc = sweep_doc(tmp / "alone", tokens, 1, False)
    template = one_doc["spec"]["trialTemplate"]
    alone = parse_resource({"apiVersion": "saeops.io/v1alpha1", "kind": "SAETrainingRun",
                            "metadata": {"name": "minilm-l3-grid-0"}, "spec": template}, "alone")
    assert isinstance(alone, SAETrainingRun)
    t_alone = timed(lambda: TrainingJob(alone, progress=False).run_job(), "alone")
    t_serial = timed(lambda: run_sweep(sweep("serial", False), progress=False), "serial")
    t_grouped = timed(lambda: run_sweep(sweep("grouped", True), progress=False), "grouped")

    serial = {t["name"]: t for t in json.loads((tmp / "serial" / "sweep.json").read_text())["trials"]}
    grouped = {t["name"]: t for t in json.loads((tmp / "grouped" / "sweep.json").read_text())["trials"]}
    same = all({k: v for k, v in serial[n]["final"].items() if k not in TIMING}
               == {k: v for k, v in grouped[n]["final"].items() if k not in TIMING} for n in serial)
    return [
        f"sweep slice: {trials} trials x {tokens:,} tokens (examples/sweep.yaml, MiniLM blocks.3)",
        "  (wall seconds; CPU seconds of this process in brackets)",
        f"  one trial alone          {t_alone:7.1f} s   1.00x           [{CPU['alone']:.1f}]",
        f"  {trials} trials one by one    {t_serial:7.1f} s   {t_serial / t_alone:.2f}x of one trial   "
        f"[{CPU['serial']:.1f}: {CPU['serial'] / CPU['alone']:.2f}x]",
        f"  {trials} trials grouped       {t_grouped:7.1f} s   {t_grouped / t_alone:.2f}x of one trial   "
        f"[{CPU['grouped']:.1f}: {CPU['grouped'] / CPU['alone']:.2f}x], "
        f"{t_serial / t_grouped:.2f}x faster than one by one",
        f"  per-trial final metrics equal grouped vs one by one (time fields aside): {same}",
    ]


def bench_command(tmp: Path, tokens: int, trials: int, repeat: int) -> list[str]:
    """`saeops run examples/sweep.yaml` as the issue states the slice, in fresh processes."""
    saeops = Path(sys.executable).with_name("saeops")
    cases = {"one trial": (1, True), f"{trials} trials grouped": (trials, True),
             f"{trials} trials one by one": (trials, False)}
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(repeat):
        for name, (n, grouping) in cases.items():
            out = tmp / f"{r}-{n}-{grouping}"
            cmd = [str(saeops), "run", str(REPO / "examples" / "sweep.yaml"), "--no-progress", "--output", str(out),
                   "--set", f"spec.maxTrials={n}", "--set", f"spec.grouping.enabled={str(grouping).lower()}",
                   "--set", f"spec.trialTemplate.trainer.totalTrainingTokens={tokens}"]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall[name].append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    one = min(wall["one trial"])
    lines = [f"whole commands: saeops run examples/sweep.yaml --set spec.maxTrials=N, {tokens:,} tokens per trial",
             f"  (fastest of {repeat}; every run's wall seconds, and the fastest one's CPU seconds, in brackets)"]
    for name in cases:
        best = min(wall[name])
        runs = ", ".join(f"{w:.1f}" for w in wall[name])
        lines.append(f"  {name:<22} {best:7.1f} s   {best / one:.2f}x of one trial   "
                     f"[{runs}; CPU {cpu[name][wall[name].index(best)]:.1f}]")
    return lines


def bench_layers(tmp: Path, tokens: int) -> list[str]:
    doc = sweep_doc(tmp, tokens, 1, False)["spec"]["trialTemplate"]
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(6)]
    t_each = []
    for hook in hooks:
        spec = copy.deepcopy(doc)
        spec["sae"]["hookPointIn"] = hook
        spec["output"] = {"storageUri": str(tmp / "each" / hook)}
        run = parse_resource({"apiVersion": "saeops.io/v1alpha1", "kind": "SAETrainingRun",
                              "metadata": {"name": "minilm-layer"}, "spec": spec}, hook)
        assert isinstance(run, SAETrainingRun)
        t_each.append(timed(lambda run=run: TrainingJob(run, progress=False).run_job(), hook))
    spec = copy.deepcopy(doc)
    spec["sae"].pop("hookPointIn")
    spec["sae"]["perHookPoint"] = hooks
    spec["output"] = {"storageUri": str(tmp / "together")}
    run = parse_resource({"apiVersion": "saeops.io/v1alpha1", "kind": "SAETrainingRun",
                          "metadata": {"name": "minilm-layers"}, "spec": spec}, "together")
    assert isinstance(run, SAETrainingRun)
    job = TrainingJob(run, progress=False)
    t_together = timed(job.run_members, "together")
    cpu_each = sum(CPU[h] for h in hooks)
    evs = [json.loads((tmp / "together" / h / "metrics.json").read_text())["final"]["explained_variance"]
           for h in hooks]
    return [
        f"one SAE per layer: MiniLM blocks.0-5.hook_resid_post, {tokens:,} tokens each",
        "  (wall seconds; CPU seconds of this process in brackets)",
        f"  six runs, one per layer  {sum(t_each):7.1f} s   ({', '.join(f'{t:.1f}' for t in t_each)})  [{cpu_each:.1f}]",
        f"  one run, perHookPoint    {t_together:7.1f} s   [{CPU['together']:.1f}]   "
        f"{sum(t_each) / t_together:.2f}x faster (CPU {cpu_each / CPU['together']:.2f}x), "
        f"{job.group.forwards} stream batches for {run.spec.trainer.total_steps} steps",
        f"  per-layer EV: {', '.join(f'{e:.3f}' for e in evs)}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=["sweep", "command", "layers", "all"], default="all")
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each whole command (case command)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("SAEOPS_DATA_DIR", os.path.join(tempfile.gettempdir(), "saeops-bench-data"))
    with tempfile.TemporaryDirectory(prefix="saeops-bench-group-") as tmp:
        # Warm-up: model files and the dataset in the page cache, so no case pays for it alone.
        warm = parse_resource(sweep_doc(Path(tmp) / "warm", 8192, 1, False), "warm")
        assert isinstance(warm, SAESweep)
        run_sweep(warm, progress=False)
        lines: list[str] = []
        if args.case in ("sweep", "all"):
            lines += bench_sweep(Path(tmp) / "sweep", args.tokens, args.trials)
        if args.case in ("command", "all"):
            lines += bench_command(Path(tmp) / "command", args.tokens, args.trials, args.repeat)
        if args.case in ("layers", "all"):
            lines += bench_layers(Path(tmp) / "layers", args.tokens)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
