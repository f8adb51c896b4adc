"""A run's outcome from its pods' termination messages: final metrics, the one-line error of a
failed run, caches, preemptions; hostile or broken messages never crash or bloat the status."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saeops.operator import outcome
from saeops.operator.reconcile import reconcile
from saeops.operator.state import Observed

from .helpers import T0, cache_doc, cond, finished, job_with, pod, quickstart, step


def _running(doc=None) -> Observed:
    _, obs = step(Observed(resource=doc or quickstart()))
    _, obs = step(Observed(**{**obs.__dict__, "job": job_with(obs.job, active=1), "pods": (pod("p0", job=obs.job),)}))
    return obs


def _with(obs: Observed, **kw) -> Observed:
    return Observed(**{**obs.__dict__, **kw})


def test_parse_the_contract_forms():
    done = outcome.parse('{"final": {"l0": 31.9, "explained_variance": 0.8, "tokens": 4096}, "lastCheckpoint": null}')
    assert done.final == {"l0": 31.9, "explained_variance": 0.8, "tokens": 4096} and done.last_checkpoint is None
    assert outcome.parse('{"cache": {"tokens": 8192, "shards": 2}}').cache == {"tokens": 8192, "shards": 2}
    assert outcome.parse('{"preempted": true, "step": 12}').preempted_step == 12
    assert outcome.parse("error: spec.model.path: /models/x does not exist").error == \
        "error: spec.model.path: /models/x does not exist"
    assert outcome.parse("") is None and outcome.parse(None) is None and outcome.parse(" \n ") is None


def test_one_line_from_a_log_tail():
    tail = "Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: CUDA out of memory\n"
    assert outcome.one_line(tail) == "RuntimeError: CUDA out of memory"
    both = "error: first\nnoise\nerror: spec.trainer.lr: must be positive\nmore noise\n"
    assert outcome.one_line(both) == "error: spec.trainer.lr: must be positive"
    long = "error: " + "x" * 5000
    assert len(outcome.one_line(long)) == outcome.MAX_LINE and outcome.one_line(long).endswith("...")
    assert outcome.one_line("error: a\x1b[31mred\x00") == "error: a[31mred"


def test_numbers_are_filtered():
    doc = {"final": {"l0": 1.0, "nan": float("nan"), "BadKey": 1, "ok_flag": True, "text": "x",
                     **{f"k{i}": i for i in range(40)}}}
    final = outcome.parse(json.dumps(doc)).final
    assert final["l0"] == 1.0 and "BadKey" not in final and "ok_flag" not in final and "text" not in final
    assert len(final) <= 16


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.one_of(st.text(max_size=4096), st.binary(max_size=512).map(lambda b: b.decode("latin-1")),
                 st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                              max_leaves=20).map(json.dumps)))
def test_any_message_parses_without_raising(text):
    out = outcome.parse(text)
    if out is not None and out.error is not None:
        assert "\n" not in out.error and len(out.error) <= outcome.MAX_LINE
    obs = _running()
    pods = (pod("p0", "Failed", message=text, job=obs.job),)
    d = reconcile(_with(obs, job=finished(obs.job, "Failed"), pods=pods), T0)
    assert d.status["restarts"] == 1


def test_failed_run_reports_the_pods_error_line_after_max_restarts():
    doc = quickstart()
    doc["spec"]["failurePolicy"] = {"maxRestarts": 1}
    obs = _running(doc)
    line = "error: spec.model.path: /models/missing does not exist in the image; mount it or use package:..."
    log_tail = f"INFO loading\n{line}\n"
    pods = (pod("p1", "Failed", index=1, message="error: rank 1 lost rank 0", job=obs.job),
            pod("p0", "Failed", index=0, message=log_tail, job=obs.job))
    d, obs = step(_with(obs, job=finished(obs.job, "Failed", "BackoffLimitExceeded"), pods=pods))
    running = cond(d.status, "Running")
    assert running["reason"] == "JobFailed" and line in running["message"] and "restart 1 of 1" in running["message"]
    d, obs = step(obs)  # the Job is recreated
    pods = (pod("p0b", "Failed", index=0, message=line, job=obs.job),)
    d, obs = step(_with(obs, job=finished(obs.job, "Failed", "BackoffLimitExceeded"), pods=pods))
    failed = cond(d.status, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "BackoffLimitExceeded"
    assert failed["message"] == line  # rank 0's line, as written
    assert d.status["restarts"] == 1


def test_failed_run_without_a_message_says_what_it_knows():
    doc = quickstart()
    doc["spec"]["failurePolicy"] = {"maxRestarts": 0}
    obs = _running(doc)
    d = reconcile(_with(obs, job=finished(obs.job, "Failed", "DeadlineExceeded"), pods=(pod("p0", "Failed", job=obs.job),)), T0)
    assert "DeadlineExceeded" in cond(d.status, "Failed")["message"] and "maxRestarts=0" in cond(d.status, "Failed")["message"]


def test_a_cache_reports_its_summary():
    obs = _running(cache_doc())
    pods = (pod("c0", "Succeeded", message='{"cache": {"tokens": 100000, "shards": 4, "bytes_written": 1.5e9}}',
                job=obs.job),)
    d = reconcile(_with(obs, job=finished(obs.job, "Complete"), pods=pods), T0)
    assert d.status["metrics"] == {"bytes_written": "1500000000", "shards": "4", "tokens": "100000"}


def test_a_reported_checkpoint_outside_the_runs_storage_is_ignored():
    obs = _running()
    message = json.dumps({"final": {"l0": 3.0}, "lastCheckpoint": "s3://someone-else/secret/checkpoints/step-1"})
    d = reconcile(_with(obs, job=finished(obs.job, "Complete"), pods=(pod("p0", "Succeeded", message=message, job=obs.job),)), T0)
    assert d.status["metrics"]["l0"] == "3" and "lastCheckpoint" not in d.status


def test_final_metrics_that_arrive_after_success_are_filled_in():
    obs = _running()
    d, obs = step(_with(obs, job=finished(obs.job, "Complete"), pods=()))
    assert d.status["phase"] == "Succeeded" and "l0" not in d.status.get("metrics", {})
    message = json.dumps({"final": {"l0": 30.0, "explained_variance": 0.7}})
    d = reconcile(_with(obs, pods=(pod("p0", "Succeeded", message=message, job=obs.job),)), T0)
    assert d.status["metrics"]["l0"] == "30" and d.status["metrics"]["explained_variance"] == "0.7"


@pytest.mark.parametrize("message", ['{"preempted": true, "step": 7}', "error: boom"])
def test_a_disrupted_pod_is_not_counted_whatever_it_wrote(message):
    obs = _running()
    pods = (pod("p0", "Failed", disrupted=True, message=message, job=obs.job),)
    d = reconcile(_with(obs, job=finished(obs.job, "Failed"), pods=pods), T0)
    assert d.status["restarts"] == 0 and cond(d.status, "Running")["reason"] == "Preempted"


def test_preempted_message_explains_a_failure():
    pods = (pod("p0", "Failed", message='{"preempted": true, "step": 7}'),)
    assert outcome.failure_line(pods) == "preempted at step 7"
