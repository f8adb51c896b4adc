"""A sweep's groups, trial side: a grouped trial makes no Job; its phase, progress, metrics and
outcome come from its group's Job, that Job's pods and its own entry in their report."""

from __future__ import annotations

import copy
import json

from saeops.operator import outcome
from saeops.operator.progress import parse_prometheus
from saeops.operator.reconcile import reconcile
from saeops.operator.state import Observed

from .groups import child, group_pod, grouped_sweep, report, set_job_status, trial_view
from .helpers import T0, cond, later

FINAL = {"l0": 31.0, "explained_variance": 0.9, "mse": 0.01, "dead_fraction": 0.0, "tokens": 400000, "seconds": 9.0}
CKPT = "s3://bucket/runs/quickstart/sw-{}/checkpoints/step-00000097"


def _done(i: int) -> dict:
    return {"final": {**FINAL, "l0": 30.0 + i}, "lastCheckpoint": CKPT.format(i)}


def _job(obs, **status):
    return child(set_job_status(obs, **status), "Job")


def test_a_grouped_trial_makes_no_job_and_waits_for_its_group():
    obs = grouped_sweep()
    d = reconcile(trial_view(obs, "sw-1"), T0)  # the group's Job does not exist yet
    assert not d.create and not d.delete
    st = d.status
    assert st["phase"] == "Pending" and cond(st, "Grouped")["reason"] == "WaitingForGroup"
    assert "jobName" not in st


def test_a_member_follows_the_group_job_with_its_own_series():
    obs = grouped_sweep()
    job = _job(obs, active=1)
    scraped = {"saeops_tokens_processed": 100000.0, "saeops_tokens_total": 400000.0, "saeops_l0": 12.0,
               "saeops_checkpoint_step": 40.0}
    d = reconcile(trial_view(obs, "sw-2", job, (group_pod(job),), scraped), T0)
    st = d.status
    assert not d.create and not d.delete
    assert st["phase"] == "Running" and st["jobName"] == job["metadata"]["name"]
    assert cond(st, "Grouped")["reason"] == "InGroup" and "4 trials" in cond(st, "Grouped")["message"]
    assert st["progress"]["percent"] == "25.0" and st["metrics"]["l0"] == "12"
    assert st["lastCheckpoint"] == "s3://bucket/runs/quickstart/sw-2/checkpoints/step-00000040"  # its own prefix


def test_the_metrics_of_one_member_are_its_labelled_series():
    text = "\n".join(["# TYPE saeops_l0 gauge", 'saeops_l0{run="sw-0"} 10.0', 'saeops_l0{run="sw-1"} 20.0', ""])
    assert parse_prometheus(text, "sw-1") == {"saeops_l0": 20.0}
    assert parse_prometheus(text, "sw-9") == {}
    assert parse_prometheus(text) == {"saeops_l0": 10.0}  # a single run reads what there is


