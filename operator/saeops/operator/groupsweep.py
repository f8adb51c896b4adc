"""The sweep's side of groups: which new trials train together, and one Job per group.

A group is the trials created together that share one activation stream (`plan_groups`); they
carry the label `saeops.io/group` and get no Job of their own. The sweep owns each group's Job,
ConfigMap, Service and NetworkPolicy, and keeps the Job's members equal to the group's trials
still running:

- a member suspended, deleted, failed on its own (or edited into an invalid spec) leaves: the Job
  is deleted and recreated with the others, which resume from their checkpoints;
- nobody joins a running Job (a joiner's checkpoint would be at another point of the stream): a
  suspended trial leaves its group for good (its `Grouped` condition says so) and, resumed, runs
  as a run of its own;
- a finished Job stays (its pods hold the members' outcomes and logs) until its members have
  read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from saeops.api import SAESweep, SAETrainingRun, names
from saeops.api.groups import plan_groups
from saeops.api.trials import render_trial
from saeops.operator import jobs
from saeops.operator.grouprender import (
    cache_for,
    group_of,
    members_of,
    render_group_configmap,
    render_group_job,
    render_group_network_policy,
    render_group_service,
)
from saeops.operator.policy import ClusterPolicy
from saeops.operator.state import ChildRef, Desired, Event, ObservedSweep

Obj = dict[str, Any]
TERMINAL = ("Succeeded", "Failed")
CANDIDATES = 256
"""Missing trials considered when packing groups (enough to find the ones sharing a stream)."""
CACHE_POLL_SECONDS = 15.0
KINDS = {"ConfigMap": "v1", "Service": "v1", "NetworkPolicy": "networking.k8s.io/v1", "Job": "batch/v1"}


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def _meta(obj: Obj) -> Obj:
    return _dict(obj.get("metadata"))


def trial_index(trial: Obj) -> int:
    try:
        return int(_dict(_meta(trial).get("labels")).get(names.LABEL_TRIAL_INDEX, ""))
    except ValueError:
        return 1 << 30


def child_names(group: str) -> dict[str, str]:
    """Kind -> name of a group's children."""
    return {"ConfigMap": names.group_configmap_name(group), "Service": names.group_service_name(group),
            "NetworkPolicy": names.group_job_name(group), "Job": names.group_job_name(group)}


