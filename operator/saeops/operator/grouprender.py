"""A sweep group's children: the trials of one activation stream trained by one Indexed Job.

The sweep owns them (one ConfigMap with `member-NNN.json` per trial, a headless Service, a
NetworkPolicy and the Job); the trials stay SAETrainingRuns with their own status. The pods are
those of a single run, built from the first member's spec (members share everything that decides
the stream; a sweep's trials share the pod template), running `entrypoint --group SPEC_DIR`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from saeops.api import SAETrainingRun, names
from saeops.operator import podspec
from saeops.operator.conditions import GROUPED
from saeops.operator.podspec import SPEC_DIR, child_labels, metrics_port_of, runtime_document
from saeops.operator.policy import ClusterPolicy

Obj = dict[str, Any]
SWEEP = "SAESweep"


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def group_labels(sweep: Obj, group: str) -> dict[str, str]:
    """Labels of a group's children and pods: the sweep's (so their events reach it) plus the group."""
    labels = child_labels(SWEEP, sweep["metadata"]["name"])
    labels["app.kubernetes.io/instance"] = group
    labels[names.LABEL_GROUP] = group
    return labels


def sweep_uid_of(trial: Obj) -> str | None:
    """The uid of the SAESweep that controls a trial (None for a run no sweep made)."""
    for ref in _dict(trial.get("metadata")).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("kind") == SWEEP and ref.get("controller") and ref.get("uid"):
            return str(ref["uid"])
    return None


def group_of(trial: Obj) -> str | None:
    """The group a sweep's trial trains with (its `saeops.io/group` label), or None: a run of its
    own (no label, no controlling sweep, or it left its group: `Grouped` is False)."""
    group = _dict(_dict(trial.get("metadata")).get("labels")).get(names.LABEL_GROUP)
    if not isinstance(group, str) or not group or sweep_uid_of(trial) is None:
        return None
    conds = _dict(trial.get("status")).get("conditions") or []
    left = any(_dict(c).get("type") == GROUPED and _dict(c).get("status") == "False" for c in conds)
    return None if left else group


def group_selector(sweep: Obj, group: str) -> dict[str, str]:
    """The labels that pick one group's pods."""
    return {names.LABEL_RUN: sweep["metadata"]["name"], names.LABEL_KIND: names.kind_label(SWEEP),
            names.LABEL_GROUP: group}


def members_annotation(trials: Sequence[Obj]) -> str:
    """`{"<trial>": "<uid>", ...}` in member order: which trials (these very objects) a Job trains."""
    return json.dumps({t["metadata"]["name"]: t["metadata"].get("uid") or "" for t in trials}, separators=(",", ":"))


def members_of(obj: Obj | None) -> dict[str, str] | None:
    """The members a group's Job or ConfigMap was made for (None when it carries no readable list)."""
    raw = _dict(_dict(_dict(obj).get("metadata")).get("annotations")).get(names.ANNOTATION_MEMBERS)
    try:
        doc = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
        return None
    return doc


def is_member(job: Obj | None, trial: Obj) -> bool:
    """Whether `job` trains this trial (same name and uid: a recreated namesake is not a member)."""
    meta = _dict(trial.get("metadata"))
    members = members_of(job) or {}
    return meta.get("name") in members and members[meta["name"]] == (meta.get("uid") or "")


def _meta(sweep: Obj, name: str, group: str, members: str) -> Obj:
    meta = podspec.meta(sweep, name, group_labels(sweep, group))
    meta["annotations"] = {names.ANNOTATION_MEMBERS: members}
    return meta


def cache_for(trial: Obj, caches: Sequence[Obj]) -> Obj | None:
    """The ActivationCache a trial's `activations.cacheRef` names, among those observed."""
    ref = _dict(_dict(trial.get("spec")).get("activations")).get("cacheRef")
    return next((c for c in caches if _dict(c.get("metadata")).get("name") == ref), None) if ref else None


def render_group_configmap(sweep: Obj, group: str, trials: Sequence[Obj], caches: Sequence[Obj] = ()) -> Obj:
    """`member-000.json`, `member-001.json`, ...: each trial's spec.json as a single run's."""
    data = {names.member_file(i): json.dumps(runtime_document(t, cache_for(t, caches)), indent=2, sort_keys=True)
            for i, t in enumerate(trials)}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(sweep, names.group_configmap_name(group), group, members_annotation(trials)),
            "data": data}


def render_group_service(sweep: Obj, group: str, model: SAETrainingRun) -> Obj:
    meta = podspec.meta(sweep, names.group_service_name(group), group_labels(sweep, group))
    return podspec.service(meta, group_selector(sweep, group), metrics_port_of(model))


def render_group_network_policy(sweep: Obj, group: str, model: SAETrainingRun, policy: ClusterPolicy) -> Obj:
    meta = podspec.meta(sweep, names.group_job_name(group), group_labels(sweep, group))
    return podspec.network_policy(meta, group_selector(sweep, group), metrics_port_of(model), policy)


def render_group_job(sweep: Obj, group: str, trials: Sequence[Obj], models: Sequence[SAETrainingRun]) -> Obj:
    """The group's Indexed Job. Unlike a single run's (backoffLimit 0, restarts counted by the
    operator across recreated Jobs), the Job controller retries the group's pods itself, up to the
    first member's failurePolicy.maxRestarts per node: every member resumes from its checkpoint, and
    only a Job failed past that limit fails its unfinished members."""
    first = models[0]
    members = members_annotation(trials)
    identity = {"SAEOPS_RUN_NAME": group, "SAEOPS_KIND": SAETrainingRun.KIND}
    restarts = first.spec.failure_policy.max_restarts * first.spec.resources.num_nodes
    return podspec.indexed_job(
        sweep, first, job=names.group_job_name(group), svc=names.group_service_name(group),
        configmap=names.group_configmap_name(group), labels=group_labels(sweep, group), identity=identity,
        args=["--group", SPEC_DIR], annotations={names.ANNOTATION_MEMBERS: members}, backoff_limit=restarts,
    )


def render_group(sweep: Obj, group: str, trials: Sequence[Obj], models: Sequence[SAETrainingRun],
                 caches: Sequence[Obj] = (), policy: ClusterPolicy | None = None) -> list[Obj]:
    """ConfigMap, Service, NetworkPolicy (when the policy asks for one) and Job, in creation order."""
    policy = policy or ClusterPolicy()
    out = [render_group_configmap(sweep, group, trials, caches), render_group_service(sweep, group, models[0])]
    if policy.network_policy:
        out.append(render_group_network_policy(sweep, group, models[0], policy))
    out.append(render_group_job(sweep, group, trials, models))
    return out
