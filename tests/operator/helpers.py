"""Shared builders for the operator tests (plain functions: no fixtures needed)."""

from __future__ import annotations

import copy
import glob
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from saeops.operator.reconcile import reconcile
from saeops.operator.state import Desired, Observed

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 1, 1, tzinfo=UTC)
Obj = dict[str, Any]


def examples() -> list[Path]:
    """Every example manifest."""
    return sorted(Path(p) for p in glob.glob(str(ROOT / "examples" / "*.yaml")))


def example_docs() -> list[Obj]:
    """Every document of every example manifest, as a cluster would get it: the examples written
    for `saeops run` write to a relative path, which a pod cannot use, so those write to S3 here."""
    docs = []
    for path in examples():
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))
    for doc in docs:
        spec = doc["spec"].get("trialTemplate", doc["spec"])
        output = spec.get("output") or {}
        if "://" not in output.get("storageUri", "://") and not output["storageUri"].startswith("/"):
            output["storageUri"] = f"s3://bucket/{output['storageUri']}"
    return docs


def quickstart() -> Obj:
    """The quickstart run, as the API server would return it (namespace, uid, generation), writing
    to S3: the example's relative output is for `saeops run`, and a cluster refuses it."""
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["spec"]["output"] = {"storageUri": "s3://bucket/runs/quickstart"}
    return with_server_fields(doc)


def with_server_fields(doc: Obj, generation: int = 1) -> Obj:
    doc = copy.deepcopy(doc)
    doc["metadata"].update(namespace="default", uid=f"uid-{doc['metadata']['name']}", generation=generation)
    return doc


def cache_doc(name: str = "acts") -> Obj:
    return with_server_fields({
        "apiVersion": "saeops.io/v1alpha1",
        "kind": "ActivationCache",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "tiny", "native": {}},
            "dataset": {"path": "builtin:python-docs"},
            "hookPoints": ["blocks.1.hook_resid_post"],
            "totalTokens": 100000,
            "output": {"storageUri": "s3://bucket/caches/acts", "secretRef": {"name": "s3-creds"}},
        },
    })


def run_on_cache(cache: str = "acts") -> Obj:
    run = quickstart()
    run["metadata"]["name"] = "from-cache"
    run["metadata"]["uid"] = "uid-from-cache"
    del run["spec"]["dataset"]
    run["spec"]["activations"] = {"cacheRef": cache}
    return run


def sweep_doc(max_trials: int = 4, parallel: int = 2, max_failed: int = 2, target: float | None = None,
              algorithm: Obj | None = None, grouped: bool = False, max_group: int = 8) -> Obj:
    """A 2x2 grid sweep over the quickstart. Its trials share one activation stream, so with
    `grouped` they train in groups (of at most `max_group`); without, each has its own Job."""
    template = copy.deepcopy(quickstart()["spec"])
    objective: Obj = {"metric": "explained_variance", "goal": "maximize", "paretoMetric": "l0"}
    if target is not None:
        objective["target"] = target
    return with_server_fields({
        "apiVersion": "saeops.io/v1alpha1",
        "kind": "SAESweep",
        "metadata": {"name": "sw"},
        "spec": {
            "trialTemplate": template,
            "parameters": [
                {"name": "sae.topK", "categorical": [16, 32]},
                {"name": "trainer.lr", "logUniform": {"min": 1e-4, "max": 1e-3, "steps": 2}},
            ],
            "searchAlgorithm": algorithm or {"type": "grid"},
            "objective": objective,
            "maxTrials": max_trials,
            "parallelTrials": parallel,
            "maxFailedTrials": max_failed,
            "grouping": {"enabled": grouped, "maxTrials": max_group},
        },
    })


def apply(obs: Observed, desired: Desired) -> Observed:
    """What the cluster looks like after the handler applied `desired` (no controllers ran): the
    API server gives each created child a uid."""
    res = copy.deepcopy(obs.resource)
    if desired.status is not None:
        res["status"] = copy.deepcopy(desired.status)
    kw: Obj = {"resource": res, "job": obs.job, "configmap": obs.configmap, "service": obs.service,
               "networkpolicy": obs.networkpolicy, "pods": obs.pods, "cache": obs.cache, "metrics": obs.metrics}
    for ref in desired.delete:
        kw[ref.kind.lower()] = None
        if ref.kind == "Job":
            kw["pods"] = ()
    for child in desired.create:
        created = copy.deepcopy(child)
        created["metadata"]["uid"] = f"uid-{child['kind'].lower()}-{child['metadata']['name']}"
        kw[child["kind"].lower()] = created
    return Observed(**kw)


def step(obs: Observed, now: datetime = T0) -> tuple[Desired, Observed]:
    """Reconcile and apply once."""
    d = reconcile(obs, now)
    return d, apply(obs, d)


def assert_idempotent(obs: Observed, now: datetime = T0) -> Observed:
    """Reconcile, apply, reconcile again: the second pass must change nothing."""
    _d, after = step(obs, now)
    again = reconcile(after, now)
    assert again.changes_nothing, again
    assert reconcile(after, now) == again  # same observed -> same desired
    return after


def job_with(job: Obj, **status: Any) -> Obj:
    job = copy.deepcopy(job)
    job["status"] = status
    return job


def finished(job: Obj, ctype: str, reason: str = "") -> Obj:
    return job_with(job, conditions=[{"type": ctype, "status": "True", "reason": reason}],
                    **({"succeeded": job["spec"]["completions"]} if ctype == "Complete" else {"failed": 1}))


def pod(name: str, phase: str = "Running", index: int = 0, disrupted: bool = False, ip: str = "10.0.0.1",
        message: str | None = None, job: Obj | None = None) -> Obj:
    """A pod of `job` (owner reference to its uid); `message`: its container's termination message."""
    conds = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}] if disrupted else []
    status: Obj = {"phase": phase, "podIP": ip, "conditions": conds}
    if message is not None:
        code = 0 if phase == "Succeeded" else 1
        status["containerStatuses"] = [{"name": "runtime", "state": {"terminated": {"exitCode": code, "message": message}}}]
    meta: Obj = {"name": name, "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}}
    if job is not None:
        meta["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                                    "uid": job["metadata"]["uid"], "controller": True}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status}


def cond(status: Obj, ctype: str) -> Obj:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)
