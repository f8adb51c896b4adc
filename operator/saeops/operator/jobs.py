"""Reading a Job and its pods the way the Job controller writes them."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def _true_conditions(obj: Obj | None) -> dict[str, Obj]:
    conds = ((obj or {}).get("status") or {}).get("conditions") or []
    return {c.get("type"): c for c in conds if isinstance(c, dict) and c.get("status") == "True"}


def job_succeeded(job: Obj) -> bool:
    """Complete=True, or every index succeeded (some controllers lag on the condition)."""
    if "Complete" in _true_conditions(job):
        return True
    spec = job.get("spec") or {}
    succeeded = (job.get("status") or {}).get("succeeded") or 0
    completions = spec.get("completions") or 1
    return isinstance(succeeded, int) and succeeded >= completions


def job_failed(job: Obj) -> Obj | None:
    """The Failed condition of a failed Job, else None."""
    return _true_conditions(job).get("Failed")


def failed_pods(job: Obj) -> int:
    """Pods of the Job that failed and counted against its backoffLimit (the Job controller's
    `status.failed`; pods the podFailurePolicy ignores, preempted ones, are not in it)."""
    failed = (job.get("status") or {}).get("failed") or 0
    return failed if isinstance(failed, int) and failed > 0 else 0


def job_suspended(job: Obj) -> bool:
    """A Job held back (by Kueue or by the operator's queue label)."""
    return bool((job.get("spec") or {}).get("suspend"))


def deleting(obj: Obj | None) -> bool:
    """The object is being deleted (finalizers or background deletion pending)."""
    return bool(((obj or {}).get("metadata") or {}).get("deletionTimestamp"))


def preempted_pods(pods: tuple[Obj, ...]) -> list[str]:
    """Pods the cluster disrupted (preemption, eviction, drain): DisruptionTarget=True."""
    names = []
    for pod in pods:
        if "DisruptionTarget" in _true_conditions(pod):
            names.append(((pod.get("metadata") or {}).get("name")) or "?")
    return sorted(names)


def running_pods(job: Obj, pods: tuple[Obj, ...]) -> int:
    """Pods running now (from the pods when listed, else the Job's active count)."""
    n = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running")
    active = (job.get("status") or {}).get("active") or 0
    return max(n, active if isinstance(active, int) else 0)


def rank0_pod(pods: tuple[Obj, ...]) -> Obj | None:
    """The running pod of completion index 0 (serves /metrics)."""
    for pod in pods:
        ann = (pod.get("metadata") or {}).get("annotations") or {}
        status = pod.get("status") or {}
        if ann.get("batch.kubernetes.io/job-completion-index") == "0" and status.get("phase") == "Running":
            return pod
    return None
