"""Pure reconcile of an SAESweep: trials are SAETrainingRuns made from trialTemplate.

Status keeps counts, the best trial and a bounded Pareto front; trials are found by the
label `saeops.io/sweep=<name>` and never listed in the status. Katib-style state machine:
GoalReached and MaxFailedTrialsReached stop the sweep; MaxTrialsReached ends it once every
trial finished; raising maxTrials (or maxFailedTrials) makes it Running again.

Trials that share one activation stream are packed into groups trained by one Job the sweep
owns (`groupsweep.py`); `parallelTrials` stays a budget of running trials, grouped or not.
"""

from __future__ import annotations

import copy
import json
import math
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from saeops.api import SAESweep, SpecError, format_validation_error, names, pareto, search
from saeops.api.trials import planned_trials
from saeops.operator.conditions import SPEC_FAILURES, SWEEP_CONDITIONS, Conditions, rfc3339
from saeops.operator.groupsweep import GroupPass, foreign_children, plan_new_trials, render_sweep_groups
from saeops.operator.policy import ClusterPolicy
from saeops.operator.state import Desired, Event, ObservedSweep

Obj = dict[str, Any]
STATUS_KEYS = (
    "observedGeneration", "phase", "conditions", "startTime", "completionTime", "trials",
    "trialsRunning", "trialsSucceeded", "trialsFailed", "bestTrial", "pareto",
)


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def _trial_phase(trial: Obj) -> str:
    return str(_dict(trial.get("status")).get("phase") or "Pending")


def _metric(trial: Obj, key: str | None) -> float | None:
    if not key:
        return None
    raw = _dict(_dict(trial.get("status")).get("metrics")).get(key)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def plan_sweep(sweep: Obj, model: SAESweep, policy: ClusterPolicy | None = None) -> list[Obj]:
    """The first trials a fresh sweep creates, then its groups' children (for `saeops render`)."""
    trials = plan_new_trials(sweep, model, range(planned_trials(model)), model.spec.parallel_trials)
    return trials + render_sweep_groups(sweep, trials, policy or ClusterPolicy())


def _summary(trial: Obj, keys: tuple[str | None, ...]) -> Obj:
    meta = _dict(trial.get("metadata"))
    try:
        params = json.loads(_dict(meta.get("annotations")).get(names.ANNOTATION_PARAMETERS) or "{}")
    except ValueError:
        params = {}
    metrics = _dict(_dict(trial.get("status")).get("metrics"))
    return {
        "name": meta.get("name", ""),
        "parameters": {str(k): str(v) for k, v in _dict(params).items()},
        "metrics": {k: str(metrics[k]) for k in keys if k and k in metrics},
    }


