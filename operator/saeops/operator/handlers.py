"""kopf glue: read the object and its children, call the pure reconcile, apply the diff.

Every handler funnels into `reconcile_key`, serialised per object by an asyncio lock, so
a timer, a watch event on a child and a spec update never interleave on one resource.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import kopf

from saeops.api import names
from saeops.operator import opmetrics
from saeops.operator.kube import Kube, merge_patch, path_for
from saeops.operator.observe import observe_run, observe_sweep
from saeops.operator.reconcile import reconcile
from saeops.operator.state import Desired
from saeops.operator.sweep import reconcile_sweep

Obj = dict[str, Any]
log = logging.getLogger("saeops.operator")
KINDS = {"saetrainingruns": "SAETrainingRun", "activationcaches": "ActivationCache", "saesweeps": "SAESweep"}
BY_KIND = {v: k for k, v in KINDS.items()}
KIND_BY_LABEL = {names.kind_label(k): k for k in KINDS.values()}


class Operator:
    """State shared by the handlers: the API client, per-object locks, pending requeues."""

    def __init__(self, interval: float, clock: Callable[[], datetime] | None = None, scanning: bool = True) -> None:
        self.interval = interval
        self.scanning = scanning
        self.clock = clock or (lambda: datetime.now(UTC))
        self._kube: Kube | None = None
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._requeues: dict[tuple[str, str, str], asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # strong refs until done

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._kube = Kube()
        return self._kube

    async def reconcile_key(self, kind: str, namespace: str, name: str) -> None:
        """Read the resource fresh and reconcile it (no-op when it is gone)."""
        key = (kind, namespace, name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            t0 = time.perf_counter()
            try:
                res = await self.kube.get(path_for(names.API, kind, namespace, name))
                if res is None:
                    opmetrics.record_phase(kind, namespace, name, None)
                    self._locks.pop(key, None)
                    return
                res.setdefault("kind", kind)
                if kind == "SAESweep":
                    desired = reconcile_sweep(await observe_sweep(self.kube, res), self.clock())
                else:
                    desired = reconcile(await observe_run(self.kube, res), self.clock())
                await self.apply(res, desired)
                phase = (desired.status or res.get("status") or {}).get("phase")
                opmetrics.record_phase(kind, namespace, name, None if desired.delete_self else phase)
                opmetrics.RECONCILES.labels(kind, "ok").inc()
            except Exception:
                opmetrics.RECONCILES.labels(kind, "error").inc()
                log.exception("reconcile of %s %s/%s failed", kind, namespace, name)
                self.requeue(key, min(30.0, self.interval * 3))
            finally:
                opmetrics.RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - t0)

    async def apply(self, res: Obj, desired: Desired) -> None:
        """Apply a Desired: delete, create, patch status, emit events, requeue."""
        meta = res["metadata"]
        ns, name, kind = meta.get("namespace"), meta["name"], res["kind"]
        for ref in desired.delete:
            await self.kube.delete(path_for(ref.api_version, ref.kind, ns, ref.name))
            log.info("%s %s/%s: deleted %s %s", kind, ns, name, ref.kind, ref.name)
        for child in desired.create:
            await self.kube.create(path_for(child["apiVersion"], child["kind"], ns), child)
            log.info("%s %s/%s: created %s %s", kind, ns, name, child["kind"], child["metadata"]["name"])
        if desired.status is not None:
            patch = merge_patch(res.get("status") or {}, desired.status)
            await self.kube.patch(path_for(names.API, kind, ns, name, "status"), {"status": patch})
        for ev in desired.events:
            kopf.event(res, type=ev.type, reason=ev.reason, message=ev.message)
            log.info("%s %s/%s: %s: %s", kind, ns, name, ev.reason, ev.message)
        if desired.delete_self:
            await self.kube.delete(path_for(names.API, kind, ns, name))
            log.info("%s %s/%s: deleted after ttlSecondsAfterFinished", kind, ns, name)
        elif desired.requeue_after is not None and desired.requeue_after < self.interval:
            self.requeue((kind, ns or "", name), desired.requeue_after)

    def requeue(self, key: tuple[str, str, str], delay: float) -> None:
        """Reconcile `key` again after `delay` seconds (one pending requeue per key)."""
        if key in self._requeues:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._requeues.pop(key, None)
            task = loop.create_task(self.reconcile_key(*key))
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

    for plural, kind in KINDS.items():

        async def on_change(namespace: str, name: str, _kind: str = kind, **_: Any) -> None:
            await op.reconcile_key(_kind, namespace, name)

        for decorator in (kopf.on.resume, kopf.on.create, kopf.on.update):
            decorator(names.GROUP, names.VERSION, plural, registry=reg, id=f"reconcile-{plural}")(on_change)
        kopf.timer(names.GROUP, names.VERSION, plural, registry=reg, interval=op.interval, id=f"poll-{plural}")(on_change)

        @kopf.on.delete(names.GROUP, names.VERSION, plural, registry=reg, optional=True)
        def forget(namespace: str, name: str, _kind: str = kind, **_: Any) -> None:
            opmetrics.record_phase(_kind, namespace, name, None)

    async def on_child(labels: dict[str, str], namespace: str, **_: Any) -> None:
        kind = KIND_BY_LABEL.get(labels.get(names.LABEL_KIND, ""))
        owner = labels.get(names.LABEL_RUN)
        if kind and owner:
            await op.reconcile_key(kind, namespace, owner)

    child_labels = {names.LABEL_RUN: kopf.PRESENT, names.LABEL_KIND: kopf.PRESENT}
    kopf.on.event("batch", "v1", "jobs", registry=reg, labels=child_labels)(on_child)
    kopf.on.event("", "v1", "pods", registry=reg, labels=child_labels)(on_child)

    @kopf.on.event(names.GROUP, names.VERSION, "saetrainingruns", registry=reg, labels={names.LABEL_SWEEP: kopf.PRESENT})
    async def on_trial(labels: dict[str, str], namespace: str, **_: Any) -> None:
        await op.reconcile_key("SAESweep", namespace, labels[names.LABEL_SWEEP])

    return reg
