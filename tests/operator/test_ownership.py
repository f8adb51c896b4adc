"""Owned children only, and no run stuck: pure reconcile of NameConflict, refusals by the API
server, spec failures retried on the next generation, and the kind in every child's name."""

from __future__ import annotations

import copy

import pytest

from saeops.api import names
from saeops.operator.reconcile import reconcile
from saeops.operator.state import Observed, Rejection

from .helpers import T0, cache_doc, cond, quickstart, step


def _foreign(obj: dict) -> dict:
    """`obj` as someone else's: same name, no owner reference to our resource."""
    other = copy.deepcopy(obj)
    other["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "not-ours"}]
    other["metadata"]["uid"] = "uid-foreign"
    return other


def test_child_names_carry_the_kind():
    run, cache = quickstart(), cache_doc("quickstart")
    run_children = {c["kind"]: c["metadata"]["name"] for c in reconcile(Observed(resource=run), T0).create}
    cache_children = {c["kind"]: c["metadata"]["name"] for c in reconcile(Observed(resource=cache), T0).create}
    assert run_children == {"ConfigMap": "quickstart-run-spec", "Service": "quickstart-run",
                            "NetworkPolicy": "quickstart-run", "Job": "quickstart-run"}
    assert cache_children == {"ConfigMap": "quickstart-cache-spec", "Service": "quickstart-cache",
                              "NetworkPolicy": "quickstart-cache", "Job": "quickstart-cache"}
    for kind, child in run_children.items():
        assert child != cache_children[kind]


@pytest.mark.parametrize("field", ["job", "configmap", "service", "networkpolicy"])
def test_a_same_named_object_we_do_not_own_is_never_touched(field):
    _, obs = step(Observed(resource=quickstart()))
    theirs = _foreign(getattr(obs, field))
    res = copy.deepcopy(obs.resource)
    res["status"] = {}  # as if new: the operator has not created anything yet
    kw = {f: None for f in ("job", "configmap", "service", "networkpolicy")}
    kw[field] = theirs
    d = reconcile(Observed(resource=res, **kw), T0)
    assert not d.create and not d.delete  # neither adopted, replaced nor deleted
    failed = cond(d.status, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "NameConflict"
    assert theirs["metadata"]["name"] in failed["message"] and theirs["kind"] in failed["message"]
    assert d.status["phase"] == "Failed" and [e.reason for e in d.events] == ["NameConflict"]


def test_name_conflict_deletes_only_what_we_own_and_is_terminal_for_the_generation():
    _, obs = step(Observed(resource=quickstart()))
    mixed = Observed(resource=obs.resource, configmap=obs.configmap, service=_foreign(obs.service), job=obs.job,
                     networkpolicy=obs.networkpolicy)
    d, after = step(mixed)
    deleted = {(r.kind, r.name, r.uid) for r in d.delete}
    assert deleted == {("ConfigMap", "quickstart-run-spec", "uid-configmap-quickstart-run-spec"),
                       ("NetworkPolicy", "quickstart-run", "uid-networkpolicy-quickstart-run"),
                       ("Job", "quickstart-run", "uid-job-quickstart-run")}
    assert cond(d.status, "Failed")["reason"] == "NameConflict"
    # Terminal: later passes neither create nor delete nor rewrite the status.
    again = reconcile(Observed(resource=after.resource, service=_foreign(obs.service)), T0)
    assert again.changes_nothing
    # A new generation (the user fixed things) tries again from scratch.
    res = copy.deepcopy(after.resource)
    res["metadata"]["generation"] = 2
    d = reconcile(Observed(resource=res), T0)
    assert [c["kind"] for c in d.create] == ["ConfigMap", "Service", "NetworkPolicy", "Job"]
    assert cond(d.status, "Failed")["status"] == "False" and cond(d.status, "Failed")["reason"] == "SpecChanged"
    assert "completionTime" not in d.status and d.status["phase"] == "Pending"


def test_foreign_object_reported_by_a_409_fails_the_run():
    res = quickstart()
    taken = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "quickstart-run", "namespace": "default",
                                                                   "uid": "u-1"}}
    d = reconcile(Observed(resource=res, foreign=(taken,)), T0)
    assert cond(d.status, "Failed")["reason"] == "NameConflict" and not d.create and not d.delete
    assert "Job default/quickstart-run" in cond(d.status, "Failed")["message"]
    # One we own (a race of two passes) is no conflict.
    mine = copy.deepcopy(taken)
    mine["metadata"]["ownerReferences"] = [names.owner_reference(res)]
    assert reconcile(Observed(resource=res, foreign=(mine,)), T0).status.get("phase") != "Failed"


