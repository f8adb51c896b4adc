"""A sweep's groups, sweep side: trials that share one stream get one Job the sweep owns, whose
members follow the trials (suspended, deleted, finished), within parallelTrials."""

from __future__ import annotations

import copy
import json

from saeops.api import names, parse_resource
from saeops.operator.podspec import SPEC_DIR, runtime_document
from saeops.operator.state import ChildRef, ObservedSweep
from saeops.operator.sweep import reconcile_sweep

from .groups import (
    apply_sweep,
    child,
    grouped_sweep,
    members,
    replace_trial,
    set_job_status,
    step_sweep,
)
from .helpers import T0, cond, sweep_doc

GROUP = names.group_name("sw", [0, 1, 2, 3])
JOB = names.group_job_name(GROUP)


def _names(objs):
    return [o["metadata"]["name"] for o in objs]


def test_trials_sharing_a_stream_are_created_as_one_group():
    d, obs = step_sweep(ObservedSweep(resource=sweep_doc(max_trials=4, parallel=4, grouped=True)))
    assert _names(d.create) == ["sw-0", "sw-1", "sw-2", "sw-3"]
    assert {t["metadata"]["labels"][names.LABEL_GROUP] for t in d.create} == {GROUP}
    assert d.status["trials"] == 4 and d.status["trialsRunning"] == 4
    for trial in d.create:
        parse_resource(trial)  # still valid runs, each with its own output prefix
    assert d.create[2]["spec"]["output"]["storageUri"].endswith("/sw-2")
    # The next pass (trials have uids now) creates the group's children, owned by the sweep.
    d, obs = step_sweep(obs)
    assert [c["kind"] for c in d.create] == ["ConfigMap", "Service", "NetworkPolicy", "Job"]
    sweep_uid = obs.resource["metadata"]["uid"]
    for c in d.create:
        assert c["metadata"]["ownerReferences"][0]["uid"] == sweep_uid
        assert c["metadata"]["labels"][names.LABEL_GROUP] == GROUP
    cm, svc, netpol, job = d.create
    assert job["metadata"]["name"] == JOB and members(job) == {f"sw-{i}": f"uid-saetrainingrun-sw-{i}" for i in range(4)}
    assert sorted(cm["data"]) == ["member-000.json", "member-001.json", "member-002.json", "member-003.json"]
    for i, trial in enumerate(obs.trials):
        assert json.loads(cm["data"][names.member_file(i)]) == runtime_document(trial)
        assert json.loads(cm["data"][names.member_file(i)])["metadata"]["uid"] == f"uid-saetrainingrun-sw-{i}"
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-2:] == ["--group", SPEC_DIR] and "--spec" not in command
    selector = svc["spec"]["selector"]
    assert selector[names.LABEL_GROUP] == GROUP and netpol["spec"]["podSelector"]["matchLabels"] == selector
    assert all(job["spec"]["template"]["metadata"]["labels"][k] == v for k, v in selector.items())
    assert [e.reason for e in d.events] == ["GroupStarted"]
    assert reconcile_sweep(obs, T0).changes_nothing  # and then quiet


def test_parallel_trials_is_a_budget_of_trials_and_max_trials_caps_a_group():
    d, obs = step_sweep(ObservedSweep(resource=sweep_doc(max_trials=4, parallel=3, grouped=True, max_group=2)))
    assert _names(d.create) == ["sw-0", "sw-1", "sw-2"]
    labels = [t["metadata"]["labels"].get(names.LABEL_GROUP) for t in d.create]
    assert labels == [names.group_name("sw", [0, 1])] * 2 + [None]  # a group of one is a trial of its own
    d, obs = step_sweep(obs)
    assert [c["kind"] for c in d.create] == ["ConfigMap", "Service", "NetworkPolicy", "Job"]
    assert len(members(child(obs, "Job"))) == 2
    assert not reconcile_sweep(obs, T0).create  # 3 trials running: no room for sw-3


