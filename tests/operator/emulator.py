"""The real operator process (`python -m saeops.operator`) against kmock's KubernetesEmulator
served over HTTP on 127.0.0.1: shared by the process tests and the RBAC test.

The emulator differs from a real API server in ways these tests account for:
- patches are plain JSON merges (no strategic merge): a patch of `status.conditions`
  replaces the whole list, as a merge patch does on custom resources;
- `labelSelector` is ignored when listing, so the operator also filters labels itself;
- no uid, resourceVersion, generation or creationTimestamp is assigned: `Emulator` below
  adds them on create and bumps resourceVersion (and generation on spec changes) on
  merge patches, because kopf's finalizer JSON-patches `test` the resourceVersion;
- it validates nothing: `Emulator` answers a Job create 422 where the real API server would
  for two rules the spec models do not check (a Secret name that is no DNS subdomain,
  requests above limits), and the tests can inject other answers (`faults`);
- `/api/v1/namespaces` cannot be listed (kmock's path parser), so the operator runs with
  `--no-scanning` (exact namespaces need no namespace watching anyway);
- no controllers run: the tests play the Job controller and the scheduler by patching
  Job and Pod status.
Every request carrying the operator's bearer token is recorded as (group, resource, verb),
which is what an RBAC rule grants. Waiting is event-driven: poll the emulator's state until a
predicate holds or a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock

from .helpers import ROOT

SECRET_VALUE = "s3cr3t-AKIA-do-not-leak"
TOKEN = "operator-token"
NS = "default"
TIMEOUT = 20.0
RES = {
    "saeops.io/v1alpha1/saetrainingruns": ("SAETrainingRun", {"status"}),
    "saeops.io/v1alpha1/activationcaches": ("ActivationCache", {"status"}),
    "saeops.io/v1alpha1/saesweeps": ("SAESweep", {"status"}),
    "batch/v1/jobs": ("Job", {"status"}),
    "v1/pods": ("Pod", {"status"}),
    "v1/configmaps": ("ConfigMap", set()),
    "v1/services": ("Service", set()),
    "v1/secrets": ("Secret", set()),
    "v1/events": ("Event", set()),
    "networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", set()),
    # kopf waits for these two in discovery before it watches anything.
    "v1/namespaces": ("Namespace", set()),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", set()),
}
CLUSTER_SCOPED = {"v1/namespaces", "apiextensions.k8s.io/v1/customresourcedefinitions"}
RUNS, CACHES, SWEEPS = ("saeops.io/v1alpha1/saetrainingruns", "saeops.io/v1alpha1/activationcaches",
                        "saeops.io/v1alpha1/saesweeps")
JOBS, PODS, CMS, SVCS, NETPOLS = ("batch/v1/jobs", "v1/pods", "v1/configmaps", "v1/services",
                                  "networking.k8s.io/v1/networkpolicies")
KIND_PATHS = {
    "SAETrainingRun": f"/apis/saeops.io/v1alpha1/namespaces/{NS}/saetrainingruns",
    "ActivationCache": f"/apis/saeops.io/v1alpha1/namespaces/{NS}/activationcaches",
    "SAESweep": f"/apis/saeops.io/v1alpha1/namespaces/{NS}/saesweeps",
    "Job": f"/apis/batch/v1/namespaces/{NS}/jobs",
    "Pod": f"/api/v1/namespaces/{NS}/pods",
    "Secret": f"/api/v1/namespaces/{NS}/secrets",
    "ConfigMap": f"/api/v1/namespaces/{NS}/configmaps",
    "Service": f"/api/v1/namespaces/{NS}/services",
}
_VERBS = {kmock.action.LIST: "list", kmock.action.WATCH: "watch", kmock.action.FETCH: "get",
          kmock.action.CREATE: "create", kmock.action.DELETE: "delete"}
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_counter = itertools.count(1)


@dataclass
class Fault:
    """Answer the next `len(codes)` matching requests with these HTTP codes instead of serving them."""

    resource: str  # plural, e.g. "jobs"
    verb: str
    name: str | None
    codes: list[int]
    message: str = "injected fault"


@dataclass
class Call:
    group: str
    resource: str  # plural, or plural/subresource
    verb: str
    name: str | None


def _quantity(text: str) -> float:
    units = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    number, unit = re.match(r"^([0-9.]+)([A-Za-z]*)$", str(text)).groups()  # type: ignore[union-attr]
    return float(number) * units[unit]


def job_invalid(job: dict[str, Any]) -> str | None:
    """What the real API server says about an invalid Job, for two of its rules."""
    name = job.get("metadata", {}).get("name")
    pod = job.get("spec", {}).get("template", {}).get("spec", {})
    for ci, container in enumerate(pod.get("containers", [])):
        for ei, env in enumerate(container.get("env", [])):
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref and not _SUBDOMAIN.match(ref.get("name", "")):
                return (f'Job.batch "{name}" is invalid: spec.template.spec.containers[{ci}].env[{ei}].valueFrom.'
                        f'secretKeyRef.name: Invalid value: "{ref["name"]}": a lowercase RFC 1123 subdomain must '
                        "consist of lower case alphanumeric characters, '-' or '.', and must start and end with an "
                        "alphanumeric character")
        resources = container.get("resources", {})
        for key, request in resources.get("requests", {}).items():
            limit = resources.get("limits", {}).get(key)
            if limit is not None and _quantity(request) > _quantity(limit):
                return (f'Job.batch "{name}" is invalid: spec.template.spec.containers[{ci}].resources.requests: '
                        f'Invalid value: "{request}": must be less than or equal to {key} limit of {limit}')
    return None


class Emulator(kmock.KubernetesEmulator):
    """KubernetesEmulator plus the metadata a real API server maintains, Job validation, injected
    faults and a record of the operator's calls."""

    calls: list[Call]
    faults: list[Fault]

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.calls = []
        self.faults = []

    def _record(self, request: Any, name: str | None) -> str | None:
        res = request.resource
        if res is None or res.plural is None or request.action is None:
            return None  # discovery (/api, /apis/GROUP/VERSION): no RBAC resource
        verb = _VERBS.get(request.action)
        if request.action == kmock.action.UPDATE:
            verb = "update" if request.method == kmock.method.PUT else "patch"
        auth = {k.lower(): v for k, v in (request.headers or {}).items()}.get("authorization", "")
        if verb and auth == f"Bearer {TOKEN}":
            plural = res.plural + (f"/{request.subresource}" if request.subresource else "")
            self.calls.append(Call(res.group or "", plural, verb, name))
        return verb

    async def _handle(self, request: Any) -> Any:
        data = request.data
        name = request.name or (data.get("metadata", {}).get("name") if isinstance(data, dict) else None)
        verb = self._record(request, name)
        res = request.resource
        if res is not None and verb is not None:
            for fault in self.faults:
                if fault.codes and fault.resource == res.plural and fault.verb == verb and fault.name in (None, name):
                    code = fault.codes.pop(0)
                    raise kmock.KubernetesError(status=code, reason="Injected", message=fault.message)
            if verb == "create" and res.plural == "jobs" and isinstance(request.data, dict):
                problem = job_invalid(request.data)
                if problem:
                    raise kmock.KubernetesError(status=422, reason="Invalid", message=problem)
        if res is not None and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
                if request.namespace:
                    meta.setdefault("namespace", request.namespace)  # from the URL, as the API server does
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("generation", 1)
                meta.setdefault("creationTimestamp", "2025-01-01T00:00:00Z")
                meta["resourceVersion"] = str(next(_counter))
            elif request.action == kmock.action.UPDATE:
                meta["resourceVersion"] = str(next(_counter))
                if "spec" in data and request.subresource is None:
                    current = self.objects[request.resource, request.namespace, request.name]
                    meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1
        return await super()._handle(request)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _res(r: Any) -> str:
    group = getattr(r, "group", "")
    return f"{group + '/' if group else ''}{r.version}/{r.plural}"


