"""Every transition of SAETrainingRun / ActivationCache, as pure function calls."""

from __future__ import annotations

import copy
import json

import pytest

from saeops.operator.reconcile import reconcile
from saeops.operator.state import ChildRef, Observed

from .helpers import (
    T0,
    apply,
    assert_idempotent,
    cache_doc,
    cond,
    finished,
    job_with,
    later,
    pod,
    quickstart,
    run_on_cache,
    step,
)

JOB_REF = ChildRef("batch/v1", "Job", "quickstart-run", "uid-job-quickstart-run")


def _started(doc=None, now=T0) -> Observed:
    """After the first reconcile: ConfigMap, Service, Job exist."""
    _, obs = step(Observed(resource=doc or quickstart()), now)
    return obs


def _running(doc=None) -> Observed:
    obs = _started(doc)
    obs = Observed(**{**obs.__dict__, "job": job_with(obs.job, active=1), "pods": (pod("quickstart-0-abc", job=obs.job),)})
    _, obs = step(obs)
    return obs


def _with(obs: Observed, **kw) -> Observed:
    return Observed(**{**obs.__dict__, **kw})


@pytest.mark.parametrize("make", [quickstart, cache_doc], ids=["run", "cache"])
def test_first_reconcile_creates_children_with_unknown_conditions(make):
    d = reconcile(Observed(resource=make()), T0)
    assert [c["kind"] for c in d.create] == ["ConfigMap", "Service", "NetworkPolicy", "Job"]
    st = d.status
    assert {c["type"] for c in st["conditions"]} == {"Admitted", "Running", "Succeeded", "Failed", "Suspended"}
    assert cond(st, "Succeeded")["status"] == "Unknown" and cond(st, "Failed")["status"] == "Unknown"
    assert cond(st, "Admitted")["reason"] == "JobCreated"
    assert st["phase"] == "Pending" and st["observedGeneration"] == 1 and st["startTime"] == "2025-01-01T00:00:00Z"
    assert [e.reason for e in d.events] == ["JobCreated"]
    for c in st["conditions"]:
        assert c["reason"][0].isupper() and " " not in c["reason"]


def test_idempotent_at_every_stage():
    obs = assert_idempotent(Observed(resource=quickstart()))
    obs = assert_idempotent(_with(obs, job=job_with(obs.job, active=1), pods=(pod("p0"),)))
    assert obs.resource["status"]["phase"] == "Running"
    assert_idempotent(_with(obs, job=finished(obs.job, "Complete")))


def test_running_progress_and_metrics_are_strings():
    obs = _started()
    scraped = {"saeops_tokens_processed": 100000.0, "saeops_tokens_total": 400000.0,
               "saeops_l0": 31.5, "saeops_explained_variance": 0.8123456, "saeops_tokens_per_second": 1000.0}
    d = reconcile(_with(obs, job=job_with(obs.job, active=1), pods=(pod("p0"),), metrics=scraped), T0)
    st = d.status
    assert st["phase"] == "Running" and cond(st, "Running")["status"] == "True"
    assert st["progress"]["tokens"] == 100000 and st["progress"]["percent"] == "25.0"
    assert st["progress"]["eta"] == "2025-01-01T00:05:00Z"
    assert st["metrics"] == {"l0": "31.5", "explained_variance": "0.8123", "tokens_per_second": "1000"}
    assert all(isinstance(v, str) for v in st["metrics"].values())


def test_running_reports_the_latest_checkpoint_from_metrics():
    obs = _started()
    running = _with(obs, job=job_with(obs.job, active=1), pods=(pod("p0", job=obs.job),))
    d = reconcile(_with(running, metrics={"saeops_checkpoint_step": 100.0, "saeops_tokens_processed": 5.0}), T0)
    assert d.status["lastCheckpoint"] == "s3://bucket/runs/quickstart/checkpoints/step-00000100"
    for scraped in (None, {"saeops_checkpoint_step": 0.0}, {"saeops_checkpoint_step": float("nan")},
                    {"saeops_checkpoint_step": 2.5}):
        d = reconcile(_with(running, metrics=scraped), T0)
        assert "lastCheckpoint" not in d.status, scraped  # nothing recorded yet: nothing claimed