def test_grouping_disabled_gives_every_trial_its_own_job():
    d, obs = step_sweep(ObservedSweep(resource=sweep_doc(max_trials=4, parallel=4, grouped=False)))
    assert all(names.LABEL_GROUP not in t["metadata"]["labels"] for t in d.create)
    assert reconcile_sweep(obs, T0).changes_nothing  # no group children


def test_a_suspended_member_leaves_and_the_job_is_recreated_with_the_rest():
    obs = grouped_sweep()
    job, cm = child(obs, "Job"), child(obs, "ConfigMap")
    trial = copy.deepcopy(obs.trials[1])
    trial["spec"]["suspend"] = True
    d, obs = step_sweep(replace_trial(obs, trial))
    assert set(d.delete) == {ChildRef("batch/v1", "Job", JOB, job["metadata"]["uid"]),
                             ChildRef("v1", "ConfigMap", cm["metadata"]["name"], cm["metadata"]["uid"])}
    assert "sw-1 left" in d.events[0].message and not d.create
    d, obs = step_sweep(obs)  # the old ones are gone: the same names, the members left
    assert [c["kind"] for c in d.create] == ["ConfigMap", "Job"]  # Service and NetworkPolicy stay
    assert list(members(child(obs, "Job"))) == ["sw-0", "sw-2", "sw-3"]
    assert sorted(child(obs, "ConfigMap")["data"]) == ["member-000.json", "member-001.json", "member-002.json"]
    assert reconcile_sweep(obs, T0).changes_nothing
    # Resumed, it runs alone (its Grouped condition says it left): the group's Job is untouched.
    trial = copy.deepcopy(trial)
    trial["spec"]["suspend"] = False
    trial["status"] = {"phase": "Pending", "conditions": [{"type": "Grouped", "status": "False", "reason": "LeftGroup"}]}
    assert reconcile_sweep(replace_trial(obs, trial), T0).changes_nothing


def test_a_deleted_member_leaves_and_the_sweep_recreates_it_on_its_own():
    obs = grouped_sweep()
    gone = ObservedSweep(resource=obs.resource, trials=tuple(t for t in obs.trials if t["metadata"]["name"] != "sw-2"),
                         children=obs.children)
    d, obs = step_sweep(gone)
    assert {r.kind for r in d.delete} == {"Job", "ConfigMap"}
    assert _names([c for c in d.create if c["kind"] == "SAETrainingRun"]) == ["sw-2"]  # a fresh trial, alone
    assert names.LABEL_GROUP not in d.create[0]["metadata"]["labels"]
    d, obs = step_sweep(obs)
    assert list(members(child(obs, "Job"))) == ["sw-0", "sw-1", "sw-3"]


def test_every_member_gone_stops_the_job_without_recreating_it():
    obs = grouped_sweep()
    suspended = []
    for t in obs.trials:
        t = copy.deepcopy(t)
        t["spec"]["suspend"] = True
        suspended.append(t)
    d, obs = step_sweep(ObservedSweep(resource=obs.resource, trials=tuple(suspended), children=obs.children))
    assert {r.kind for r in d.delete} == {"Job", "ConfigMap"} and "no member is left" in d.events[0].message
    d, obs = step_sweep(obs)
    assert not d.create and not d.delete


