"""Reconcile a sweep with 1,000 trials (pure function) and report CPU time (goal: < 1 s).

    python bench/operator/bench_sweep_reconcile.py [--trials 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import copy
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from saeops.api import SAESweep
from saeops.operator.state import ObservedSweep
from saeops.operator.sweep import reconcile_sweep, render_trial

ROOT = Path(__file__).resolve().parents[2]


def make_sweep(trials: int) -> dict:
    run = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    return {
        "apiVersion": "saeops.io/v1alpha1", "kind": "SAESweep",
        "metadata": {"name": "bench", "namespace": "default", "uid": "u", "generation": 1},
        "spec": {
            "trialTemplate": run["spec"],
            "parameters": [
                {"name": "sae.topK", "uniform": {"min": 8, "max": 128}, "integer": True},
                {"name": "trainer.lr", "logUniform": {"min": 1e-5, "max": 1e-2}},
            ],
            "searchAlgorithm": {"type": "random", "seed": 0},
            "objective": {"metric": "explained_variance", "goal": "maximize", "paretoMetric": "l0"},
            "maxTrials": trials + 100, "parallelTrials": 50, "maxFailedTrials": trials,
        },
    }


def make_trials(sweep: dict, n: int) -> tuple[dict, ...]:
    model = SAESweep.model_validate(sweep)
    out = []
    for i in range(n):
        t = render_trial(sweep, model, i)
        phase = "Failed" if i % 17 == 0 else "Running" if i % 23 == 0 else "Succeeded"
        t["status"] = {"phase": phase, "metrics": {"explained_variance": f"{(i * 7919 % 1000) / 1000:.3f}",
                                                   "l0": str(8 + i % 120)}}
        out.append(t)
    return tuple(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    sweep = make_sweep(args.trials)
    trials = make_trials(sweep, args.trials)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    times = []
    for _ in range(args.repeat):
        obs = ObservedSweep(resource=copy.deepcopy(sweep), trials=trials)
        t0 = time.process_time()
        d = reconcile_sweep(obs, now)
        times.append(time.process_time() - t0)
    st = d.status or {}
    print(f"trials={args.trials} created={len(d.create)} pareto={len(st.get('pareto', []))} best={st.get('bestTrial', {}).get('name')}")
    print(f"cpu seconds per reconcile: min={min(times):.4f} median={sorted(times)[len(times) // 2]:.4f} (goal < 1 s)")


if __name__ == "__main__":
    main()