def test_a_diverging_member_fails_alone_and_the_rest_succeed():
    obs = grouped_sweep()
    job = _job(obs, succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    message = report(**{"sw-0": _done(0), "sw-1": {"error": "error: sw-1: loss is NaN at step 12 (lr 0.001 too high?)"},
                        "sw-2": _done(2), "sw-3": _done(3)})
    pods = (group_pod(job, phase="Succeeded", message=message),)
    results = {}
    for i in range(4):
        d = reconcile(trial_view(obs, f"sw-{i}", job, pods), later(60))
        assert not d.delete and not d.create
        results[i] = d.status
    assert [results[i]["phase"] for i in range(4)] == ["Succeeded", "Failed", "Succeeded", "Succeeded"]
    failed = cond(results[1], "Failed")
    assert failed["reason"] == "MemberFailed" and failed["message"] == "error: sw-1: loss is NaN at step 12 (lr 0.001 too high?)"
    for i in (0, 2, 3):
        st = results[i]
        assert st["metrics"]["l0"] == str(30 + i) and st["metrics"]["explained_variance"] == "0.9"
        assert st["lastCheckpoint"] == CKPT.format(i)
        assert st["artifacts"]["sae"] == f"s3://bucket/runs/quickstart/sw-{i}/sae.safetensors"
        assert st["progress"]["percent"] == "100.0"


def test_a_group_failed_past_backoff_fails_its_unfinished_members_with_the_pods_message():
    obs = grouped_sweep()
    job = _job(obs, failed=2, conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
    line = "error: activation stream: dataset shard 3 is unreadable (s3://bucket/data/3.parquet)"
    first = group_pod(job, "a", phase="Failed", message="Traceback...\nRuntimeError: NCCL timeout")
    last = group_pod(job, "b", phase="Failed", created="2025-01-01T00:05:00Z",
                     message=json.dumps({"members": {"sw-0": _done(0)}, "error": line}))
    results = {i: reconcile(trial_view(obs, f"sw-{i}", job, (first, last)), later(60)).status for i in range(2)}
    assert results[0]["phase"] == "Succeeded"  # it had finished before the stream broke
    assert results[1]["phase"] == "Failed"
    failed = cond(results[1], "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and failed["message"] == line
    # Without a report, the pod's own last line says why.
    crash = group_pod(job, "c", phase="Failed", message="loading\nerror: spec.model.path: /m does not exist\n")
    st = reconcile(trial_view(obs, "sw-3", job, (crash,)), later(60)).status
    assert cond(st, "Failed")["message"] == "error: spec.model.path: /m does not exist"


def test_a_report_without_the_trial_fails_it_and_no_report_succeeds_it():
    obs = grouped_sweep()
    job = _job(obs, succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    pods = (group_pod(job, phase="Succeeded", message=report(**{"sw-0": _done(0)})),)
    st = reconcile(trial_view(obs, "sw-1", job, pods), T0).status
    assert st["phase"] == "Failed" and cond(st, "Failed")["reason"] == "NotReported"
    st = reconcile(trial_view(obs, "sw-1", job, (group_pod(job, phase="Succeeded"),)), T0).status
    assert st["phase"] == "Succeeded" and "l0" not in st.get("metrics", {})


def test_not_a_member_of_the_job_there_is_waits():
    obs = grouped_sweep()
    job = copy.deepcopy(_job(obs, active=1))
    job["metadata"]["annotations"]["saeops.io/members"] = json.dumps({"sw-0": "uid-saetrainingrun-sw-0",
                                                                      "sw-1": "an-older-sw-1"})
    job["spec"]["template"]["metadata"]["annotations"]["saeops.io/members"] = job["metadata"]["annotations"]["saeops.io/members"]
    st = reconcile(trial_view(obs, "sw-1", job, (group_pod(job),)), T0).status  # a namesake was the member
    assert st["phase"] == "Pending" and cond(st, "Grouped")["reason"] == "WaitingForGroup"


def test_a_job_the_sweep_does_not_own_is_ignored():
    obs = grouped_sweep()
    job = copy.deepcopy(_job(obs, succeeded=1, conditions=[{"type": "Complete", "status": "True"}]))
    job["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    pods = (group_pod(job, phase="Succeeded", message=report(**{"sw-0": _done(0)})),)
    d = reconcile(trial_view(obs, "sw-0", job, pods), T0)
    assert d.status["phase"] == "Pending" and not d.create and not d.delete


def test_suspending_a_member_leaves_its_group_and_resumed_it_runs_alone():
    obs = grouped_sweep()
    job = _job(obs, active=1)
    view = trial_view(obs, "sw-1", job, (group_pod(job),))
    view.resource["spec"]["suspend"] = True
    d = reconcile(view, T0)
    assert not d.delete  # the sweep's Job: the sweep recreates it without this trial
    st = d.status
    assert st["phase"] == "Suspended" and cond(st, "Grouped")["status"] == "False"
    assert cond(st, "Grouped")["reason"] == "LeftGroup"
    resumed = copy.deepcopy(view.resource)
    resumed["spec"]["suspend"] = False
    resumed["status"] = st
    d = reconcile(Observed(resource=resumed, group_job=job), T0)
    assert [c["kind"] for c in d.create] == ["ConfigMap", "Service", "NetworkPolicy", "Job"]
    assert d.create[-1]["metadata"]["name"] == "sw-1-run" and d.status["jobName"] == "sw-1-run"


def test_group_report_parsing_is_bounded_and_tolerant():
    members = {f"t-{i}": {"final": {"l0": i, "secret_blob": "x" * 10}} for i in range(100)}
    members["bad"] = "not a dict"
    members["err"] = {"error": "boom\nerror: the real line\n"}
    out = outcome.parse(json.dumps({"members": members}))
    assert out is not None and out.members is not None and out.error is None
    assert len(out.members) == outcome.MAX_MEMBERS and "bad" not in out.members
    assert out.members["t-3"].final == {"l0": 3}
    out = outcome.parse(json.dumps({"members": {"err": members["err"]}}))
    assert out.members["err"].error == "error: the real line"
    assert outcome.group_report(()) is None


def test_a_group_pods_event_reconciles_the_sweep_and_every_member():
    import asyncio

    import kopf

    from saeops.operator.handlers import Operator, build_registry

    obs = grouped_sweep()
    pod = group_pod(child(obs, "Job"))
    op = Operator(1.0)
    seen: list[tuple[str, str, str]] = []

    async def record(kind: str, namespace: str, name: str, retry: bool = False) -> None:
        seen.append((kind, namespace, name))

    op.reconcile_key = record  # type: ignore[method-assign]
    (handler,) = [h for h in build_registry(op)._watching.get_all_handlers() if h.selector.any_name == "pods"]
    body = kopf.Body(pod)  # kopf hands labels and annotations as read-only mapping views
    asyncio.run(handler.fn(labels=body.metadata.labels, annotations=body.metadata.annotations, namespace="default"))
    assert seen == [("SAESweep", "default", "sw")] + [("SAETrainingRun", "default", f"sw-{i}") for i in range(4)]


def test_a_grouped_trial_counts_the_group_jobs_failed_pods_as_its_restarts():
    obs = grouped_sweep()
    job = _job(obs, active=1, failed=2)  # the Job controller has replaced two failed pods
    st = reconcile(trial_view(obs, "sw-1", job, (group_pod(job),)), T0).status
    assert st["phase"] == "Running" and st["restarts"] == 2
    fresh = _job(obs, active=1)  # a recreated Job starts its count again; the trial's stays
    view = trial_view(obs, "sw-1", fresh, (group_pod(fresh),))
    view.resource["status"] = copy.deepcopy(st)
    d = reconcile(view, later(60))
    assert d.status is None  # nothing to patch: restarts stays 2 (a status with 0 would be a patch)