def test_a_finished_job_stays_until_its_members_have_read_it():
    obs = set_job_status(grouped_sweep(), succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    assert reconcile_sweep(obs, T0).changes_nothing  # members still Running: they read the pods next
    done = []
    for t in obs.trials:
        t = copy.deepcopy(t)
        t["status"] = {"phase": "Succeeded", "metrics": {"explained_variance": "0.5", "l0": "10"}}
        done.append(t)
    obs = ObservedSweep(resource=obs.resource, trials=tuple(done), children=obs.children)
    d, obs = step_sweep(obs)
    assert not d.delete and d.status["phase"] == "Succeeded" and d.status["trialsSucceeded"] == 4


def test_a_failed_job_is_not_recreated_by_the_sweep():
    obs = set_job_status(grouped_sweep(), failed=3, conditions=[{"type": "Failed", "status": "True",
                                                                  "reason": "BackoffLimitExceeded"}])
    d = reconcile_sweep(obs, T0)
    assert not d.delete and not d.create  # the Job controller retried; the members fail from its pods


def test_a_foreign_object_holding_a_group_child_name_fails_the_sweep():
    obs = grouped_sweep()
    squatter = copy.deepcopy(child(obs, "Job"))
    squatter["metadata"]["ownerReferences"] = []
    squatter["metadata"]["uid"] = "theirs"
    obs = ObservedSweep(resource=obs.resource, trials=obs.trials,
                        children=(*(c for c in obs.children if c["kind"] != "Job"), squatter))
    d = reconcile_sweep(obs, T0)
    failed = cond(d.status, "Failed")
    assert failed["reason"] == "NameConflict" and f"Job {JOB}" in failed["message"] and not d.delete


def test_a_group_child_name_taken_at_create_fails_the_sweep():
    obs = ObservedSweep(resource=sweep_doc(max_trials=2, parallel=2, grouped=True))
    d, obs = step_sweep(obs)
    d = reconcile_sweep(obs, T0)
    job = next(c for c in d.create if c["kind"] == "Job")
    taken = copy.deepcopy(job)
    taken["metadata"]["ownerReferences"] = []
    taken["metadata"]["uid"] = "theirs"
    d = reconcile_sweep(ObservedSweep(resource=obs.resource, trials=obs.trials, foreign=(taken,)), T0)
    assert cond(d.status, "Failed")["reason"] == "NameConflict" and not d.create


def test_a_group_reading_a_cache_waits_for_it_and_the_members_get_its_uri():
    doc = sweep_doc(max_trials=2, parallel=2, grouped=True)
    del doc["spec"]["trialTemplate"]["dataset"]
    doc["spec"]["trialTemplate"]["activations"] = {"cacheRef": "acts"}
    _, obs = step_sweep(ObservedSweep(resource=doc))
    d = reconcile_sweep(obs, T0)
    assert not d.create and d.requeue_after  # no cache yet
    cache = {"apiVersion": "saeops.io/v1alpha1", "kind": "ActivationCache", "metadata": {"name": "acts"},
             "spec": {"output": {"storageUri": "s3://bucket/caches/acts"}}, "status": {"phase": "Succeeded"}}
    obs = ObservedSweep(resource=obs.resource, trials=obs.trials, caches=(cache,))
    d = reconcile_sweep(obs, T0)
    cm = next(c for c in d.create if c["kind"] == "ConfigMap")
    member = json.loads(cm["data"]["member-001.json"])
    assert member["spec"]["activations"] == {"cacheUri": "s3://bucket/caches/acts"}
    assert apply_sweep(obs, d).children


def test_trials_on_different_streams_get_different_groups():
    doc = sweep_doc(max_trials=4, parallel=4, grouped=True)
    doc["spec"]["parameters"] = [{"name": "sae.topK", "categorical": [16, 32]},
                                 {"name": "trainer.seed", "categorical": [1, 2]}]  # the seed orders the stream
    d, obs = step_sweep(ObservedSweep(resource=doc))
    labels = {t["metadata"]["name"]: t["metadata"]["labels"][names.LABEL_GROUP] for t in d.create}
    assert labels == {"sw-0": names.group_name("sw", [0, 2]), "sw-2": names.group_name("sw", [0, 2]),
                      "sw-1": names.group_name("sw", [1, 3]), "sw-3": names.group_name("sw", [1, 3])}
    d, obs = step_sweep(obs)
    jobs = [c for c in d.create if c["kind"] == "Job"]
    assert [list(members(j)) for j in jobs] == [["sw-0", "sw-2"], ["sw-1", "sw-3"]]
