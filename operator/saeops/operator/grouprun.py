"""A sweep's trial packed into a group: no Job of its own; its phase, progress, metrics and last
checkpoint come from the group's Job (the sweep owns it), its pods' series labelled
`run="<trial>"` and its entry in the rank-0 pod's termination message (`members[<trial>]`).

- the group's Job succeeded: the trial Succeeded with its final metrics, or Failed alone with
  its own error line (reason MemberFailed);
- the Job failed past its backoff: the trial Failed with the pod's message, unless it had
  already finished (its entry holds final metrics);
- not (yet) a member of the Job there is: Pending, waiting for the sweep to (re)create it.

`status.restarts` of a grouped trial counts the group Job's failed pods: the Job controller
retries them itself (every member resumes from its checkpoint), up to the backoffLimit that
`failurePolicy.maxRestarts` sets.
"""

from __future__ import annotations

from saeops.api import SAETrainingRun, names
from saeops.operator import jobs, lifecycle, outcome
from saeops.operator.conditions import GROUPED, rfc3339
from saeops.operator.grouprender import is_member, members_of
from saeops.operator.runpass import RunPass


def follow(r: RunPass, model: SAETrainingRun) -> None:
    """Follow the group's Job (the reconcile's last step for a grouped trial)."""
    group = r.group or ""
    job, job_name = r.group_job, names.group_job_name(group)
    if job is None or jobs.deleting(job) or not is_member(job, r.res):
        msg = f"waiting for Job {job_name} of group {group}"
        r.conds.set(GROUPED, "True", "WaitingForGroup", msg)
        r.conds.set("Running", "False", "WaitingForGroup", msg)
        if (r.conds.get("Admitted") or {}).get("status") != "True":
            r.conds.set("Admitted", "False", "WaitingForGroup", msg)
        r.st["phase"] = "Pending"
        return
    size = len(members_of(job) or {})
    r.conds.set(GROUPED, "True", "InGroup", f"trained with group {group} ({size} trials) by Job {job_name}")
    r.st["jobName"] = job_name
    r.st.setdefault("startTime", rfc3339(r.now))
    r.st["restarts"] = max(r.st["restarts"], jobs.failed_pods(job))  # never back down (a recreated Job)
    failed = jobs.job_failed(job)
    if not jobs.job_succeeded(job) and failed is None:
        lifecycle.job_active(r, model, job)
        return
    report = outcome.group_report(r.pods)
    mine = (report.members or {}).get(r.meta.get("name", "")) if report is not None else None
    if mine is not None and mine.error:
        r.fail("MemberFailed", mine.error, keep_job=True)
    elif mine is not None and mine.final is not None:
        lifecycle.succeed(r, model, job)
    elif failed is not None:
        why = f"the group's Job {job_name} failed ({failed.get('reason') or 'JobFailed'})"
        r.fail("BackoffLimitExceeded", (report.error if report else None) or outcome.failure_line(r.pods) or why,
               keep_job=True)
    elif report is not None:
        r.fail("NotReported", f"the group's Job {job_name} ended without a result for this trial", keep_job=True)
    else:
        lifecycle.succeed(r, model, job)  # no report to read: as a single run's Job without one
