"""Pure reconcile of an SAETrainingRun or ActivationCache: observed state -> desired changes.

No I/O and no clock: `now` is passed in, so every transition is a plain function call in
the tests, and the handlers are thin glue that read, call this, and apply the result.

Only owned children are touched: an object holding a child's name whose ownerReferences do
not name this resource's uid is never adopted, patched or deleted; the resource fails with
`NameConflict` instead.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from saeops.operator import grouprun, lifecycle
from saeops.operator.policy import ClusterPolicy
from saeops.operator.runpass import RUN_KINDS, RunPass
from saeops.operator.state import Desired, Observed, Rejection

Obj = dict[str, Any]


def describe(obj: Obj) -> str:
    """`Kind namespace/name` of an object, for messages."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    ns = meta.get("namespace")
    return f"{obj.get('kind', 'object')} {ns + '/' if ns else ''}{meta.get('name', '?')}"


def rejection_reason(code: int) -> str:
    """InvalidSpec when the server says the object is invalid (400, 422), else Rejected."""
    return "InvalidSpec" if code in (400, 422) else "Rejected"


def rejection_message(rej: Rejection) -> str:
    text = " ".join(rej.message.split())
    return f"the API server refused {rej.kind} {rej.name} (HTTP {rej.code}): {text}"


def reconcile(observed: Observed, now: datetime, policy: ClusterPolicy | None = None) -> Desired:
    """Reconcile a run or cache. Pure: same inputs, same output; never raises on bad specs."""
    r = RunPass(observed, now, policy or ClusterPolicy())
    if r.res.get("kind") not in RUN_KINDS:
        r.fail("InvalidSpec", f"kind: expected one of {', '.join(RUN_KINDS)}")
        return r.finish()
    if r.meta.get("deletionTimestamp"):
        return Desired()  # owner references let the garbage collector remove the children
    if r.terminal():
        r.on_terminal()
        return r.finish()
    r.retry_after_spec_failure()
    if r.foreign:
        listed = ", ".join(describe(o) for o in r.foreign)
        verb = "exists" if len(r.foreign) == 1 else "exist"
        r.fail_spec("NameConflict", f"{listed} {verb} and {'is' if verb == 'exists' else 'are'} not owned by {r.res['kind']} "
                                    f"{r.meta.get('name')}; the operator leaves it alone: rename this "
                                    "resource, or delete that object and recreate this one")
        return r.finish()
    if observed.rejection is not None:
        r.fail_spec(rejection_reason(observed.rejection.code), rejection_message(observed.rejection))
        return r.finish()
    model = r.validate()
    if model is None or not r.cache_gate() or not r.suspend_gate(model) or not r.deadline_gate(model):
        return r.finish()
    if r.group is not None:
        grouprun.follow(r, model)  # type: ignore[arg-type]  # only SAETrainingRuns have a group
        return r.finish()
    r.children(model)
    lifecycle.job(r, model)
    return r.finish()
