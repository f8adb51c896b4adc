"""kopf glue: read the object and its children, call the pure reconcile, apply the diff.

Every handler funnels into `reconcile_key`, serialised per object by an asyncio lock, so
a timer, a watch event on a child and a spec update never interleave on one resource.

Errors from the API server split three ways:
- a create answered 409: something already holds the name; it is read back and handed to the
  reconcile, which adopts nothing it does not own (the resource fails with NameConflict);
- a create or patch refused for good (a 4xx other than 409/429): the reconcile runs again
  with the server's answer and the resource fails (InvalidSpec or Rejected) in this very pass,
  so a terminal status is written and nothing is retried for this generation;
- anything else (429, 5xx, connection errors): retried with capped exponential backoff,
  counted in saeops_operator_retries_total, while timer and watch triggers wait it out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from saeops.api import names
from saeops.operator import opmetrics
from saeops.operator.grouprender import members_of
from saeops.operator.kube import ApiError, Kube, merge_patch, path_for
from saeops.operator.observe import observe_run, observe_sweep
from saeops.operator.policy import ClusterPolicy
from saeops.operator.reconcile import reconcile
from saeops.operator.state import Desired, Rejection
from saeops.operator.sweep import reconcile_sweep

Obj = dict[str, Any]
log = logging.getLogger("saeops.operator")
KINDS = {"saetrainingruns": "SAETrainingRun", "activationcaches": "ActivationCache", "saesweeps": "SAESweep"}
KIND_BY_LABEL = {names.kind_label(k): k for k in KINDS.values()}
BACKOFF_BASE = 1.0
DEFAULT_MAX_BACKOFF = 300.0
Key = tuple[str, str, str]


def backoff_delay(failures: int, base: float = BACKOFF_BASE, cap: float = DEFAULT_MAX_BACKOFF) -> float:
    """Seconds to wait after `failures` consecutive transient errors: base * 2^(n-1), capped."""
    return min(cap, base * 2 ** max(0, min(failures - 1, 62)))


class WriteRefused(Exception):
    """A create or status patch of one reconcile pass failed: which object, and the server's answer."""

    def __init__(self, obj: Obj, path: str, error: ApiError) -> None:
        super().__init__(str(error))
        self.obj = obj
        self.path = path
        self.error = error


