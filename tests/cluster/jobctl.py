"""The Job controller's rules for Indexed Jobs (pure functions over plain dicts).

Pods are replaced per completion index; a failed pod counts against `backoffLimit` unless the
Job's `podFailurePolicy` says otherwise (first matching rule wins: `Ignore` neither counts nor
stops the replacement, `FailJob` fails the Job at once, `Count` counts); a Job whose every index
succeeded is `Complete`; a Job over its backoff limit, failed by a rule, or past
`activeDeadlineSeconds` is `Failed`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def seconds_since(stamp: str) -> float:
    return (datetime.now(UTC) - datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)).total_seconds()


def true_conditions(obj: Obj) -> set[str]:
    return {c.get("type") for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}


def finished(job: Obj) -> bool:
    return bool({"Complete", "Failed"} & true_conditions(job))


def _rule_matches(rule: Obj, container: str, exit_code: int, pod_conditions: set[str]) -> bool:
    codes = rule.get("onExitCodes")
    if codes is not None:
        if codes.get("containerName") not in (None, container):
            return False
        inside = exit_code in (codes.get("values") or [])
        return inside if codes.get("operator", "In") == "In" else (not inside and exit_code != 0)
    for cond in rule.get("onPodConditions") or []:
        if cond.get("status", "True") == "True" and cond.get("type") in pod_conditions:
            return True
    return False


def failure_action(job: Obj, container: str, exit_code: int, pod_conditions: set[str]) -> str:
    """`Ignore`, `FailJob`, `FailIndex` or `Count` for a failed pod of `job`."""
    policy = (job.get("spec") or {}).get("podFailurePolicy") or {}
    for rule in policy.get("rules") or []:
        if _rule_matches(rule, container, exit_code, pod_conditions):
            return str(rule.get("action", "Count"))
    return "Count"


def index_ranges(indexes: set[int]) -> str:
    """`status.completedIndexes`: "0-2,5"."""
    out: list[str] = []
    for i in sorted(indexes):
        if out and out[-1].split("-")[-1] == str(i - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ",".join(out)


def condition(ctype: str, reason: str, message: str, when: str) -> Obj:
    return {"type": ctype, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": when, "lastTransitionTime": when}


def failure(job: Obj, counted: int, fail_job: str | None, start: str | None) -> tuple[str, str] | None:
    """(reason, message) when the Job must fail now, else None."""
    spec = job.get("spec") or {}
    if fail_job:
        return "PodFailurePolicy", fail_job
    if counted > int(spec.get("backoffLimit", 6)):
        return "BackoffLimitExceeded", "Job has reached the specified backoff limit"
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and start is not None and seconds_since(start) > int(deadline):
        return "DeadlineExceeded", "Job was active longer than specified deadline"
    return None


def job_status(job: Obj, *, active: int, ready: int, succeeded: set[int], counted: int, start: str | None,
               failed_because: tuple[str, str] | None) -> Obj:
    """The status the controller writes (conditions kept once set)."""
    spec = job.get("spec") or {}
    old = job.get("status") or {}
    conds = [c for c in old.get("conditions") or [] if c.get("type") not in ("Complete", "Failed", "FailureTarget",
                                                                               "SuccessCriteriaMet", "Suspended")]
    status: Obj = {"active": active, "ready": ready, "succeeded": len(succeeded), "failed": counted,
                   "completedIndexes": index_ranges(succeeded), "terminating": 0}
    if start:
        status["startTime"] = start
    when = now()
    if failed_because is not None:
        reason, message = failed_because
        conds += [condition("FailureTarget", reason, message, when), condition("Failed", reason, message, when)]
    elif len(succeeded) >= int(spec.get("completions") or 1):
        conds += [condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods", when),
                  condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods", when)]
        status["completionTime"] = old.get("completionTime") or when
    elif spec.get("suspend"):
        conds.append(condition("Suspended", "JobSuspended", "Job suspended", when))
    # A condition that was already true keeps its timestamps.
    before = {c.get("type"): c for c in old.get("conditions") or [] if c.get("status") == "True"}
    status["conditions"] = [before.get(c["type"], c) for c in conds]
    return status