def reconcile_sweep(observed: ObservedSweep, now: datetime, policy: ClusterPolicy | None = None) -> Desired:
    """Reconcile a sweep: create trials, count them, pick the best, update the Pareto front.

    Trials are the runs carrying the sweep's label *and* owned by it; a same-named run the
    sweep does not own (reported in `observed.foreign` after a create answered 409) fails the
    sweep with NameConflict, and a trial the API server refused fails it with the server's word.
    """
    policy = policy or ClusterPolicy()
    res = observed.resource
    meta = _dict(res.get("metadata"))
    gen = meta.get("generation") if isinstance(meta.get("generation"), int) else None
    prev_all = _dict(res.get("status"))
    prev = {k: prev_all[k] for k in STATUS_KEYS if k in prev_all}
    st: Obj = copy.deepcopy(prev)
    if gen is not None:
        st["observedGeneration"] = gen
    conds = Conditions(st.get("conditions"), SWEEP_CONDITIONS, now, gen)
    d = Desired()

    def finish() -> Desired:
        st["conditions"] = conds.as_list()
        new = {k: v for k, v in st.items() if v is not None}
        if new != prev:
            d.status = new
        return d

    def set_terminal(kind: str, reason: str, message: str) -> None:
        other = "Failed" if kind == "Succeeded" else "Succeeded"
        if conds.set(kind, "True", reason, message):
            d.events.append(Event("Normal" if kind == "Succeeded" else "Warning", reason, message))
        conds.set(other, "False", reason, message)
        conds.set("Running", "False", reason, message)
        st["phase"] = kind
        st.setdefault("completionTime", rfc3339(now))

    if meta.get("deletionTimestamp"):
        return Desired()
    failed = conds.get("Failed") or {}
    if failed.get("status") == "True" and failed.get("reason") in SPEC_FAILURES:
        if failed.get("observedGeneration") == gen:
            return finish()  # as written it cannot run; a new generation tries again
        conds.set("Failed", "False", "SpecChanged", f"spec changed (generation {gen}); trying again")
        st.pop("completionTime", None)
    foreign = [o for o in observed.foreign if not names.owned_by(o, meta.get("uid"))]
    foreign += [o for o in foreign_children(observed, meta.get("uid")) if o not in foreign]
    if foreign:
        listed = ", ".join(f"{o.get('kind') or 'SAETrainingRun'} {_dict(o.get('metadata')).get('name')}" for o in foreign)
        verb = "exists and is" if len(foreign) == 1 else "exist and are"
        set_terminal("Failed", "NameConflict", f"{listed} {verb} not owned by SAESweep {meta.get('name')}; "
                                               "the operator leaves it alone: rename this sweep or delete that object")
        return finish()
    if observed.rejection is not None:
        rej = observed.rejection
        reason = "InvalidSpec" if rej.code in (400, 422) else "Rejected"
        set_terminal("Failed", reason, f"the API server refused {rej.kind} {rej.name} (HTTP {rej.code}): "
                                       + " ".join(rej.message.split()))
        return finish()
    try:
        model = SAESweep.model_validate(
            {**{k: res.get(k) for k in ("apiVersion", "kind", "spec")},
             "metadata": {k: meta[k] for k in ("name", "namespace") if k in meta}}
        )
        missing = search.grid_missing_steps(model.spec)
        if missing:
            raise SpecError(f"spec.parameters: {', '.join(missing)}: uniform/logUniform ranges need steps in grid search")
        problem = policy.check(model, meta.get("namespace") or "default")
        if problem is not None:
            set_terminal("Failed", problem.reason, problem.message)
            return finish()
    except ValidationError as e:
        set_terminal("Failed", "InvalidSpec", format_validation_error(e, SAESweep))
        st["phase"] = "Failed"
        return finish()
    except (SpecError, TypeError, ValueError) as e:
        set_terminal("Failed", "InvalidSpec", str(e))
        return finish()

    spec = model.spec
    sweep_name = meta["name"]
    mine = [t for t in observed.trials
            if _dict(_dict(t.get("metadata")).get("labels")).get(names.LABEL_SWEEP) == sweep_name
            and names.owned_by(t, meta.get("uid"))]
    by_name = {_dict(t.get("metadata")).get("name"): t for t in mine}
    phases = [_trial_phase(t) for t in mine]
    succeeded = [t for t, p in zip(mine, phases, strict=True) if p == "Succeeded"]
    n_failed = sum(p == "Failed" for p in phases)
    n_running = len(mine) - len(succeeded) - n_failed
    st.update(trials=len(mine), trialsRunning=n_running, trialsSucceeded=len(succeeded), trialsFailed=n_failed)

    obj = spec.objective
    keys = (obj.metric, obj.pareto_metric)
    scored = [
        pareto.Scored(str(_dict(t.get("metadata")).get("name", "")), v, _metric(t, obj.pareto_metric), t)
        for t in succeeded if (v := _metric(t, obj.metric)) is not None
    ]
    best, front = pareto.best_and_front(scored, obj.goal)
    st["bestTrial"] = _summary(best.item, keys) if best else None
    if obj.pareto_metric:
        st["pareto"] = [_summary(s.item, keys) for s in pareto.bounded(front)]

    GroupPass(observed, mine, d, policy).run()
    planned = planned_trials(model)
    goal = obj.target is not None and best is not None and pareto.reached(best.value, obj.target, obj.goal)
    fail_limit = max(1, spec.max_failed_trials)
    if goal:
        set_terminal("Succeeded", "GoalReached", f"trial {st['bestTrial']['name']} reached {obj.metric} {obj.target}")
        return finish()
    if n_failed >= fail_limit:
        set_terminal("Failed", "MaxFailedTrialsReached", f"{n_failed} trials failed; maxFailedTrials={spec.max_failed_trials}")
        return finish()
    missing = [i for i in range(planned) if names.trial_name(sweep_name, i) not in by_name]
    if not missing and n_running == 0:
        set_terminal("Succeeded", "MaxTrialsReached", f"{len(mine)} trials finished (planned {planned})")
        return finish()

    # Running (again, if maxTrials was raised on a finished sweep).
    was_done = st.get("phase") in ("Succeeded", "Failed")
    st.pop("completionTime", None)
    st.setdefault("startTime", rfc3339(now))
    conds.set("Succeeded", "False", "TrialsRunning", "")
    conds.set("Failed", "False", "TrialsRunning", "")
    if spec.suspend:
        if conds.set("Suspended", "True", "Suspended", "no new trials while suspended"):
            d.events.append(Event("Normal", "Suspended", "no new trials while suspended"))
        conds.set("Running", "False" if n_running == 0 else "True", "Suspended", f"{n_running} trials running")
        st["phase"] = "Suspended"
        return finish()
    if conds.is_true("Suspended"):
        conds.set("Suspended", "False", "Resumed", "")
        d.events.append(Event("Normal", "Resumed", "sweep resumed"))
    elif (conds.get("Suspended") or {}).get("status") == "Unknown":
        conds.set("Suspended", "False", "NotSuspended", "")
    free = max(0, spec.parallel_trials - n_running)
    new = plan_new_trials(res, model, missing, free)
    d.create.extend(new)
    st["trials"] = len(mine) + len(new)
    st["trialsRunning"] = n_running + len(new)
    reason = "Resumed" if was_done else "TrialsRunning"
    if conds.set("Running", "True", reason, f"{st['trialsRunning']} running, {len(mine) + len(new)}/{planned} created") and was_done:
        d.events.append(Event("Normal", "Resumed", f"resumed: planning {planned} trials"))
    st["phase"] = "Running"
    return finish()
