"""`saeops run sweep.yaml`: run an SAESweep's trials one after another on this machine.

Trials are made exactly as the operator makes them (same names, parameters and output
prefixes), so a local sweep and a cluster sweep of one manifest are comparable. The sweep's
output prefix gets `sweep.json` (every trial's parameters and final metrics, the best trial,
the Pareto front) and `pareto.png`.
"""

from __future__ import annotations

import io
import logging
import math
from typing import Any

from saeops.api import SAESweep, SAETrainingRun, SpecError, pareto, parse_resource, search
from saeops.api.trials import planned_trials, render_trial

log = logging.getLogger("saeops.sweep")


def summarize(sweep: SAESweep, trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Best trial and Pareto front (objective vs paretoMetric) over the finished trials, chosen
    exactly as the operator chooses them for a sweep's status."""
    obj = sweep.spec.objective
    scored = []
    for t in trials:
        final = t.get("final") or {}
        v = final.get(obj.metric)
        if v is not None and math.isfinite(v):
            p = final.get(obj.pareto_metric) if obj.pareto_metric else None
            scored.append(pareto.Scored(t["name"], v, p if p is not None and math.isfinite(p) else None, t))
    best, front = pareto.best_and_front(scored, obj.goal)
    return {"trials": trials, "best_trial": best.name if best else None,
            "pareto": [s.name for s in front] if obj.pareto_metric else [],
            "objective": obj.model_dump(by_alias=True)}


def plot_pareto(sweep: SAESweep, summary: dict[str, Any]) -> bytes | None:
    """PNG of every trial in (paretoMetric, objective) with the front highlighted."""
    obj = sweep.spec.objective
    if not obj.pareto_metric:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [t for t in summary["trials"] if t.get("final")]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.scatter([t["final"][obj.pareto_metric] for t in pts], [t["final"][obj.metric] for t in pts],
               color="#8aa", label="trials")
    front = [t for t in pts if t["name"] in summary["pareto"]]
    front.sort(key=lambda t: t["final"][obj.pareto_metric])
    ax.plot([t["final"][obj.pareto_metric] for t in front], [t["final"][obj.metric] for t in front],
            "o-", color="#c33", label="Pareto front")
    for t in pts:
        ax.annotate(t["name"].rsplit("-", 1)[-1], (t["final"][obj.pareto_metric], t["final"][obj.metric]),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(obj.pareto_metric)
    ax.set_ylabel(obj.metric)
    ax.set_title(sweep.metadata.name)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def run_sweep(sweep: SAESweep, *, progress: bool = True) -> int:
    from saeops.runtime.runner import open_output
    from saeops.runtime.train.job import TrainingJob

    doc = sweep.model_dump(by_alias=True, exclude_none=True, mode="json")
    storage = open_output(sweep.spec.trial_template.output)
    n = planned_trials(sweep)
    trials: list[dict[str, Any]] = []
    failed = 0
    for index in range(n):
        manifest = render_trial(doc, sweep, index)
        manifest["metadata"].pop("ownerReferences", None)
        params = search.assignment(sweep.spec, index)
        try:
            run = parse_resource(manifest, f"trial {index}")
            assert isinstance(run, SAETrainingRun)
            result = TrainingJob(run, progress=progress).run_job()
            trials.append({"name": manifest["metadata"]["name"], "parameters": params, "final": result.final})
            log.info("trial %s %s -> %s=%.4f", manifest["metadata"]["name"], params,
                     sweep.spec.objective.metric, result.final.get(sweep.spec.objective.metric, float("nan")))
        except SpecError as e:
            failed += 1
            trials.append({"name": manifest["metadata"]["name"], "parameters": params, "error": str(e)})
            log.error("trial %s failed: %s", manifest["metadata"]["name"], e)
            if failed > sweep.spec.max_failed_trials:
                break
        target = sweep.spec.objective.target
        if target is not None and trials[-1].get("final"):
            v = trials[-1]["final"].get(sweep.spec.objective.metric)
            if v is not None and pareto.reached(v, target, sweep.spec.objective.goal):
                log.info("goal %s reached by %s", target, trials[-1]["name"])
                break
    summary = summarize(sweep, trials)
    storage.put_json("sweep.json", summary)
    png = plot_pareto(sweep, summary)
    if png is not None:
        storage.put_bytes("pareto.png", png)
    print(f"sweep {sweep.metadata.name}: {len(trials)} trials, {failed} failed, best {summary['best_trial']}")
    for t in trials:
        f = t.get("final") or {}
        print(f"  {t['name']}: {t['parameters']} l0={f.get('l0', float('nan')):.2f} "
              f"ev={f.get('explained_variance', float('nan')):.4f}{'  FAILED: ' + t['error'] if 'error' in t else ''}")
    print(f"summary: {storage.url('sweep.json')}")
    return 0 if failed <= sweep.spec.max_failed_trials else 1
