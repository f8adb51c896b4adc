"""The Job's life as seen by a run or cache: create it, follow it, and turn its end into
Succeeded, a counted restart, a preemption (not counted) or Failed. Functions of one reconcile
pass (`runpass.RunPass`), kept apart so each module stays about one thing."""

from __future__ import annotations

from typing import Any

from saeops.api import ActivationCache, SAETrainingRun
from saeops.api.uris import URIError, parse_storage_uri
from saeops.operator import jobs, outcome, progress
from saeops.operator.conditions import rfc3339
from saeops.operator.render import render_job
from saeops.operator.runpass import RunPass

Obj = dict[str, Any]
Model = SAETrainingRun | ActivationCache


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def total_tokens(model: Model) -> int:
    if isinstance(model, SAETrainingRun):
        return model.spec.trainer.total_training_tokens
    return model.spec.total_tokens * len(model.spec.hook_points)


def artifacts(model: Model) -> dict[str, str]:
    """Where the finished run's (or cache's) artifacts are, under its storageUri."""
    try:
        base = parse_storage_uri(model.spec.output.storage_uri, allow_relative=False)
    except URIError:
        return {}
    if isinstance(model, SAETrainingRun):
        files = (("sae", "sae.safetensors"), ("config", "config.json"), ("metrics", "metrics.json"))
        return {key: str(base.child(name)) for key, name in files}
    return {"cache": str(base), "manifest": str(base.child("manifest.json"))}


def job(r: RunPass, model: Model) -> None:
    """Create the Job, or follow the one there is."""
    current = r.job_obj
    if current is not None and jobs.deleting(current):
        r.requeue(2)  # the old Job is going away; recreate after it has gone
        return
    if current is None:
        create_job(r, model)
        return
    failed = jobs.job_failed(current)
    if jobs.job_succeeded(current):
        succeed(r, model, current)
    elif failed is not None:
        job_failed(r, model, failed)
    else:
        job_active(r, model, current)


def create_job(r: RunPass, model: Model) -> None:
    rendered = render_job(r.res, model)
    name = rendered["metadata"]["name"]
    r.d.create.append(rendered)
    r.st["jobName"] = name
    r.st.setdefault("startTime", rfc3339(r.now))
    if model.spec.queue_name:
        r.conds.set("Admitted", "False", "Queued", f"waiting for Kueue LocalQueue {model.spec.queue_name}")
    else:
        r.conds.set("Admitted", "True", "JobCreated", f"created Job {name}")
    r.conds.set("Running", "False", "PodsPending", "waiting for pods to start")
    r.st["phase"] = "Pending"
    r.event("Normal", "JobCreated", f"created Job {name}")


def succeed(r: RunPass, model: Model, current: Obj) -> None:
    msg = "job completed"
    changed = r.conds.set("Succeeded", "True", "Completed", msg)
    r.conds.set("Failed", "False", "Completed", msg)
    r.conds.set("Running", "False", "Completed", msg)
    r.st["phase"] = "Succeeded"
    r.st.setdefault("completionTime", _dict(current.get("status")).get("completionTime") or rfc3339(r.now))
    r.st["progress"] = progress.completed_progress(total_tokens(model))
    r.st["metrics"] = {**_dict(r.st.get("metrics")), **progress.status_metrics(r.obs.metrics)}
    r.final_metrics()
    r.st["artifacts"] = artifacts(model)
    if changed:
        r.event("Normal", "Completed", msg)
    r.ttl()


def job_failed(r: RunPass, model: Model, failed: Obj) -> None:
    preempted = jobs.preempted_pods(r.pods)
    if preempted:
        r.delete_job()
        msg = f"pods {', '.join(preempted[:5])} were disrupted; recreating the job (not counted as a restart)"
        if r.conds.set("Running", "False", "Preempted", msg):
            r.event("Warning", "Preempted", msg)
        r.requeue(1)
        return
    why = failed.get("reason") or "JobFailed"
    line = outcome.failure_line(r.pods)
    limit = model.spec.failure_policy.max_restarts
    if r.st["restarts"] >= limit:
        # The pod's own one-line error says what to fix; restarts are in status.restarts.
        msg = line or f"job failed ({why}) after {r.st['restarts']} restarts; failurePolicy.maxRestarts={limit}"
        r.fail("BackoffLimitExceeded", msg, keep_job=True)  # kept: its pods hold the logs
        return
    r.delete_job()
    r.st["restarts"] += 1
    msg = f"job failed ({why}){': ' + line if line else ''}; restart {r.st['restarts']} of {limit}"
    r.conds.set("Running", "False", "JobFailed", msg)
    r.event("Warning", "JobFailed", msg)
    r.requeue(1)


def job_active(r: RunPass, model: Model, current: Obj) -> None:
    if jobs.job_suspended(current):
        queue = model.spec.queue_name or "(none)"
        r.conds.set("Admitted", "False", "Queued", f"waiting for Kueue LocalQueue {queue}")
        r.st["phase"] = "Pending"
        return
    if (r.conds.get("Admitted") or {}).get("status") != "True":
        r.conds.set("Admitted", "True", "JobCreated", f"Job {_dict(current.get('metadata')).get('name')} admitted")
    running = jobs.running_pods(current, r.pods)
    nodes = model.spec.resources.num_nodes
    if running:
        preempted = jobs.preempted_pods(r.pods)
        if preempted:
            msg = f"pods {', '.join(preempted[:5])} were disrupted and are being replaced (not counted)"
            if r.conds.set("Running", "True", "Preempted", msg):
                r.event("Warning", "Preempted", msg)
        else:
            r.conds.set("Running", "True", "Running", f"{running}/{nodes} pods running")
        r.st["phase"] = "Running"
    else:
        r.conds.set("Running", "False", "PodsPending", "waiting for pods to start")
        r.st["phase"] = "Pending"
    prog = progress.progress(r.obs.metrics, total_tokens(model), r.now)
    if prog is not None:
        r.st["progress"] = prog
    scraped = progress.status_metrics(r.obs.metrics)
    if scraped:
        r.st["metrics"] = scraped
    ckpt = progress.checkpoint_uri(model.spec.output.storage_uri, r.obs.metrics)
    if ckpt:
        r.st["lastCheckpoint"] = ckpt