@dataclass
class Cluster:
    """The emulator plus helpers that act as the cluster's controllers."""

    emu: Emulator
    log: Path
    metrics_port: int
    live_port: int
    servers: list[Any] = field(default_factory=list)

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.emu.objects[resource, NS, name]
        except KeyError:
            return None
        return None if obj.deleted else copy.deepcopy(dict(obj.raw))

    def history(self, resource: str, name: str) -> int:
        return len(self.emu.objects[resource, NS, name].history)

    def versions(self, resource: str, name: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(dict(v.raw)) for v in self.emu.objects[resource, NS, name].history if v is not None]

    def status(self, resource: str, name: str) -> dict[str, Any]:
        return (self.get(resource, name) or {}).get("status") or {}

    async def wait(self, what: str, fn: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = fn()
            if value:
                return value
            await asyncio.sleep(0.05)
        tail = self.log.read_text()[-4000:] if self.log.exists() else ""
        raise AssertionError(f"timed out waiting for {what}\n--- operator log tail ---\n{tail}")

    async def wait_phase(self, resource: str, name: str, phase: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        return await self.wait(f"{name} {phase}", lambda: (r := self.get(resource, name))
                               and (r.get("status") or {}).get("phase") == phase and r, timeout)

    async def create(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        async with self.emu.post(KIND_PATHS[kind], json=obj) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def patch(self, kind: str, name: str, body: dict[str, Any], sub: str = "") -> None:
        path = f"{KIND_PATHS[kind]}/{name}" + (f"/{sub}" if sub else "")
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.emu.patch(path, data=json.dumps(body), headers=headers) as resp:
            assert resp.status < 300, await resp.text()

    async def delete(self, kind: str, name: str) -> None:
        async with self.emu.delete(f"{KIND_PATHS[kind]}/{name}") as resp:
            assert resp.status < 300, await resp.text()

    async def operator_metrics(self) -> dict[str, float]:
        """The operator's own /metrics, by sample (name plus labels)."""
        async with self.emu.clients[0].get(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp:
            text = await resp.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("saeops_operator_"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    async def reconciles(self) -> float:
        """Total reconciles the operator reports on its /metrics."""
        return sum(v for k, v in (await self.operator_metrics()).items() if k.startswith("saeops_operator_reconciles_total{"))

    async def quiet_for(self, reconciles: int = 3) -> None:
        """Let the operator run `reconciles` more passes (its timer fires every 0.5 s)."""
        before = await self.reconciles()
        deadline = time.monotonic() + TIMEOUT
        while await self.reconciles() < before + reconciles:
            assert time.monotonic() < deadline, "operator stopped reconciling"
            await asyncio.sleep(0.1)

    def count(self, verb: str, resource: str, name: str | None = None) -> int:
        """Calls the operator made (verb on a resource plural, optionally one object)."""
        return sum(1 for c in self.emu.calls if c.verb == verb and c.resource == resource and (name is None or c.name == name))

    def condition(self, obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
        for c in ((obj or {}).get("status") or {}).get("conditions") or []:
            if c["type"] == ctype:
                return c
        return {}

    def assert_no_secret(self) -> None:
        """Nothing from the Secret reached a ConfigMap, a status, an Event or a log line."""
        for (r, _, name), obj in self.emu.objects.items():
            if _res(r) == "v1/secrets":
                continue
            for version in obj.history:
                if version is not None:
                    assert SECRET_VALUE not in json.dumps(dict(version.raw)), f"{_res(r)} {name} leaks the secret"
        assert SECRET_VALUE not in self.log.read_text()


@contextlib.asynccontextmanager
async def running_operator(tmp_path: Path, *args: str) -> AsyncIterator[Cluster]:
    """The emulator with every resource the operator uses, and the operator process watching it."""
    async with Emulator() as emu, kmock.Server(emu) as server:
        for key, (kind, subs) in RES.items():
            emu.resources[key] = kmock.ResourceInfo(
                kind=kind, namespaced=key not in CLUSTER_SCOPED, subresources=subs,
                verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
            )
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": f"http://127.0.0.1:{server.port}"}}],
            "users": [{"name": "u", "user": {"token": TOKEN}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "u", "namespace": NS}}],
        }))
        log = tmp_path / "operator.log"
        metrics_port, live_port = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT)}
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "saeops.operator", "--namespace", NS, "--interval", "0.5", "--no-scanning",
                "--metrics-port", str(metrics_port), "--liveness", f"http://127.0.0.1:{live_port}/healthz",
                "--max-backoff", "1", "--verbose", *args, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
            )
        c = Cluster(emu, log, metrics_port, live_port)
        try:
            await c.create("Secret", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": NS},
                                      "stringData": {"AWS_ACCESS_KEY_ID": SECRET_VALUE, "AWS_SECRET_ACCESS_KEY": SECRET_VALUE}})
            yield c
        finally:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            for srv in c.servers:
                srv.shutdown()
        c.assert_no_secret()