def test_job_success_writes_final_metrics_from_the_termination_message():
    obs = _running()
    final = {"l0": 32.0, "explained_variance": 0.91, "mse": 0.01, "dead_fraction": 0.0, "tokens": 400000, "seconds": 12.5}
    ckpt = "s3://bucket/runs/quickstart/checkpoints/step-00000097"
    message = json.dumps({"final": final, "lastCheckpoint": ckpt})
    pods = (pod("q-0", "Succeeded", message=message, job=obs.job),)
    d = reconcile(_with(obs, job=finished(obs.job, "Complete"), pods=pods), later(60))
    st = d.status
    assert st["phase"] == "Succeeded" and cond(st, "Succeeded")["reason"] == "Completed"
    assert cond(st, "Failed")["status"] == "False" and cond(st, "Running")["status"] == "False"
    assert st["metrics"]["explained_variance"] == "0.91" and st["metrics"]["l0"] == "32"
    assert st["metrics"]["tokens"] == "400000" and st["metrics"]["seconds"] == "12.5"
    assert st["lastCheckpoint"] == ckpt
    assert st["artifacts"]["sae"] == "s3://bucket/runs/quickstart/sae.safetensors"
    assert st["progress"]["percent"] == "100.0" and st["completionTime"] == "2025-01-01T00:01:00Z"
    assert [e.reason for e in d.events] == ["Completed"]
    assert not d.delete  # the Job stays for its logs


def test_job_failure_restarts_then_backoff_limit():
    doc = quickstart()
    doc["spec"]["failurePolicy"] = {"maxRestarts": 1}
    obs = _running(doc)
    d, obs = step(_with(obs, job=finished(obs.job, "Failed", "BackoffLimitExceeded")))
    assert d.delete == [JOB_REF]
    assert d.status["restarts"] == 1 and cond(d.status, "Running")["reason"] == "JobFailed"
    assert [e.reason for e in d.events] == ["JobFailed"] and d.requeue_after is not None
    d, obs = step(obs)  # job gone -> recreated, restarts kept
    assert [c["kind"] for c in d.create] == ["Job"] and obs.resource["status"]["restarts"] == 1
    d, obs = step(_with(obs, job=finished(obs.job, "Failed", "BackoffLimitExceeded")))
    st = d.status
    assert st["phase"] == "Failed" and cond(st, "Failed")["reason"] == "BackoffLimitExceeded"
    assert st["restarts"] == 1 and not d.delete  # failed Job kept for its logs
    assert reconcile(obs, later(10)).changes_nothing  # terminal


def test_preempted_failed_job_is_recreated_without_counting():
    obs = _running()
    d, obs = step(_with(obs, job=finished(obs.job, "Failed"), pods=(pod("p0", "Failed", disrupted=True),)))
    assert d.delete == [JOB_REF]
    assert d.status["restarts"] == 0 and cond(d.status, "Running")["reason"] == "Preempted"
    assert [e.reason for e in d.events] == ["Preempted"]
    d, obs = step(obs)
    assert [c["kind"] for c in d.create] == ["Job"]


def test_preempted_pod_while_active_is_reported_not_counted():
    obs = _running()
    pods = (pod("p0", "Failed", disrupted=True), pod("p1", "Running"))
    d = reconcile(_with(obs, job=job_with(obs.job, active=1), pods=pods), T0)
    assert cond(d.status, "Running")["reason"] == "Preempted" and d.status["restarts"] == 0
    assert not d.delete and [e.reason for e in d.events] == ["Preempted"]