class Operator:
    """State shared by the handlers: the API client, per-object locks, requeues and backoff."""

    def __init__(self, interval: float, clock: Callable[[], datetime] | None = None, scanning: bool = True,
                 policy: ClusterPolicy | None = None, max_backoff: float = DEFAULT_MAX_BACKOFF) -> None:
        self.interval = interval
        self.scanning = scanning
        self.policy = policy or ClusterPolicy()
        self.max_backoff = max_backoff
        self.clock = clock or (lambda: datetime.now(UTC))
        self._kube: Kube | None = None
        self._locks: dict[Key, asyncio.Lock] = {}
        self._requeues: dict[Key, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # strong refs until done
        self._failures: dict[Key, int] = {}
        self._not_before: dict[Key, float] = {}
        self._given_up: dict[Key, Any] = {}  # key -> generation whose status could not be written

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._kube = Kube()
        return self._kube

    async def reconcile_key(self, kind: str, namespace: str, name: str, retry: bool = False) -> None:
        """Read the resource fresh and reconcile it (no-op when it is gone). While backing off
        after a transient error only the scheduled retry (`retry=True`) runs."""
        key = (kind, namespace, name)
        if not retry and time.monotonic() < self._not_before.get(key, 0.0):
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            t0 = time.perf_counter()
            try:
                await self._reconcile(key)
                opmetrics.RECONCILES.labels(kind, "ok").inc()
                self._failures.pop(key, None)
                self._not_before.pop(key, None)
            except Exception as e:
                opmetrics.RECONCILES.labels(kind, "error").inc()
                opmetrics.RETRIES.labels(kind).inc()
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = backoff_delay(failures, cap=self.max_backoff)
                self._not_before[key] = time.monotonic() + delay
                log.warning("reconcile of %s %s/%s failed (%s); retry %d in %.0f s",
                            kind, namespace, name, e, failures, delay, exc_info=not isinstance(e, ApiError))
                self.requeue(key, delay, retry=True)
            finally:
                opmetrics.RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - t0)

    async def _get(self, key: Key) -> Obj | None:
        kind, namespace, name = key
        res = await self.kube.get(path_for(names.API, kind, namespace, name))
        if res is None:
            opmetrics.record_phase(kind, namespace, name, None)
            self._locks.pop(key, None)
            self._given_up.pop(key, None)
            return None
        res.setdefault("kind", kind)
        return res

    async def _desired(self, res: Obj, **extra: Any) -> Desired:
        now = self.clock()
        if res["kind"] == "SAESweep":
            return reconcile_sweep(await observe_sweep(self.kube, res, self.policy, **extra), now, self.policy)
        return reconcile(await observe_run(self.kube, res, self.policy, **extra), now, self.policy)

    async def _reconcile(self, key: Key) -> None:
        kind, namespace, name = key
        res = await self._get(key)
        if res is None:
            return
        generation = (res.get("metadata") or {}).get("generation")
        if key in self._given_up and self._given_up[key] == generation:
            return  # its status cannot be written; a new generation tries again
        self._given_up.pop(key, None)
        desired = await self._desired(res)
        try:
            await self.apply(res, desired)
        except WriteRefused as refused:
            extra = await self._explain(refused)
            # Read again and reconcile with the answer: this pass ends the resource Failed.
            res = await self._get(key)
            if res is None:
                return
            desired = await self._desired(res, **extra)
            try:
                await self.apply(res, desired)
            except WriteRefused as again:
                if not again.error.permanent:
                    raise again.error from None  # another namesake appeared: back off and look again
                self._given_up[key] = generation
                log.error("%s %s/%s: giving up on this generation: %s", kind, namespace, name, again)
                return
        phase = (desired.status or res.get("status") or {}).get("phase")
        opmetrics.record_phase(kind, namespace, name, None if desired.delete_self else phase)

    async def _explain(self, refused: WriteRefused) -> dict[str, Any]:
        """What the reconcile needs to know about a refused write (raises when retrying may help)."""
        err, obj = refused.error, refused.obj
        meta = obj.get("metadata") or {}
        if err.status == 409:  # only creates get here with a 409: the name is taken
            existing = await self.kube.get(f"{refused.path}/{meta.get('name')}")
            return {"foreign": (existing,)} if existing is not None else {}
        if err.permanent:
            opmetrics.REJECTIONS.labels(obj.get("kind", "?")).inc()
            return {"rejection": Rejection(obj.get("kind", "?"), meta.get("name", "?"), err.status, err.message)}
        raise err

    async def apply(self, res: Obj, desired: Desired) -> None:
        """Apply a Desired: delete, create, patch status, emit events, requeue."""
        meta = res["metadata"]
        ns, name, kind = meta.get("namespace"), meta["name"], res["kind"]
        if desired.changes_nothing:
            log.debug("%s %s/%s: up to date", kind, ns, name)
            self._requeue_for(res, desired)
            return
        for ref in desired.delete:
            await self.kube.delete(path_for(ref.api_version, ref.kind, ns, ref.name), uid=ref.uid)
            log.info("%s %s/%s: deleted %s %s", kind, ns, name, ref.kind, ref.name)
        for child in desired.create:
            path = path_for(child["apiVersion"], child["kind"], ns)
            try:
                await self.kube.create(path, child)
            except ApiError as e:
                if e.status == 409 or e.permanent:
                    raise WriteRefused(child, path, e) from None
                raise
            log.info("%s %s/%s: created %s %s", kind, ns, name, child["kind"], child["metadata"]["name"])
        if desired.status is not None:
            patch = merge_patch(res.get("status") or {}, desired.status)
            path = path_for(names.API, kind, ns, name, "status")
            try:
                await self.kube.patch(path, {"status": patch})
            except ApiError as e:
                if e.status == 404:
                    return  # deleted meanwhile
                if e.permanent:
                    raise WriteRefused(res, path, e) from None
                raise
        for ev in desired.events:
            kopf.event(res, type=ev.type, reason=ev.reason, message=ev.message)
            log.info("%s %s/%s: %s: %s", kind, ns, name, ev.reason, ev.message)
        if desired.delete_self:
            await self.kube.delete(path_for(names.API, kind, ns, name), uid=meta.get("uid"))
            log.info("%s %s/%s: deleted after ttlSecondsAfterFinished", kind, ns, name)
            return
        self._requeue_for(res, desired)

    def _requeue_for(self, res: Obj, desired: Desired) -> None:
        """Requeues sooner than the timer's interval are scheduled here; later ones are the timer's."""
        if desired.requeue_after is not None and desired.requeue_after < self.interval:
            meta = res["metadata"]
            self.requeue((res["kind"], meta.get("namespace") or "", meta["name"]), desired.requeue_after)

    def requeue(self, key: Key, delay: float, retry: bool = False) -> None:
        """Reconcile `key` again after `delay` seconds (one pending requeue per key; a retry
        replaces a plain requeue so the backoff is honoured)."""
        pending = self._requeues.get(key)
        if pending is not None:
            if not retry:
                return
            pending.cancel()
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._requeues.pop(key, None)
            task = loop.create_task(self.reconcile_key(*key, retry=retry))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._requeues[key] = loop.call_later(delay, fire)


