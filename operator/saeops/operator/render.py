"""Pure renderers: a run or cache -> its ConfigMap, headless Service, NetworkPolicy and Indexed Job.

Everything here is a function of the resource, the cluster policy (and, for a run with
`cacheRef`, the cache it reads), so `saeops render FILE` shows what the operator will create.
The pod-level pieces every Job shares (a sweep group's too) live in `podspec.py`.
"""

from __future__ import annotations

import json
from typing import Any

from saeops.api import (
    ActivationCache,
    AnyResource,
    SAESweep,
    SAETrainingRun,
    SpecError,
    names,
    parse_resource,
)
from saeops.operator import podspec
from saeops.operator.podspec import (
    CONTAINER,
    RENDEZVOUS_PORT,
    RUN_AS,
    SCRATCH,
    SCRATCH_ENV,
    SPEC_DIR,
    SPEC_FILE,
    cache_uri,
    child_labels,
    metrics_port_of,
    runtime_document,
    selector_labels,
    torchrun_command,
)
from saeops.operator.policy import ClusterPolicy
from saeops.operator.sweep import plan_sweep

__all__ = [
    "CONTAINER", "RENDEZVOUS_PORT", "RUN_AS", "SCRATCH", "SCRATCH_ENV", "SPEC_DIR", "SPEC_FILE", "cache_uri",
    "child_labels", "metrics_port_of", "render_children", "render_configmap", "render_job", "render_manifest",
    "render_network_policy", "render_service", "runtime_document", "selector_labels", "torchrun_command",
]

Obj = dict[str, Any]


def _meta(resource: Obj, name: str) -> Obj:
    return podspec.meta(resource, name, child_labels(resource["kind"], resource["metadata"]["name"]))


def render_configmap(resource: Obj, cache: Obj | None = None) -> Obj:
    """ConfigMap with spec.json."""
    doc = runtime_document(resource, cache)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(resource, names.configmap_name(resource["kind"], resource["metadata"]["name"])),
        "data": {SPEC_FILE: json.dumps(doc, indent=2, sort_keys=True)},
    }


def render_service(resource: Obj, metrics_port: int | None) -> Obj:
    """Headless Service: stable DNS `<job>-<index>.<service>` for the rendezvous."""
    kind, name = resource["kind"], resource["metadata"]["name"]
    return podspec.service(_meta(resource, names.service_name(kind, name)), selector_labels(kind, name), metrics_port)


def render_network_policy(resource: Obj, metrics_port: int, policy: ClusterPolicy) -> Obj:
    """Ingress to the run's pods from pods of the same run, and to /metrics from the policy's peers."""
    kind, name = resource["kind"], resource["metadata"]["name"]
    return podspec.network_policy(_meta(resource, names.network_policy_name(kind, name)),
                                  selector_labels(kind, name), metrics_port, policy)


def render_job(resource: Obj, model: SAETrainingRun | ActivationCache) -> Obj:
    """The Indexed Job: one pod per node, torchrun inside, Pod Security "restricted"."""
    kind, name = resource["kind"], resource["metadata"]["name"]
    return podspec.indexed_job(
        resource, model, job=names.job_name(kind, name), svc=names.service_name(kind, name),
        configmap=names.configmap_name(kind, name), labels=child_labels(kind, name),
        identity={"SAEOPS_RUN_NAME": name, "SAEOPS_KIND": kind}, spec_path=f"{SPEC_DIR}/{SPEC_FILE}",
    )


def render_children(resource: Obj, model: SAETrainingRun | ActivationCache, cache: Obj | None = None,
                    policy: ClusterPolicy | None = None) -> list[Obj]:
    """ConfigMap, Service, NetworkPolicy (when the policy asks for one) and Job, in creation
    order: the pods never exist without their fence."""
    policy = policy or ClusterPolicy()
    port = metrics_port_of(model)
    out = [render_configmap(resource, cache), render_service(resource, port)]
    if policy.network_policy:
        out.append(render_network_policy(resource, port, policy))
    out.append(render_job(resource, model))
    return out


def _as_dict(resource: AnyResource | Obj) -> Obj:
    if isinstance(resource, dict):
        return resource
    doc = resource.to_manifest()
    doc.pop("status", None)
    return doc


def render_manifest(resource: AnyResource | Obj, policy: ClusterPolicy | None = None) -> list[Obj]:
    """What the operator would create for a manifest (`saeops render FILE`).

    Runs and caches give ConfigMap, Service, NetworkPolicy and Job; a sweep gives its first
    trials (as many as parallelTrials allows) as SAETrainingRuns, followed by the children of each
    group of them that shares one activation stream. A manifest the operator would fail (a
    relative storageUri, storage or an image the policy forbids) raises SpecError.
    """
    policy = policy or ClusterPolicy()
    doc = _as_dict(resource)
    model = resource if not isinstance(resource, dict) else parse_resource(doc)
    doc.setdefault("metadata", {}).setdefault("namespace", "default")
    doc["metadata"].setdefault("uid", "")
    problem = policy.check(model, doc["metadata"]["namespace"])
    if problem is not None:
        raise SpecError(problem.message)
    if isinstance(model, SAESweep):
        return plan_sweep(doc, model, policy)
    return render_children(doc, model, policy=policy)
