"""`saeops run sweep.yaml`: run an SAESweep's trials on this machine, one group after another
(trials that share an activation stream train together from one model forward).

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

from saeops.api import SAESweep, SAETrainingRun, SpecError, names, pareto, parse_resource, search
from saeops.api.groups import plan_groups
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


def _trial_runs(sweep: SAESweep, doc: dict[str, Any], n: int) -> list[tuple[int, SAETrainingRun | str]]:
    """Trial `i` as a run, or the one line saying why its manifest is not valid."""
    out: list[tuple[int, SAETrainingRun | str]] = []
    for index in range(n):
        manifest = render_trial(doc, sweep, index)
        manifest["metadata"].pop("ownerReferences", None)
        try:
            run = parse_resource(manifest, f"trial {index}")
            assert isinstance(run, SAETrainingRun)
            out.append((index, run))
        except SpecError as e:
            out.append((index, str(e)))
    return out


def _train_group(runs: list[SAETrainingRun], *, progress: bool) -> dict[str, Any]:
    """Each run's final metrics, or its one-line error: trained together from one stream."""
    from saeops.runtime.errors import bad_input_types
    from saeops.runtime.train.group import GroupFailed, GroupJob

    try:
        label = runs[0].metadata.name if len(runs) == 1 else f"{runs[0].metadata.name}+{len(runs) - 1}"
        members = GroupJob(runs, progress=progress, label=label, alone_raises=False).run_group()
    except GroupFailed as e:
        return {m.name: m.error for m in e.members}
    except bad_input_types() as e:  # the group's input (dataset, model, output) is wrong: every trial fails
        return {r.metadata.name: str(e).splitlines()[0] for r in runs}
    return {name: m.result.final if m.result is not None else m.error for name, m in members.items()}


def run_sweep(sweep: SAESweep, *, progress: bool = True) -> int:
    """Run the sweep's trials here. Trials that share an activation stream train together
    (`spec.grouping`, planned by `saeops.api.groups.plan_groups` as the operator plans them);
    the results are reported per trial either way."""
    from saeops.runtime.runner import open_output

    doc = sweep.model_dump(by_alias=True, exclude_none=True, mode="json")
    storage = open_output(sweep.spec.trial_template.output)
    n = planned_trials(sweep)
    runs = _trial_runs(sweep, doc, n)
    valid = [(i, r.spec) for i, r in runs if isinstance(r, SAETrainingRun)]
    # Locally groups run one after another: only grouping.maxTrials bounds a group.
    groups = plan_groups(valid, sweep.spec.grouping, budget=max(1, len(valid)))
    first_of = {g[0]: g for g in groups}
    by_index = dict(runs)
    trials: list[dict[str, Any]] = []
    failed = 0
    stop = False
    for index in range(n):
        entry = by_index[index]
        if isinstance(entry, str) or index in first_of:
            # A group trains when its first trial's turn comes; its results land in trial order.
            outcome = {render_name(sweep, index): entry} if isinstance(entry, str) else _train_group(
                [by_index[i] for i in first_of[index]], progress=progress)  # type: ignore[misc]
            done = [index] if isinstance(entry, str) else first_of[index]
            for i in done:
                name = render_name(sweep, i)
                params = search.assignment(sweep.spec, i)
                result = outcome[name]
                if isinstance(result, dict):
                    trials.append({"name": name, "parameters": params, "final": result})
                    log.info("trial %s %s -> %s=%.4f", name, params, sweep.spec.objective.metric,
                             result.get(sweep.spec.objective.metric, float("nan")))
                else:
                    failed += 1
                    trials.append({"name": name, "parameters": params, "error": result})
                    log.error("trial %s failed: %s", name, result)
                stop = stop or failed > sweep.spec.max_failed_trials or _reached(sweep, trials[-1])
            if stop:
                break
    trials.sort(key=lambda t: int(t["name"].rsplit("-", 1)[-1]))
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


def render_name(sweep: SAESweep, index: int) -> str:
    return names.trial_name(sweep.metadata.name, index)


def _reached(sweep: SAESweep, trial: dict[str, Any]) -> bool:
    """The objective's target is reached by this trial."""
    target = sweep.spec.objective.target
    v = (trial.get("final") or {}).get(sweep.spec.objective.metric)
    if target is None or v is None or not pareto.reached(v, target, sweep.spec.objective.goal):
        return False
    log.info("goal %s reached by %s", target, trial["name"])
    return True