def test_a_pod_outside_the_job_is_not_a_child_and_an_unowned_job_has_no_pods():
    _, obs = step(Observed(resource=quickstart()))
    theirs = _foreign(obs.job)
    d = reconcile(Observed(resource=obs.resource, configmap=obs.configmap, service=obs.service,
                           networkpolicy=obs.networkpolicy, job=theirs), T0)
    assert cond(d.status, "Failed")["reason"] == "NameConflict"
    assert not any(r.kind == "Job" for r in d.delete)


@pytest.mark.parametrize(("code", "reason"), [(422, "InvalidSpec"), (400, "InvalidSpec"), (403, "Rejected"),
                                              (404, "Rejected")])
def test_a_refused_create_fails_the_run_in_one_pass(code, reason):
    message = ('Job.batch "quickstart-run" is invalid: spec.template.spec.containers[0].env[9].valueFrom.'
               'secretKeyRef.name: Invalid value: "S3_Creds": a lowercase RFC 1123 subdomain must consist of ...')
    _, obs = step(Observed(resource=quickstart()))
    rejected = Observed(resource=quickstart(), configmap=obs.configmap, service=obs.service,
                        networkpolicy=obs.networkpolicy, rejection=Rejection("Job", "quickstart-run", code, message))
    d, after = step(rejected)
    failed = cond(d.status, "Failed")
    assert failed["status"] == "True" and failed["reason"] == reason
    assert message in failed["message"] and f"HTTP {code}" in failed["message"]
    assert not d.create and d.status["phase"] == "Failed"
    # Every owned child goes (a fixed spec gets fresh ones), and nothing is retried.
    assert {r.kind for r in d.delete} == {"ConfigMap", "Service", "NetworkPolicy"}
    assert reconcile(Observed(resource=after.resource), T0).changes_nothing


def test_refused_messages_are_one_line():
    rej = Rejection("Job", "x-run", 422, "line one\nline two\n\tline three")
    d = reconcile(Observed(resource=quickstart(), rejection=rej), T0)
    assert "\n" not in cond(d.status, "Failed")["message"]
    assert cond(d.status, "Failed")["message"].endswith("line one line two line three")


def test_invalid_spec_deletes_every_owned_child_and_a_conflict_comes_first():
    _, obs = step(Observed(resource=quickstart()))
    res = copy.deepcopy(obs.resource)
    res["spec"]["sae"]["topK"] = -1
    res["metadata"]["generation"] = 2
    owned = {"configmap": obs.configmap, "service": obs.service, "networkpolicy": obs.networkpolicy, "job": obs.job}
    d = reconcile(Observed(resource=res, **owned), T0)
    assert cond(d.status, "Failed")["reason"] == "InvalidSpec"
    assert {r.kind for r in d.delete} == {"ConfigMap", "Service", "NetworkPolicy", "Job"}
    d = reconcile(Observed(resource=res, **{**owned, "service": _foreign(obs.service)}), T0)
    assert cond(d.status, "Failed")["reason"] == "NameConflict"
    assert {r.kind for r in d.delete} == {"ConfigMap", "NetworkPolicy", "Job"}


def test_a_namesake_seen_twice_is_named_once():
    _, obs = step(Observed(resource=quickstart()))
    theirs = _foreign(obs.job)
    d = reconcile(Observed(resource=quickstart(), job=theirs, foreign=(theirs,)), T0)
    assert cond(d.status, "Failed")["message"].count("quickstart-run") == 1