def build_registry(op: Operator) -> kopf.OperatorRegistry:
    """Register every handler on a fresh registry (no import-time side effects)."""
    reg = kopf.OperatorRegistry()
    kopf.on.login(registry=reg)(kopf.login_via_client)

    @kopf.on.startup(registry=reg)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = f"{names.GROUP}/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=names.GROUP, key="last-handled-configuration"
        )
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        # Without scanning kopf does not list/watch namespaces and CRDs after startup: fine
        # for exact namespaces with CRDs installed first, and needed for API emulators.
        settings.scanning.disabled = not op.scanning
        # A deleted resource keeps its finalizer until its poll timer has exited; a timer caught
        # mid-reconcile is checked again after this many seconds (kopf's default: 60).
        settings.background.cancellation_polling = 1.0

    for plural, kind in KINDS.items():

        async def on_change(namespace: str, name: str, _kind: str = kind, **_: Any) -> None:
            await op.reconcile_key(_kind, namespace, name)

        for decorator in (kopf.on.resume, kopf.on.create, kopf.on.update):
            decorator(names.GROUP, names.VERSION, plural, registry=reg, id=f"reconcile-{plural}")(on_change)
        kopf.timer(names.GROUP, names.VERSION, plural, registry=reg, interval=op.interval, id=f"poll-{plural}")(on_change)

        @kopf.on.delete(names.GROUP, names.VERSION, plural, registry=reg, optional=True)
        def forget(namespace: str, name: str, _kind: str = kind, **_: Any) -> None:
            opmetrics.record_phase(_kind, namespace, name, None)

    async def on_child(labels: dict[str, str], annotations: Mapping[str, str], namespace: str, **_: Any) -> None:
        kind = KIND_BY_LABEL.get(labels.get(names.LABEL_KIND, ""))
        owner = labels.get(names.LABEL_RUN)
        if kind and owner:
            await op.reconcile_key(kind, namespace, owner)
        # A group's Job and pods (the sweep's) also concern the trials they train.
        for trial in members_of({"metadata": {"annotations": dict(annotations or {})}}) or {}:
            await op.reconcile_key("SAETrainingRun", namespace, trial)

    child_labels = {names.LABEL_RUN: kopf.PRESENT, names.LABEL_KIND: kopf.PRESENT}
    kopf.on.event("batch", "v1", "jobs", registry=reg, labels=child_labels)(on_child)
    kopf.on.event("", "v1", "pods", registry=reg, labels=child_labels)(on_child)

    @kopf.on.event(names.GROUP, names.VERSION, "saetrainingruns", registry=reg, labels={names.LABEL_SWEEP: kopf.PRESENT})
    async def on_trial(labels: dict[str, str], namespace: str, **_: Any) -> None:
        await op.reconcile_key("SAESweep", namespace, labels[names.LABEL_SWEEP])

    return reg