def test_deleting_job_waits():
    obs = _running()
    job = copy.deepcopy(obs.job)
    job["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    d = reconcile(_with(obs, job=job), T0)
    assert not d.create and not d.delete and d.requeue_after == 2


def test_suspend_and_resume():
    obs = _running()
    res = copy.deepcopy(obs.resource)
    res["spec"]["suspend"] = True
    res["metadata"]["generation"] = 2
    d, obs = step(_with(obs, resource=res))
    assert d.delete == [JOB_REF]
    st = d.status
    assert st["phase"] == "Suspended" and cond(st, "Suspended")["status"] == "True"
    assert cond(st, "Running")["reason"] == "Suspended" and st["startTime"] == "2025-01-01T00:00:00Z"
    assert [e.reason for e in d.events] == ["Suspended"]
    assert reconcile(obs, T0).changes_nothing
    res = copy.deepcopy(obs.resource)
    res["spec"]["suspend"] = False
    res["metadata"]["generation"] = 3
    d, obs = step(_with(obs, resource=res))
    assert [c["kind"] for c in d.create] == ["Job"]
    assert cond(d.status, "Suspended")["reason"] == "Resumed"
    assert {e.reason for e in d.events} == {"Resumed", "JobCreated"}


def test_suspended_before_start_creates_no_job():
    doc = quickstart()
    doc["spec"]["suspend"] = True
    d = reconcile(Observed(resource=doc), T0)
    assert not any(c["kind"] == "Job" for c in d.create) and d.status["phase"] == "Suspended"


def test_active_deadline():
    doc = quickstart()
    doc["spec"]["activeDeadlineSeconds"] = 100
    obs = _running(doc)
    d = reconcile(obs, later(50))
    assert d.requeue_after == 50 and not d.delete
    d, obs = step(obs, later(100))
    st = d.status
    assert st["phase"] == "Failed" and cond(st, "Failed")["reason"] == "DeadlineExceeded"
    assert d.delete == [JOB_REF]
    assert [e.reason for e in d.events] == ["DeadlineExceeded"]


def test_ttl_after_finished():
    doc = quickstart()
    doc["spec"]["ttlSecondsAfterFinished"] = 300
    obs = _running(doc)
    d, obs = step(_with(obs, job=finished(obs.job, "Complete")), later(0))
    assert d.requeue_after == 300 and not d.delete_self
    d = reconcile(obs, later(200))
    assert d.requeue_after == 100 and not d.delete_self and d.status is None
    assert reconcile(obs, later(300)).delete_self


def test_ttl_after_failure():
    doc = quickstart()
    doc["spec"]["ttlSecondsAfterFinished"] = 0
    doc["spec"]["sae"]["actFn"] = "bogus"
    d, _obs = step(Observed(resource=doc))
    assert d.delete_self


def test_invalid_spec_creates_nothing_and_names_the_field():
    doc = quickstart()
    doc["spec"]["sae"]["topK"] = -1
    d = reconcile(Observed(resource=doc), T0)
    assert not d.create
    st = d.status
    assert st["phase"] == "Failed" and cond(st, "Failed")["reason"] == "InvalidSpec"
    assert "spec.sae.topK" in cond(st, "Failed")["message"]
    assert [e.reason for e in d.events] == ["InvalidSpec"]


def test_invalid_spec_fixed_in_new_generation_runs():
    doc = quickstart()
    doc["spec"]["sae"]["topK"] = -1
    _, obs = step(Observed(resource=doc))
    res = copy.deepcopy(obs.resource)
    res["spec"]["sae"]["topK"] = 32
    res["metadata"]["generation"] = 2
    d = reconcile(_with(obs, resource=res), T0)
    assert [c["kind"] for c in d.create] == ["ConfigMap", "Service", "NetworkPolicy", "Job"]


def test_cache_not_ready_then_ready():
    run = run_on_cache()
    d, obs = step(Observed(resource=run, cache=None))
    assert not d.create and d.status["phase"] == "Waiting"
    assert cond(d.status, "CacheReady")["reason"] == "CacheNotReady" and "not found" in cond(d.status, "CacheReady")["message"]
    assert cond(d.status, "Admitted")["reason"] == "CacheNotReady" and d.requeue_after == 15
    cache = cache_doc()
    cache["status"] = {"phase": "Running"}
    d = reconcile(_with(obs, cache=cache), T0)
    assert not d.create and "phase Running" in cond(d.status, "CacheReady")["message"]
    assert not [e for e in d.events if e.reason == "CacheNotReady"]  # reason unchanged: no new event
    cache["status"] = {"phase": "Succeeded", "artifacts": {"cache": "s3://bucket/caches/acts"}}
    d = reconcile(_with(obs, cache=cache), T0)
    assert [c["kind"] for c in d.create] == ["ConfigMap", "Service", "NetworkPolicy", "Job"]
    assert cond(d.status, "CacheReady")["status"] == "True"
    assert '"cacheUri": "s3://bucket/caches/acts"' in d.create[0]["data"]["spec.json"]


def test_cache_failed_fails_the_run():
    cache = cache_doc()
    cache["status"] = {"phase": "Failed"}
    d = reconcile(Observed(resource=run_on_cache(), cache=cache), T0)
    assert not d.create and d.status["phase"] == "Failed"
    assert cond(d.status, "Failed")["reason"] == "CacheFailed" and cond(d.status, "CacheReady")["reason"] == "CacheFailed"


def test_kueue_queued_then_admitted():
    doc = quickstart()
    doc["spec"]["queueName"] = "team-a"
    d, obs = step(Observed(resource=doc))
    assert cond(d.status, "Admitted")["reason"] == "Queued"
    d = reconcile(obs, T0)
    assert d.changes_nothing
    job = copy.deepcopy(obs.job)
    job["spec"]["suspend"] = False
    d = reconcile(_with(obs, job=job_with(job, active=1), pods=(pod("p0"),)), T0)
    assert cond(d.status, "Admitted")["status"] == "True" and d.status["phase"] == "Running"


def test_missing_children_are_recreated():
    obs = _running()
    d = reconcile(_with(obs, configmap=None, service=None), T0)
    assert [c["kind"] for c in d.create] == ["ConfigMap", "Service"]


def test_deleted_resource_does_nothing():
    doc = quickstart()
    doc["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert reconcile(Observed(resource=doc), T0).changes_nothing


def test_cache_success_artifacts():
    obs = _started(cache_doc())
    d = reconcile(_with(obs, job=finished(obs.job, "Complete")), T0)
    assert d.status["artifacts"] == {"cache": "s3://bucket/caches/acts", "manifest": "s3://bucket/caches/acts/manifest.json"}


def test_apply_helper_matches_desired():
    obs = _started()
    assert obs.job is not None and obs.configmap is not None and obs.service is not None
    assert apply(obs, reconcile(obs, T0)) == obs
