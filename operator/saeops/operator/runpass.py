"""One reconcile pass of a run or cache: the status being built, the owned children, and the
helpers every phase uses (conditions, events, deletes, failure, TTL).

Ownership is settled here, once: an object holding a child's name whose ownerReferences do
not name this resource's uid lands in `foreign` and is never adopted, patched or deleted.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from saeops.api import ActivationCache, SAETrainingRun, format_validation_error, names
from saeops.operator import jobs, outcome, progress
from saeops.operator.conditions import (
    CACHE_READY,
    GROUPED,
    RUN_CONDITIONS,
    SPEC_FAILURES,
    Conditions,
    parse_time,
    rfc3339,
)
from saeops.operator.grouprender import group_of, sweep_uid_of
from saeops.operator.policy import ClusterPolicy
from saeops.operator.render import metrics_port_of, render_configmap, render_network_policy, render_service
from saeops.operator.state import ChildRef, Desired, Event, Observed

Obj = dict[str, Any]
RUN_KINDS = {SAETrainingRun.KIND: SAETrainingRun, ActivationCache.KIND: ActivationCache}
STATUS_KEYS = (
    "observedGeneration", "phase", "conditions", "startTime", "completionTime", "restarts",
    "progress", "metrics", "lastCheckpoint", "artifacts", "jobName",
)
CACHE_POLL_SECONDS = 15.0
CHILDREN = (("configmap", "v1", "ConfigMap"), ("service", "v1", "Service"),
            ("networkpolicy", "networking.k8s.io/v1", "NetworkPolicy"), ("job", "batch/v1", "Job"))


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


class RunPass:
    """One reconcile pass: accumulates status changes, events and child operations."""

    def __init__(self, obs: Observed, now: datetime, policy: ClusterPolicy) -> None:
        self.obs = obs
        self.now = now
        self.policy = policy
        self.res = obs.resource
        self.meta = _dict(self.res.get("metadata"))
        self.raw_spec = _dict(self.res.get("spec"))
        gen = self.meta.get("generation")
        self.gen = gen if isinstance(gen, int) and not isinstance(gen, bool) else None
        prev = _dict(self.res.get("status"))
        self.prev = {k: prev[k] for k in STATUS_KEYS if k in prev}
        self.st: Obj = copy.deepcopy(self.prev)
        self.st.setdefault("phase", "Pending")
        restarts = self.st.get("restarts")
        self.st["restarts"] = restarts if isinstance(restarts, int) and restarts >= 0 else 0
        if self.gen is not None:
            self.st["observedGeneration"] = self.gen
        types = RUN_CONDITIONS
        if self.res.get("kind") == SAETrainingRun.KIND and _dict(self.raw_spec.get("activations")).get("cacheRef"):
            types = (*types, CACHE_READY)
        if _dict(self.meta.get("labels")).get(names.LABEL_GROUP) and sweep_uid_of(self.res):
            types = (*types, GROUPED)
        self.conds = Conditions(self.st.get("conditions"), types, now, self.gen)
        self.d = Desired()
        # Children this resource owns; anything else under a child's name is foreign.
        uid = self.meta.get("uid")
        self.own: dict[str, Obj | None] = {}
        foreign: dict[tuple[str, str], Obj] = {}
        for field, _, kind in CHILDREN:
            obj = getattr(obs, field)
            if obj is not None and not names.owned_by(obj, uid):
                foreign[(obj.get("kind") or kind, _dict(obj.get("metadata")).get("name", ""))] = {"kind": kind, **obj}
                obj = None
            self.own[field] = obj
        for obj in obs.foreign:  # found by a 409 (usually also seen above)
            if not names.owned_by(obj, uid):
                foreign.setdefault((obj.get("kind", ""), _dict(obj.get("metadata")).get("name", "")), obj)
        self.foreign = list(foreign.values())
        self.job_obj = self.own["job"]
        self.pods = obs.pods if self.job_obj is not None else ()
        # A sweep's trial packed into a group follows the group's Job (the sweep owns it).
        self.group = group_of(self.res) if self.res.get("kind") == SAETrainingRun.KIND else None
        self.group_job = None
        if self.group is not None:
            self.group_job = obs.group_job if names.owned_by(obs.group_job, sweep_uid_of(self.res)) else None
            self.pods = obs.pods if self.group_job is not None else ()

    # ------------------------------------------------------------------ helpers
    def event(self, type_: str, reason: str, message: str) -> None:
        self.d.events.append(Event(type_, reason, message))

    def requeue(self, seconds: float) -> None:
        seconds = max(0.5, seconds)
        self.d.requeue_after = seconds if self.d.requeue_after is None else min(self.d.requeue_after, seconds)

    def delete_child(self, field: str) -> None:
        """Delete an owned child (never a foreign one: those are not in `own`)."""
        obj = self.own.get(field)
        if obj is None or jobs.deleting(obj):
            return
        _, api_version, kind = next(c for c in CHILDREN if c[0] == field)
        meta = _dict(obj.get("metadata"))
        self.d.delete.append(ChildRef(api_version, kind, meta.get("name", ""), meta.get("uid")))

    def delete_job(self) -> None:
        self.delete_child("job")

    def fail(self, reason: str, message: str, keep_job: bool = False) -> None:
        """Terminal failure."""
        if not keep_job:
            self.delete_job()
        changed = self.conds.set("Failed", "True", reason, message)
        self.conds.set("Succeeded", "False", reason, message)
        self.conds.set("Running", "False", reason, message)
        if (self.conds.get("Admitted") or {}).get("status") == "Unknown":
            self.conds.set("Admitted", "False", reason, message)
        self.st["phase"] = "Failed"
        self.st.setdefault("completionTime", rfc3339(self.now))
        if changed:
            self.event("Warning", reason, message)
        self.ttl()

    def fail_spec(self, reason: str, message: str) -> None:
        """A failure of the resource as written: every owned child goes, so a fixed spec (the
        next generation) starts from fresh ones."""
        for field, _, _ in CHILDREN:
            self.delete_child(field)
        self.fail(reason, message, keep_job=True)

    def ttl(self) -> None:
        """Delete the resource ttlSecondsAfterFinished after completionTime."""
        ttl = self.raw_spec.get("ttlSecondsAfterFinished")
        done = parse_time(self.st.get("completionTime"))
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0 or done is None:
            return
        left = (done + timedelta(seconds=ttl) - self.now).total_seconds()
        if left <= 0:
            self.d.delete_self = True
        else:
            self.requeue(left)

    def finish(self) -> Desired:
        self.st["conditions"] = self.conds.as_list()
        new = {k: v for k, v in self.st.items() if v is not None}
        if new != self.prev:
            self.d.status = new
        return self.d

    # ------------------------------------------------------------------ gates
    def terminal(self) -> bool:
        failed = self.conds.get("Failed") or {}
        if failed.get("status") == "True" and failed.get("reason") in SPEC_FAILURES:
            # A fixed spec (new generation) gets another chance.
            return failed.get("observedGeneration") == self.gen
        return self.conds.is_true("Succeeded") or failed.get("status") == "True"

    def on_terminal(self) -> None:
        job = self.job_obj
        if self.conds.is_true("Failed") and job is not None and not jobs.job_failed(job) and not jobs.job_succeeded(job):
            self.delete_job()  # e.g. a deadline hit while the delete was in flight
        if self.conds.is_true("Succeeded"):
            self.final_metrics()
        self.ttl()

    def retry_after_spec_failure(self) -> None:
        """A new generation of a resource that failed as written: clear the failure."""
        failed = self.conds.get("Failed") or {}
        if failed.get("status") == "True" and failed.get("reason") in SPEC_FAILURES:
            msg = f"spec changed (generation {self.gen}); trying again"
            self.conds.set("Failed", "False", "SpecChanged", msg)
            self.conds.set("Succeeded", "Unknown", "SpecChanged", msg)
            self.st.pop("completionTime", None)
            self.st["phase"] = "Pending"

    def validate(self) -> SAETrainingRun | ActivationCache | None:
        cls = RUN_KINDS[self.res["kind"]]
        doc = {k: self.res.get(k) for k in ("apiVersion", "kind", "spec")}
        doc["metadata"] = {k: self.meta[k] for k in ("name", "namespace") if k in self.meta}
        try:
            model = cls.model_validate(doc)
        except ValidationError as e:
            self.fail_spec("InvalidSpec", format_validation_error(e, cls))
            return None
        except (TypeError, ValueError) as e:  # defensive: never crash on input
            self.fail_spec("InvalidSpec", f"spec: {e}")
            return None
        problem = self.policy.check(model, self.meta.get("namespace") or "default")
        if problem is not None:
            self.fail_spec(problem.reason, problem.message)
            return None
        return model

    def cache_gate(self) -> bool:
        """For runs reading an ActivationCache: True when the cache is ready."""
        ref = _dict(self.raw_spec.get("activations")).get("cacheRef")
        if self.res["kind"] != SAETrainingRun.KIND or not ref:
            return True
        cache = self.obs.cache
        phase = _dict(_dict(cache).get("status")).get("phase") if cache else None
        if phase == "Succeeded":
            self.conds.set(CACHE_READY, "True", "CacheSucceeded", f"ActivationCache {ref} succeeded")
            return True
        if phase == "Failed":
            msg = f"ActivationCache {ref} failed"
            self.conds.set(CACHE_READY, "False", "CacheFailed", msg)
            self.fail("CacheFailed", msg)
            return False
        msg = f"waiting for ActivationCache {ref}" + (f" (phase {phase})" if phase else " (not found)")
        changed = self.conds.set(CACHE_READY, "False", "CacheNotReady", msg)
        self.conds.set("Admitted", "False", "CacheNotReady", msg)
        self.st["phase"] = "Waiting"
        if changed:
            self.event("Normal", "CacheNotReady", msg)
        self.requeue(CACHE_POLL_SECONDS)
        return False

    def suspend_gate(self, model: SAETrainingRun | ActivationCache) -> bool:
        """True when the run may run; handles suspend and resume."""
        if model.spec.suspend:
            self.delete_job()
            msg = "suspended: pods deleted, status kept; resumes from the latest checkpoint"
            if self.group is not None:
                # Its group trains on without it; resumed, it runs alone from its checkpoint.
                msg = f"suspended: left group {self.group}, which trains on; resumes as a run of its own from its checkpoint"
                self.conds.set(GROUPED, "False", "LeftGroup", msg)
            if self.conds.set("Suspended", "True", "Suspended", msg):
                self.event("Normal", "Suspended", msg)
            self.conds.set("Running", "False", "Suspended", msg)
            self.st["phase"] = "Suspended"
            return False
        if self.conds.is_true("Suspended"):
            self.conds.set("Suspended", "False", "Resumed", "resumed; the runtime continues from its checkpoint")
            self.event("Normal", "Resumed", "resumed; recreating the job")
        elif (self.conds.get("Suspended") or {}).get("status") == "Unknown":
            self.conds.set("Suspended", "False", "NotSuspended", "")
        return True

    def deadline_gate(self, model: SAETrainingRun | ActivationCache) -> bool:
        ads = model.spec.active_deadline_seconds
        start = parse_time(self.st.get("startTime"))
        if ads is None or start is None:
            return True
        left = (start + timedelta(seconds=ads) - self.now).total_seconds()
        if left <= 0:
            self.fail("DeadlineExceeded", f"active for more than activeDeadlineSeconds={ads}")
            return False
        self.requeue(left)
        return True

    # ------------------------------------------------------------------ children
    def children(self, model: SAETrainingRun | ActivationCache) -> None:
        port = metrics_port_of(model)
        if self.own["configmap"] is None:
            self.d.create.append(render_configmap(self.res, self.obs.cache))
        if self.own["service"] is None:
            self.d.create.append(render_service(self.res, port))
        if self.policy.network_policy and self.own["networkpolicy"] is None:
            self.d.create.append(render_network_policy(self.res, port, self.policy))

    def final_metrics(self) -> None:
        """Final metrics (and the last checkpoint) from what the succeeded rank-0 pod reported."""
        if self.group is not None:
            report = outcome.group_report(self.pods)
            done = (report.members or {}).get(self.meta.get("name", "")) if report is not None else None
        else:
            done = outcome.success(self.pods)
        if done is None:
            return
        metrics = _dict(self.st.get("metrics"))
        if done.final is not None:
            metrics = {**metrics, **progress.final_metrics(done.final)}
        if done.cache is not None:
            metrics = {**metrics, **progress.cache_metrics(done.cache)}
        self.st["metrics"] = metrics
        uri = _dict(_dict(self.raw_spec).get("output")).get("storageUri")
        ckpt = progress.reported_checkpoint(uri if isinstance(uri, str) else "", done.last_checkpoint)
        if ckpt:
            self.st["lastCheckpoint"] = ckpt
