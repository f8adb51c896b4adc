"""The handler's error paths against an in-memory API: a refused write ends the resource in the
same pass, a status that cannot be written stops the retries for its generation, transient
errors back off exponentially, and a namesake found by a 409 is reported, not adopted."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from saeops.api import names
from saeops.operator import handlers, opmetrics
from saeops.operator.handlers import Operator, backoff_delay
from saeops.operator.kube import ApiError, matches

from .helpers import T0, cond, quickstart

Obj = dict[str, Any]
RUN = "/apis/saeops.io/v1alpha1/namespaces/default/saetrainingruns/quickstart"
JOBS = "/apis/batch/v1/namespaces/default/jobs"


class FakeKube:
    """Objects by REST path; `refuse[(method, path)]` is a list of HTTP codes to answer first."""

    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.refuse: dict[tuple[str, str], list[int]] = {}
        self.calls: list[tuple[str, str]] = []
        self._uid = 0

    def _maybe_refuse(self, method: str, path: str) -> None:
        self.calls.append((method, path))
        codes = self.refuse.get((method, path))
        if codes:
            code = codes.pop(0)
            raise ApiError(code, json.dumps({"kind": "Status", "code": code, "message": f"refused with {code}"}))

    async def get(self, path: str) -> Obj | None:
        self.calls.append(("GET", path))
        return copy.deepcopy(self.objects.get(path))

    async def list(self, path: str, labels: dict[str, str]) -> list[Obj]:
        self.calls.append(("LIST", path))
        return [copy.deepcopy(o) for p, o in self.objects.items() if p.rsplit("/", 1)[0] == path and matches(o, labels)]

    async def create(self, path: str, body: Obj) -> Obj:
        self._maybe_refuse("POST", path)
        key = f"{path}/{body['metadata']['name']}"
        if key in self.objects:
            raise ApiError(409, json.dumps({"message": "already exists"}))
        self._uid += 1
        obj = copy.deepcopy(body)
        obj["metadata"]["uid"] = f"uid-{self._uid}"
        self.objects[key] = obj
        return obj

    async def patch(self, path: str, body: Obj) -> Obj:
        self._maybe_refuse("PATCH", path)
        target = self.objects[path.removesuffix("/status")]
        target["status"] = _merge(target.get("status") or {}, body["status"])
        return target

    async def delete(self, path: str, uid: str | None = None) -> None:
        self._maybe_refuse("DELETE", path)
        self.objects.pop(path, None)


def _merge(old: Any, patch: Any) -> Any:
    if not isinstance(old, dict) or not isinstance(patch, dict):
        return patch
    out = dict(old)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(old.get(k), v)
    return out


@pytest.fixture
def op(monkeypatch: pytest.MonkeyPatch) -> Operator:
    monkeypatch.setattr(handlers.kopf, "event", lambda *a, **k: None)
    operator = Operator(interval=10.0, clock=lambda: T0)
    kube = FakeKube()
    kube.objects[RUN] = quickstart()
    operator._kube = kube  # type: ignore[assignment]
    return operator


def _run(op: Operator) -> Obj:
    return op.kube.objects[RUN]  # type: ignore[attr-defined]


def test_backoff_doubles_and_is_capped():
    assert [backoff_delay(n) for n in range(1, 6)] == [1, 2, 4, 8, 16]
    assert backoff_delay(40) == handlers.DEFAULT_MAX_BACKOFF and backoff_delay(10**6, cap=7) == 7


@pytest.mark.asyncio
async def test_a_job_refused_with_422_fails_the_run_in_one_pass_and_is_not_retried(op):
    op.kube.refuse[("POST", JOBS)] = [422]
    await op.reconcile_key("SAETrainingRun", "default", "quickstart")
    status = _run(op)["status"]
    assert status["phase"] == "Failed" and cond(status, "Failed")["reason"] == "InvalidSpec"
    assert "refused with 422" in cond(status, "Failed")["message"]
    posts = [c for c in op.kube.calls if c == ("POST", JOBS)]
    for _ in range(3):
        await op.reconcile_key("SAETrainingRun", "default", "quickstart")
    assert [c for c in op.kube.calls if c == ("POST", JOBS)] == posts == [("POST", JOBS)]
    # The ConfigMap, Service and NetworkPolicy made in that pass went with the failure.
    assert not any("/configmaps/" in p or "/services/" in p for p in op.kube.objects)


@pytest.mark.asyncio
async def test_a_status_that_cannot_be_written_stops_retries_for_its_generation(op):
    op.kube.refuse[("PATCH", RUN + "/status")] = [422, 422]
    await op.reconcile_key("SAETrainingRun", "default", "quickstart")
    assert "status" not in _run(op)
    calls = len(op.kube.calls)
    await op.reconcile_key("SAETrainingRun", "default", "quickstart")
    assert op.kube.calls[calls:] == [("GET", RUN)]  # read, found given up, nothing else
    _run(op)["metadata"]["generation"] = 2
    await op.reconcile_key("SAETrainingRun", "default", "quickstart")
    assert _run(op)["status"]["phase"] == "Pending"


@pytest.mark.asyncio
async def test_transient_errors_back_off_and_are_counted(op):
    op.kube.refuse[("POST", JOBS)] = [503, 429]
    before = opmetrics.RETRIES.labels("SAETrainingRun")._value.get()
    await op.reconcile_key("SAETrainingRun", "default", "quickstart")
    key = ("SAETrainingRun", "default", "quickstart")
    assert op._failures[key] == 1 and key in op._requeues
    calls = len(op.kube.calls)
    await op.reconcile_key(*key)  # a timer tick inside the backoff window: skipped
    assert len(op.kube.calls) == calls
    await op.reconcile_key(*key, retry=True)
    assert op._failures[key] == 2
    await op.reconcile_key(*key, retry=True)
    assert key not in op._failures and f"{JOBS}/quickstart-run" in op.kube.objects
    assert opmetrics.RETRIES.labels("SAETrainingRun")._value.get() == before + 2
    assert _run(op)["status"]["phase"] == "Pending"
    for handle in op._requeues.values():
        handle.cancel()


@pytest.mark.asyncio
async def test_a_namesake_found_by_a_409_is_reported_not_adopted(op):
    # The Job appears between the read and the create (someone else's).
    real_create = op.kube.create

    async def racing_create(path: str, body: Obj) -> Obj:
        if path == JOBS:
            op.kube.objects[f"{JOBS}/quickstart-run"] = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {
                "name": "quickstart-run", "namespace": "default", "uid": "theirs"}}
        return await real_create(path, body)

    op.kube.create = racing_create  # type: ignore[method-assign]
    await op.reconcile_key("SAETrainingRun", "default", "quickstart")
    status = _run(op)["status"]
    assert cond(status, "Failed")["reason"] == "NameConflict"
    assert op.kube.objects[f"{JOBS}/quickstart-run"]["metadata"]["uid"] == "theirs"
    assert not names.owned_by(op.kube.objects[f"{JOBS}/quickstart-run"], _run(op)["metadata"]["uid"])