def _trial_model(trial: Obj) -> SAETrainingRun | None:
    doc = {k: trial.get(k) for k in ("apiVersion", "kind", "spec")}
    doc["metadata"] = {k: _meta(trial)[k] for k in ("name", "namespace") if k in _meta(trial)}
    try:
        return SAETrainingRun.model_validate(doc)
    except (ValidationError, TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------- planning
def plan_new_trials(sweep: Obj, model: SAESweep, missing: Sequence[int], free: int) -> list[Obj]:
    """The trials to create now (at most `free`), those packed into a group of two or more
    labelled with it. A group of one is an ordinary trial with its own Job."""
    if free <= 0 or not missing:
        return []
    packs = model.spec.grouping.enabled and model.spec.grouping.max_trials > 1
    rendered = {i: render_trial(sweep, model, i) for i in missing[:max(free, CANDIDATES) if packs else free]}
    models = {i: _trial_model(trial) for i, trial in rendered.items()}
    valid = [(i, run.spec) for i, run in models.items() if run is not None]
    groups = plan_groups(valid, model.spec.grouping, free) if valid else []
    groups += [[i] for i, run in models.items() if run is None]  # its own reconcile says what is wrong
    out: list[Obj] = []
    for members in sorted(groups, key=min):
        members = sorted(members)[: free - len(out)]
        if not members:
            break
        if len(members) > 1:
            group = names.group_name(sweep["metadata"]["name"], members)
            for i in members:
                rendered[i]["metadata"]["labels"][names.LABEL_GROUP] = group
        out.extend(rendered[i] for i in members)
    return out


def render_sweep_groups(sweep: Obj, trials: Sequence[Obj], policy: ClusterPolicy) -> list[Obj]:
    """The children of every group among freshly rendered trials (for `saeops render`)."""
    by_group: dict[str, list[Obj]] = {}
    for trial in trials:  # fresh trials: no status, and in `saeops render` no uid
        group = trial["metadata"]["labels"].get(names.LABEL_GROUP)
        if group:
            by_group.setdefault(group, []).append(trial)
    out: list[Obj] = []
    for group, members in by_group.items():
        models = [m for t in members if (m := _trial_model(t)) is not None]
        if len(models) == len(members):
            out.extend(_render(sweep, group, members, models, (), policy, {}))
    return out


def _render(sweep: Obj, group: str, trials: list[Obj], models: list[SAETrainingRun], caches: Sequence[Obj],
            policy: ClusterPolicy, have: dict[str, Obj | None]) -> list[Obj]:
    out = []
    if have.get("ConfigMap") is None:
        out.append(render_group_configmap(sweep, group, trials, caches))
    if have.get("Service") is None:
        out.append(render_group_service(sweep, group, models[0]))
    if policy.network_policy and have.get("NetworkPolicy") is None:
        out.append(render_group_network_policy(sweep, group, models[0], policy))
    out.append(render_group_job(sweep, group, trials, models))
    return out


# ---------------------------------------------------------------------------------- children
def foreign_children(obs: ObservedSweep, uid: str | None) -> list[Obj]:
    """Objects holding a group child's name that the sweep does not own."""
    return [o for o in (*obs.children, *obs.foreign)
            if not names.owned_by(o, uid) and o.get("kind") != "SAETrainingRun"]


def _active(trial: Obj) -> bool:
    """Still to be trained by its group: not finished, suspended or being deleted."""
    if _meta(trial).get("deletionTimestamp") or _dict(trial.get("spec")).get("suspend") is True:
        return False
    return _dict(trial.get("status")).get("phase") not in TERMINAL


def _cache_ready(trial: Obj, caches: Sequence[Obj]) -> bool:
    ref = _dict(_dict(trial.get("spec")).get("activations")).get("cacheRef")
    if not ref:
        return True
    return _dict(_dict(cache_for(trial, caches)).get("status")).get("phase") == "Succeeded"


class GroupPass:
    """Keep each group's Job equal to its running members (see the module's docstring)."""

    def __init__(self, obs: ObservedSweep, trials: Sequence[Obj], d: Desired, policy: ClusterPolicy) -> None:
        self.obs, self.d, self.policy = obs, d, policy
        self.sweep = obs.resource
        uid = _meta(self.sweep).get("uid")
        self.children = {(o.get("kind"), _meta(o).get("name")): o for o in obs.children if names.owned_by(o, uid)}
        self.groups: dict[str, list[Obj]] = {}
        for trial in trials:
            group = group_of(trial)
            if group:
                self.groups.setdefault(group, []).append(trial)
        for obj in self.children.values():  # a group whose trials are all gone still has a Job to stop
            group = _dict(_meta(obj).get("labels")).get(names.LABEL_GROUP)
            if isinstance(group, str) and group:
                self.groups.setdefault(group, [])

    def run(self) -> None:
        for group in sorted(self.groups):
            self.group(group, sorted(self.groups[group], key=trial_index))

    def _child(self, group: str, kind: str) -> Obj | None:
        return self.children.get((kind, child_names(group)[kind]))

    def _delete(self, obj: Obj | None) -> None:
        if obj is None or jobs.deleting(obj):
            return
        meta = _meta(obj)
        kind = str(obj.get("kind") or "")
        self.d.delete.append(ChildRef(KINDS.get(kind, "v1"), kind, meta.get("name", ""), meta.get("uid")))

    def _requeue(self, seconds: float) -> None:
        self.d.requeue_after = seconds if self.d.requeue_after is None else min(self.d.requeue_after, seconds)

    def _restart(self, group: str, job: Obj, cm: Obj | None, why: str) -> None:
        """Delete the Job and its ConfigMap; the next pass creates them with the members left."""
        self._delete(job)
        self._delete(cm)
        self.d.events.append(Event("Normal", "GroupChanged", f"group {group}: {why}"))
        self._requeue(1)

    def group(self, group: str, trials: list[Obj]) -> None:
        active = [t for t in trials if _active(t)]
        job, cm = self._child(group, "Job"), self._child(group, "ConfigMap")
        if job is not None:
            if jobs.deleting(job):
                self._requeue(2)
                return
            members = members_of(job) or {}
            staying = [t for t in active if members.get(_meta(t).get("name")) == (_meta(t).get("uid") or "")]
            if jobs.job_succeeded(job) or jobs.job_failed(job) is not None:
                # Its members end with what the pods reported; the name is needed again only
                # for trials that were not in it (a member fixed after an invalid edit).
                if active and not staying:
                    self._restart(group, job, cm, f"Job finished; recreating it for {_names(active)}")
                return
            if len(staying) == len(members) and staying:
                return
            gone = sorted(set(members) - {_meta(t).get("name") for t in staying})
            if staying:
                self._restart(group, job, cm, f"{', '.join(gone)} left; recreating the Job for {_names(staying)}")
            else:
                self._restart(group, job, cm, f"{', '.join(gone)} left; no member is left to train")
            return
        if not active:
            self._delete(cm)  # what a group that ended left behind
            return
        if cm is not None and (jobs.deleting(cm) or members_of(cm) != _membership(active)):
            self._delete(cm)
            self._requeue(1)
            return
        if not all(_cache_ready(t, self.obs.caches) for t in active):
            self._requeue(CACHE_POLL_SECONDS)  # the trials say which cache they wait for
            return
        models = [_trial_model(t) for t in active]
        valid = [m for m in models if m is not None]
        if len(valid) != len(models):
            return  # an invalid trial fails in its own reconcile and so leaves the group
        have = {kind: self._child(group, kind) for kind in ("ConfigMap", "Service", "NetworkPolicy")}
        self.d.create.extend(_render(self.sweep, group, active, valid, self.obs.caches, self.policy, have))
        self.d.events.append(Event("Normal", "GroupStarted",
                                   f"group {group}: Job {names.group_job_name(group)} trains {_names(active)}"))


def _names(trials: Sequence[Obj]) -> str:
    return ", ".join(str(_meta(t).get("name")) for t in trials)


def _membership(trials: Sequence[Obj]) -> dict[str, str]:
    return {str(_meta(t).get("name")): _meta(t).get("uid") or "" for t in trials}
