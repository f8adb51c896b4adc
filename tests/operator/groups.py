"""Builders for the group tests: a grouped sweep's cluster state, stepped through the pure sweep
reconcile the way the handler applies it (the API server gives created objects a uid)."""

from __future__ import annotations

import copy
import json
from typing import Any

from saeops.api import names
from saeops.operator.state import Desired, Observed, ObservedSweep
from saeops.operator.sweep import reconcile_sweep

from .helpers import T0, sweep_doc

Obj = dict[str, Any]
TRIAL = "SAETrainingRun"


def with_uid(obj: Obj) -> Obj:
    obj = copy.deepcopy(obj)
    obj["metadata"]["uid"] = f"uid-{obj['kind'].lower()}-{obj['metadata']['name']}"
    return obj


def apply_sweep(obs: ObservedSweep, d: Desired) -> ObservedSweep:
    """The cluster after the handler applied `d` (no controllers ran)."""
    res = copy.deepcopy(obs.resource)
    if d.status is not None:
        res["status"] = copy.deepcopy(d.status)
    deleted = {(ref.kind, ref.name) for ref in d.delete}
    trials = [t for t in obs.trials if (TRIAL, t["metadata"]["name"]) not in deleted]
    children = [c for c in obs.children if (c["kind"], c["metadata"]["name"]) not in deleted]
    for obj in d.create:
        (trials if obj["kind"] == TRIAL else children).append(with_uid(obj))
    return ObservedSweep(resource=res, trials=tuple(trials), children=tuple(children), caches=obs.caches)


def step_sweep(obs: ObservedSweep) -> tuple[Desired, ObservedSweep]:
    d = reconcile_sweep(obs, T0)
    return d, apply_sweep(obs, d)


def grouped_sweep(max_trials: int = 4, parallel: int = 4, max_group: int = 8) -> ObservedSweep:
    """A grouped sweep after two passes: trials created, then their group's children."""
    obs = ObservedSweep(resource=sweep_doc(max_trials=max_trials, parallel=parallel, grouped=True, max_group=max_group))
    _, obs = step_sweep(obs)
    _, obs = step_sweep(obs)
    return obs


def child(obs: ObservedSweep, kind: str) -> Obj:
    (found,) = [c for c in obs.children if c["kind"] == kind]
    return found


def members(obj: Obj) -> dict[str, str]:
    return json.loads(obj["metadata"]["annotations"][names.ANNOTATION_MEMBERS])


def replace_trial(obs: ObservedSweep, trial: Obj) -> ObservedSweep:
    name = trial["metadata"]["name"]
    return ObservedSweep(resource=obs.resource, trials=tuple(trial if t["metadata"]["name"] == name else t
                                                             for t in obs.trials),
                         children=obs.children, caches=obs.caches)


def set_job_status(obs: ObservedSweep, **status: Any) -> ObservedSweep:
    children = []
    for c in obs.children:
        if c["kind"] == "Job":
            c = copy.deepcopy(c)
            c["status"] = status
        children.append(c)
    return ObservedSweep(resource=obs.resource, trials=obs.trials, children=tuple(children), caches=obs.caches)


def group_pod(job: Obj, name: str = "p", phase: str = "Running", message: str | None = None, index: int = 0,
              created: str = "2025-01-01T00:00:00Z") -> Obj:
    """A pod of a group's Job, as the Job controller makes it (template labels, owned by the Job)."""
    status: Obj = {"phase": phase, "podIP": "10.0.0.9", "conditions": []}
    if message is not None:
        status["containerStatuses"] = [{"name": "runtime", "state": {"terminated": {
            "exitCode": 0 if phase == "Succeeded" else 1, "message": message}}}]
    return {"apiVersion": "v1", "kind": "Pod", "status": status, "metadata": {
        "name": f"{job['metadata']['name']}-{index}-{name}", "creationTimestamp": created,
        "labels": dict(job["spec"]["template"]["metadata"]["labels"]),
        "annotations": {**job["spec"]["template"]["metadata"]["annotations"],
                        "batch.kubernetes.io/job-completion-index": str(index)},
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                             "uid": job["metadata"]["uid"], "controller": True}]}}


def trial_view(obs: ObservedSweep, name: str, job: Obj | None = None, pods: tuple[Obj, ...] = (),
               metrics: dict[str, float] | None = None) -> Observed:
    """What a grouped trial's reconcile observes: itself, its group's Job and that Job's pods."""
    trial = next(t for t in obs.trials if t["metadata"]["name"] == name)
    return Observed(resource=copy.deepcopy(trial), group_job=job, pods=pods, metrics=metrics)


def report(**entries: Obj) -> str:
    """A group's termination message (compact JSON, as rank 0 writes it)."""
    return json.dumps({"members": entries}, separators=(",", ":"))
