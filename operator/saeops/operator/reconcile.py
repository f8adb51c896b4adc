"""Pure reconcile of an SAETrainingRun or ActivationCache: observed state -> desired changes.

No I/O and no clock: `now` is passed in, so every transition is a plain function call in
the tests, and the handlers are thin glue that read, call this, and apply the result.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from saeops.api import ActivationCache, SAETrainingRun, format_validation_error, names
from saeops.operator import jobs, progress
from saeops.operator.conditions import CACHE_READY, RUN_CONDITIONS, Conditions, parse_time, rfc3339
from saeops.operator.render import metrics_port_of, render_configmap, render_job, render_service
from saeops.operator.state import ChildRef, Desired, Event, Observed

Obj = dict[str, Any]
RUN_KINDS = {SAETrainingRun.KIND: SAETrainingRun, ActivationCache.KIND: ActivationCache}
STATUS_KEYS = (
    "observedGeneration", "phase", "conditions", "startTime", "completionTime", "restarts",
    "progress", "metrics", "lastCheckpoint", "artifacts", "jobName",
)
CACHE_POLL_SECONDS = 15.0
TERMINAL_FAILURES_KEEPING_JOB = {"BackoffLimitExceeded"}


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


class _Run:
    """One reconcile pass: accumulates status changes, events and child operations."""

    def __init__(self, obs: Observed, now: datetime) -> None:
        self.obs = obs
        self.now = now
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
        self.conds = Conditions(self.st.get("conditions"), types, now, self.gen)
        self.d = Desired()

    # ------------------------------------------------------------------ helpers
    def event(self, type_: str, reason: str, message: str) -> None:
        self.d.events.append(Event(type_, reason, message))

    def requeue(self, seconds: float) -> None:
        seconds = max(0.5, seconds)
        self.d.requeue_after = seconds if self.d.requeue_after is None else min(self.d.requeue_after, seconds)

    def delete_job(self) -> None:
        job = self.obs.job
        if job is not None and not jobs.deleting(job):
            name = _dict(job.get("metadata")).get("name") or names.job_name(self.meta.get("name", ""))
            self.d.delete.append(ChildRef("batch/v1", "Job", name))

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

    # ------------------------------------------------------------------ phases
    def terminal(self) -> bool:
        failed = self.conds.get("Failed") or {}
        if failed.get("status") == "True" and failed.get("reason") == "InvalidSpec":
            # A fixed spec (new generation) gets another chance.
            return failed.get("observedGeneration") == self.gen
        return self.conds.is_true("Succeeded") or failed.get("status") == "True"

    def on_terminal(self) -> None:
        job = self.obs.job
        if self.conds.is_true("Failed") and job is not None and not jobs.job_failed(job) and not jobs.job_succeeded(job):
            self.delete_job()  # e.g. a deadline hit while the delete was in flight
        if self.conds.is_true("Succeeded") and self.obs.summary:
            self.st["metrics"] = {**_dict(self.st.get("metrics")), **progress.final_metrics(self.obs.summary)}
        self.ttl()

    def validate(self) -> SAETrainingRun | ActivationCache | None:
        cls = RUN_KINDS[self.res["kind"]]
        doc = {k: self.res.get(k) for k in ("apiVersion", "kind", "spec")}
        doc["metadata"] = {k: self.meta[k] for k in ("name", "namespace") if k in self.meta}
        try:
            return cls.model_validate(doc)
        except ValidationError as e:
            msg = format_validation_error(e, cls)
        except (TypeError, ValueError) as e:  # defensive: never crash on input
            msg = f"spec: {e}"
        self.fail("InvalidSpec", msg)
        for kind, obj in (("ConfigMap", self.obs.configmap), ("Service", self.obs.service)):
            if obj is not None:
                self.d.delete.append(ChildRef("v1", kind, _dict(obj.get("metadata")).get("name", "")))
        return None

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

    def children(self, model: SAETrainingRun | ActivationCache) -> None:
        if self.obs.configmap is None:
            self.d.create.append(render_configmap(self.res, self.obs.cache))
        if self.obs.service is None:
            self.d.create.append(render_service(self.res, metrics_port_of(model)))

    def job(self, model: SAETrainingRun | ActivationCache) -> None:
        job = self.obs.job
        if job is not None and jobs.deleting(job):
            self.requeue(2)  # the old Job is going away; recreate after it has gone
            return
        if job is None:
            self.create_job(model)
            return
        failed = jobs.job_failed(job)
        if jobs.job_succeeded(job):
            self.succeed(model, job)
        elif failed is not None:
            self.job_failed(model, failed)
        else:
            self.job_active(model, job)

    def create_job(self, model: SAETrainingRun | ActivationCache) -> None:
        rendered = render_job(self.res, model)
        self.d.create.append(rendered)
        self.st["jobName"] = rendered["metadata"]["name"]
        self.st.setdefault("startTime", rfc3339(self.now))
        if model.spec.queue_name:
            self.conds.set("Admitted", "False", "Queued", f"waiting for Kueue LocalQueue {model.spec.queue_name}")
        else:
            self.conds.set("Admitted", "True", "JobCreated", f"created Job {rendered['metadata']['name']}")
        self.conds.set("Running", "False", "PodsPending", "waiting for pods to start")
        self.st["phase"] = "Pending"
        self.event("Normal", "JobCreated", f"created Job {rendered['metadata']['name']}")

    def succeed(self, model: SAETrainingRun | ActivationCache, job: Obj) -> None:
        msg = "job completed"
        changed = self.conds.set("Succeeded", "True", "Completed", msg)
        self.conds.set("Failed", "False", "Completed", msg)
        self.conds.set("Running", "False", "Completed", msg)
        self.st["phase"] = "Succeeded"
        self.st.setdefault("completionTime", _dict(job.get("status")).get("completionTime") or rfc3339(self.now))
        self.st["progress"] = progress.completed_progress(_total(model))
        metrics = {**_dict(self.st.get("metrics")), **progress.status_metrics(self.obs.metrics)}
        metrics.update(progress.final_metrics(self.obs.summary))
        self.st["metrics"] = metrics
        self.st["artifacts"] = _artifacts(model)
        if changed:
            self.event("Normal", "Completed", msg)
        self.ttl()

    def job_failed(self, model: SAETrainingRun | ActivationCache, failed: Obj) -> None:
        preempted = jobs.preempted_pods(self.obs.pods)
        if preempted:
            self.delete_job()
            msg = f"pods {', '.join(preempted[:5])} were disrupted; recreating the job (not counted as a restart)"
            if self.conds.set("Running", "False", "Preempted", msg):
                self.event("Warning", "Preempted", msg)
            self.requeue(1)
            return
        why = failed.get("reason") or "JobFailed"
        limit = model.spec.failure_policy.max_restarts
        if self.st["restarts"] >= limit:
            msg = f"job failed ({why}) after {self.st['restarts']} restarts; failurePolicy.maxRestarts={limit}"
            self.fail("BackoffLimitExceeded", msg, keep_job=True)  # kept: its pods hold the logs
            return
        self.delete_job()
        self.st["restarts"] += 1
        msg = f"job failed ({why}); restart {self.st['restarts']} of {limit}"
        self.conds.set("Running", "False", "JobFailed", msg)
        self.event("Warning", "JobFailed", msg)
        self.requeue(1)

    def job_active(self, model: SAETrainingRun | ActivationCache, job: Obj) -> None:
        if jobs.job_suspended(job):
            queue = model.spec.queue_name or "(none)"
            self.conds.set("Admitted", "False", "Queued", f"waiting for Kueue LocalQueue {queue}")
            self.st["phase"] = "Pending"
            return
        if (self.conds.get("Admitted") or {}).get("status") != "True":
            self.conds.set("Admitted", "True", "JobCreated", f"Job {_dict(job.get('metadata')).get('name')} admitted")
        running = jobs.running_pods(job, self.obs.pods)
        nodes = model.spec.resources.num_nodes
        if running:
            preempted = jobs.preempted_pods(self.obs.pods)
            if preempted:
                msg = f"pods {', '.join(preempted[:5])} were disrupted and are being replaced (not counted)"
                if self.conds.set("Running", "True", "Preempted", msg):
                    self.event("Warning", "Preempted", msg)
            else:
                self.conds.set("Running", "True", "Running", f"{running}/{nodes} pods running")
            self.st["phase"] = "Running"
        else:
            self.conds.set("Running", "False", "PodsPending", "waiting for pods to start")
            self.st["phase"] = "Pending"
        prog = progress.progress(self.obs.metrics, _total(model), self.now)
        if prog is not None:
            self.st["progress"] = prog
        scraped = progress.status_metrics(self.obs.metrics)
        if scraped:
            self.st["metrics"] = scraped
        if self.obs.checkpoint:
            self.st["lastCheckpoint"] = self.obs.checkpoint


def _total(model: SAETrainingRun | ActivationCache) -> int:
    if isinstance(model, SAETrainingRun):
        return model.spec.trainer.total_training_tokens
    return model.spec.total_tokens * len(model.spec.hook_points)


def _artifacts(model: SAETrainingRun | ActivationCache) -> dict[str, str]:
    base = model.spec.output.storage_uri.rstrip("/")
    if isinstance(model, SAETrainingRun):
        return {"sae": f"{base}/sae.safetensors", "config": f"{base}/config.json", "metrics": f"{base}/metrics.json"}
    return {"cache": base, "manifest": f"{base}/manifest.json"}


def reconcile(observed: Observed, now: datetime) -> Desired:
    """Reconcile a run or cache. Pure: same inputs, same output; never raises on bad specs."""
    r = _Run(observed, now)
    if r.res.get("kind") not in RUN_KINDS:
        r.fail("InvalidSpec", f"kind: expected one of {', '.join(RUN_KINDS)}")
        return r.finish()
    if r.meta.get("deletionTimestamp"):
        return Desired()  # owner references let the garbage collector remove the children
    if r.terminal():
        r.on_terminal()
        return r.finish()
    model = r.validate()
    if model is None or not r.cache_gate() or not r.suspend_gate(model) or not r.deadline_gate(model):
        return r.finish()
    r.children(model)
    r.job(model)
    return r.finish()
