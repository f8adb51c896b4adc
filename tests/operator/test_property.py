"""Property: on >= 1,000 generated specs (valid and broken), reconcile never raises; every
invalid spec ends as Failed/InvalidSpec naming a field, with no children created."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from saeops.api import KINDS
from saeops.operator.policy import ClusterPolicy
from saeops.operator.reconcile import reconcile
from saeops.operator.state import Observed, ObservedSweep, Rejection
from saeops.operator.sweep import reconcile_sweep

from .helpers import T0, cache_doc, cond, example_docs, quickstart, sweep_doc, with_server_fields

BASES = [with_server_fields(d) for d in example_docs() if d["kind"] != "SAESweep"] + [quickstart(), cache_doc()]
SWEEPS = [sweep_doc()] + [with_server_fields(d) for d in example_docs() if d["kind"] == "SAESweep"]

values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True),
    st.text(max_size=20), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from(["topk", "relu", "s3://b/x", "file:///tmp/x", "ftp://x", "", "clt", "blocks.0.hook_resid_post"]),
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, (*prefix, i)))
    return out


@st.composite
def mutated(draw, bases):
    doc = copy.deepcopy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(0, 3))):
        paths = [p for p in _paths(doc["spec"]) if p]
        path = draw(st.sampled_from(paths))
        parent = doc["spec"]
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["set", "delete", "add"]))
        if action == "delete" and isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["bogusField", "topK", "numNodes", "suspend", "cacheRef"]))] = draw(values)
        else:
            parent[path[-1]] = draw(values)
    return doc


def _valid(doc: dict) -> bool:
    """Valid for the spec models and for a cluster (e.g. no relative storageUri)."""
    cls = KINDS[doc["kind"]]
    try:
        model = cls.model_validate({**{k: doc[k] for k in ("apiVersion", "kind", "spec")},
                                    "metadata": {"name": doc["metadata"]["name"], "namespace": "default"}})
    except (ValidationError, ValueError, TypeError):
        return False
    return ClusterPolicy().check(model, "default") is None


def _aliases() -> set[str]:
    """Every manifest field name of every spec model."""
    from pydantic import BaseModel

    import saeops.api as spec_mod

    out: set[str] = set()
    for obj in vars(spec_mod).values():
        if isinstance(obj, type) and issubclass(obj, BaseModel):
            out.update(f.alias or n for n, f in obj.model_fields.items())
    return out


ALIASES = _aliases()


def _check_invalid(status: dict) -> None:
    failed = cond(status, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "InvalidSpec", failed
    where, _, text = failed["message"].partition(":")
    # Field validators give the dotted path; model validators (cross-field rules) report at
    # the model's path and name the fields in the text.
    assert where.startswith("spec"), failed["message"]
    named = where.count(".") > 0 or any(a in text for a in ALIASES)
    assert named, failed["message"]


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mutated(BASES))
def test_reconcile_never_raises_and_rejects_invalid_specs(doc):
    d = reconcile(Observed(resource=doc), T0)
    if _valid(doc):
        if not doc["spec"].get("suspend") and not (doc["spec"].get("activations") or {}).get("cacheRef"):
            assert any(c["kind"] == "Job" for c in d.create)
    else:
        assert not d.create
        _check_invalid(d.status)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mutated(SWEEPS))
def test_sweep_reconcile_never_raises(doc):
    d = reconcile_sweep(ObservedSweep(resource=doc), T0)
    if not _valid(doc):
        assert not d.create
        _check_invalid(d.status)


# ---------------------------------------------------------------- ownership and refusals
def _started_children() -> dict:
    from .helpers import step

    _, obs = step(Observed(resource=quickstart()))
    return {"configmap": obs.configmap, "service": obs.service, "networkpolicy": obs.networkpolicy, "job": obs.job,
            "resource": obs.resource}


STARTED = _started_children()
CHILD_FIELDS = ("configmap", "service", "networkpolicy", "job")


@st.composite
def worlds(draw):
    """A run after its first pass, with each child absent, ours, ours being deleted, or someone
    else's; a Job in any state; maybe a refusal from the API server or a 409 namesake."""
    res = copy.deepcopy(STARTED["resource"])
    if draw(st.booleans()):
        res["metadata"]["generation"] = 2
    kw = {}
    for f in CHILD_FIELDS:
        obj = copy.deepcopy(STARTED[f])
        state = draw(st.sampled_from(["absent", "ours", "deleting", "foreign", "no-refs"]))
        if state == "absent":
            obj = None
        elif state == "deleting":
            obj["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
        elif state == "foreign":
            obj["metadata"]["ownerReferences"] = [{"uid": "someone-else", "kind": "X", "name": "x", "apiVersion": "v1"}]
            obj["metadata"]["uid"] = f"foreign-{f}"
        elif state == "no-refs":
            obj["metadata"].pop("ownerReferences")
            obj["metadata"]["uid"] = f"foreign-{f}"
        kw[f] = obj
    if kw["job"] is not None:
        kw["job"]["status"] = draw(st.sampled_from([
            {}, {"active": 1}, {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
            {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}]))
    if draw(st.booleans()):
        code = draw(st.sampled_from([400, 403, 404, 422]))
        kw["rejection"] = Rejection("Job", "quickstart-run", code, draw(st.text(max_size=50)))
    if draw(st.booleans()):
        kw["foreign"] = ({"kind": "Job", "metadata": {"name": "quickstart-run", "uid": "foreign-409"}},)
    return Observed(resource=res, **kw)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(worlds())
def test_foreign_objects_are_never_touched_and_refusals_end_the_run(obs):
    d = reconcile(obs, T0)
    assert reconcile(obs, T0) == d  # pure
    foreign_uids = {o["metadata"]["uid"] for o in (getattr(obs, f) for f in CHILD_FIELDS)
                    if o is not None and o["metadata"]["uid"].startswith("foreign")}
    assert not {ref.uid for ref in d.delete} & foreign_uids, "deleted an object it does not own"
    assert all(ref.uid for ref in d.delete), "every delete is conditional on the uid it saw"
    if foreign_uids or obs.foreign:
        assert not d.create
        assert cond(d.status, "Failed")["reason"] == "NameConflict"
    elif obs.rejection is not None:
        assert not d.create
        failed = cond(d.status, "Failed")
        assert failed["reason"] == ("InvalidSpec" if obs.rejection.code in (400, 422) else "Rejected")
        assert f"HTTP {obs.rejection.code}" in failed["message"]
