"""The real operator process (`python -m saeops.operator`) against kmock's KubernetesEmulator
served over HTTP on 127.0.0.1.

The emulator differs from a real API server in ways these tests account for:
- patches are plain JSON merges (no strategic merge): a patch of `status.conditions`
  replaces the whole list, as a merge patch does on custom resources;
- `labelSelector` is ignored when listing, so the operator also filters labels itself;
- no uid, resourceVersion, generation or creationTimestamp is assigned: `Emulator` below
  adds them on create and bumps resourceVersion (and generation on spec changes) on
  merge patches, because kopf's finalizer JSON-patches `test` the resourceVersion;
- `/api/v1/namespaces` cannot be listed (kmock's path parser), so the operator runs with
  `--no-scanning` (exact namespaces need no namespace watching anyway);
- no controllers run: the tests play the Job controller and the scheduler by patching
  Job and Pod status.
Waiting is event-driven: poll the emulator's state until a predicate holds or a deadline.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from .helpers import ROOT, quickstart, sweep_doc

SECRET_VALUE = "s3cr3t-AKIA-do-not-leak"
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
    # kopf waits for these two in discovery before it watches anything.
    "v1/namespaces": ("Namespace", set()),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", set()),
}
CLUSTER_SCOPED = {"v1/namespaces", "apiextensions.k8s.io/v1/customresourcedefinitions"}
PATHS = {
    "SAETrainingRun": "/apis/saeops.io/v1alpha1/namespaces/default/saetrainingruns",
    "SAESweep": "/apis/saeops.io/v1alpha1/namespaces/default/saesweeps",
    "Job": "/apis/batch/v1/namespaces/default/jobs",
    "Pod": "/api/v1/namespaces/default/pods",
    "Secret": "/api/v1/namespaces/default/secrets",
}


_counter = itertools.count(1)


class Emulator(kmock.KubernetesEmulator):
    """KubernetesEmulator plus the metadata a real API server maintains."""

    async def _handle(self, request: Any) -> Any:
        data = request.data
        if request.resource is not None and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """The emulator plus helpers that act as the cluster's controllers."""

    def __init__(self, emu: kmock.KubernetesEmulator, log: Path, metrics_port: int) -> None:
        self.emu = emu
        self.log = log
        self.metrics_port = metrics_port

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.emu.objects[resource, NS, name]
        except KeyError:
            return None
        return None if obj.deleted else copy.deepcopy(dict(obj.raw))

    def all(self, resource: str) -> list[dict[str, Any]]:
        return [dict(o.raw) for (r, _, _), o in self.emu.objects.items() if str(r) == resource or (_res(r) == resource and not o.deleted)]

    def history(self, resource: str, name: str) -> int:
        return len(self.emu.objects[resource, NS, name].history)

    async def wait(self, what: str, fn: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = fn()
            if value:
                return value
            await asyncio.sleep(0.05)
        tail = self.log.read_text()[-3000:] if self.log.exists() else ""
        raise AssertionError(f"timed out waiting for {what}\n--- operator log tail ---\n{tail}")

    async def create(self, kind: str, obj: dict[str, Any]) -> None:
        async with self.emu.post(PATHS[kind], json=obj) as resp:
            assert resp.status < 300, await resp.text()

    async def patch(self, kind: str, name: str, body: dict[str, Any], sub: str = "") -> None:
        path = f"{PATHS[kind]}/{name}" + (f"/{sub}" if sub else "")
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.emu.patch(path, data=json.dumps(body), headers=headers) as resp:
            assert resp.status < 300, await resp.text()

    async def reconciles(self) -> float:
        """Total reconciles the operator reports on its /metrics."""
        async with self.emu.clients[0].get(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp:
            text = await resp.text()
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("saeops_operator_reconciles_total{"))

    def condition(self, obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
        for c in ((obj or {}).get("status") or {}).get("conditions") or []:
            if c["type"] == ctype:
                return c
        return {}


def _res(r: Any) -> str:
    group = getattr(r, "group", "")
    return f"{group + '/' if group else ''}{r.version}/{r.plural}"


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
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
            "users": [{"name": "u", "user": {"token": "test-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "u", "namespace": NS}}],
        }))
        log = tmp_path / "operator.log"
        metrics_port, live_port = _free_port(), _free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT)}
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "saeops.operator", "--namespace", NS, "--interval", "0.5", "--no-scanning",
                "--metrics-port", str(metrics_port), "--liveness", f"http://127.0.0.1:{live_port}/healthz",
                "--verbose", env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
            )
        c = Cluster(emu, log, metrics_port)
        c.live_port = live_port  # type: ignore[attr-defined]
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
        _assert_no_secret(c)


def _assert_no_secret(c: Cluster) -> None:
    """Nothing from the Secret reached a ConfigMap, a status, an Event or a log line."""
    for (r, _, name), obj in c.emu.objects.items():
        if _res(r) == "v1/secrets":
            continue
        for version in obj.history:
            if version is not None:
                assert SECRET_VALUE not in json.dumps(dict(version.raw)), f"{_res(r)} {name} leaks the secret"
    assert SECRET_VALUE not in c.log.read_text()


def _run(name: str = "quickstart", **spec: Any) -> dict[str, Any]:
    doc = quickstart()
    doc["metadata"]["name"] = name
    doc["metadata"]["uid"] = f"uid-{name}"
    doc["spec"]["output"] = {"storageUri": "s3://bucket/runs", "secretRef": {"name": "s3-creds"}}
    doc["spec"].update(spec)
    return doc


def _pod(job: str, run: str, phase: str = "Running", disrupted: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{job}-0-x{int(disrupted)}", "namespace": NS,
                     "labels": {"saeops.io/run": run, "saeops.io/kind": "saetrainingrun"},
                     "annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
        "status": {"phase": phase, "podIP": "127.0.0.1",
                   "conditions": [{"type": "DisruptionTarget", "status": "True"}] if disrupted else []},
    }


@pytest.mark.asyncio
async def test_run_children_progress_success_and_quiescence(cluster: Cluster):
    c = cluster
    # The rank-0 pod's /metrics, as the runtime would serve it.
    port = _free_port()
    registry = CollectorRegistry()
    start_http_server(port, addr="127.0.0.1", registry=registry)
    Gauge("saeops_tokens_processed", "t", registry=registry).set(100000)
    Gauge("saeops_tokens_total", "t", registry=registry).set(400000)
    Gauge("saeops_l0", "l0", registry=registry).set(31.5)
    Gauge("saeops_explained_variance", "ev", registry=registry).set(0.75)

    await c.create("SAETrainingRun", _run(metrics={"port": port}))
    job = await c.wait("Job", lambda: c.get("batch/v1/jobs", "quickstart"))
    assert c.get("v1/configmaps", "quickstart-spec") and c.get("v1/services", "quickstart")
    assert job["spec"]["completionMode"] == "Indexed"
    run = await c.wait("Pending status", lambda: (r := c.get("saeops.io/v1alpha1/saetrainingruns", "quickstart"))
                       and (r.get("status") or {}).get("jobName") and r)
    assert c.condition(run, "Admitted")["status"] == "True"
    assert c.condition(run, "Succeeded")["status"] == "Unknown"

    # Job controller + scheduler: a running rank-0 pod.
    await c.create("Pod", _pod("quickstart", "quickstart"))
    await c.patch("Job", "quickstart", {"status": {"active": 1}}, "status")
    run = await c.wait("Running with progress", lambda: (r := c.get("saeops.io/v1alpha1/saetrainingruns", "quickstart"))
                       and (r.get("status") or {}).get("progress", {}).get("percent") == "25.0" and r)
    assert run["status"]["phase"] == "Running" and run["status"]["metrics"]["l0"] == "31.5"

    await c.patch("Job", "quickstart", {"status": {"active": 0, "succeeded": 1,
                                                   "conditions": [{"type": "Complete", "status": "True"}]}}, "status")
    run = await c.wait("Succeeded", lambda: (r := c.get("saeops.io/v1alpha1/saetrainingruns", "quickstart"))
                       and r.get("status", {}).get("phase") == "Succeeded" and r)
    assert c.condition(run, "Succeeded")["reason"] == "Completed"
    assert run["status"]["artifacts"]["sae"] == "s3://bucket/runs/sae.safetensors"

    # Handlers run again and again (timer every 0.5 s): nothing changes any more.
    versions = c.history("saeops.io/v1alpha1/saetrainingruns", "quickstart")
    jobs = c.history("batch/v1/jobs", "quickstart")
    before = await c.reconciles()
    deadline = time.monotonic() + TIMEOUT
    while await c.reconciles() < before + 3:
        assert time.monotonic() < deadline, "operator stopped reconciling"
        await asyncio.sleep(0.1)
    assert c.history("saeops.io/v1alpha1/saetrainingruns", "quickstart") == versions
    assert c.history("batch/v1/jobs", "quickstart") == jobs

    async with c.emu.clients[0].get(f"http://127.0.0.1:{c.live_port}/healthz") as resp:  # type: ignore[attr-defined]
        assert resp.status == 200
    cm = c.get("v1/configmaps", "quickstart-spec")
    assert "s3-creds" in cm["data"]["spec.json"]


@pytest.mark.asyncio
async def test_failures_restart_preemption_does_not_count(cluster: Cluster):
    c = cluster
    await c.create("SAETrainingRun", _run("flaky", failurePolicy={"maxRestarts": 1}))
    job_uid = [0]

    async def fail_job(disrupted: bool) -> None:
        await c.wait("Job", lambda: c.get("batch/v1/jobs", "flaky"))
        job_uid[0] += 1
        if disrupted:
            await c.create("Pod", _pod(f"flaky{job_uid[0]}", "flaky", "Failed", disrupted=True))
        await c.patch("Job", "flaky", {"status": {"failed": 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}, "status")

    await fail_job(disrupted=False)
    run = await c.wait("restart 1", lambda: (r := c.get("saeops.io/v1alpha1/saetrainingruns", "flaky"))
                       and r.get("status", {}).get("restarts") == 1 and r)
    # The failed Job is deleted and a fresh one created (kmock has no GC: it is a new object).
    await c.wait("recreated Job", lambda: (j := c.get("batch/v1/jobs", "flaky")) and not j.get("status"))

    await fail_job(disrupted=True)
    run = await c.wait("Preempted", lambda: (r := c.get("saeops.io/v1alpha1/saetrainingruns", "flaky"))
                       and c.condition(r, "Running").get("reason") in ("Preempted", "PodsPending") and
                       (j := c.get("batch/v1/jobs", "flaky")) and not j.get("status") and r)
    assert run["status"]["restarts"] == 1  # preemption is not counted
    # Remove the disrupted pod, as the Job controller's GC would.
    async with c.emu.delete(f"{PATHS['Pod']}/flaky2-0-x1") as resp:
        assert resp.status < 300

    await fail_job(disrupted=False)
    run = await c.wait("Failed", lambda: (r := c.get("saeops.io/v1alpha1/saetrainingruns", "flaky"))
                       and r.get("status", {}).get("phase") == "Failed" and r)
    assert c.condition(run, "Failed")["reason"] == "BackoffLimitExceeded"
    assert run["status"]["restarts"] == 1


@pytest.mark.asyncio
async def test_sweep_creates_trials_and_finishes(cluster: Cluster):
    c = cluster
    sweep = sweep_doc(max_trials=2, parallel=2)
    sweep["spec"]["trialTemplate"]["output"] = {"storageUri": "s3://bucket/sweeps", "secretRef": {"name": "s3-creds"}}
    await c.create("SAESweep", sweep)
    for name in ("sw-0", "sw-1"):
        await c.wait(f"trial {name}", lambda n=name: c.get("saeops.io/v1alpha1/saetrainingruns", n))
    # The trials are runs: the operator gives them Jobs too.
    await c.wait("trial jobs", lambda: c.get("batch/v1/jobs", "sw-0") and c.get("batch/v1/jobs", "sw-1"))
    for i, name in enumerate(("sw-0", "sw-1")):
        await c.patch("Job", name, {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}, "status")
        await c.wait(f"{name} Succeeded", lambda n=name: (r := c.get("saeops.io/v1alpha1/saetrainingruns", n))
                     and r.get("status", {}).get("phase") == "Succeeded")
        # Final metrics as metrics.json would give them (no object storage in this test).
        await c.patch("SAETrainingRun", name, {"status": {"metrics": {"explained_variance": str(0.5 + i / 10), "l0": str(30 + i)}}}, "status")
    s = await c.wait("sweep Succeeded", lambda: (r := c.get("saeops.io/v1alpha1/saesweeps", "sw"))
                     and r.get("status", {}).get("phase") == "Succeeded"
                     and (r["status"].get("bestTrial") or {}).get("name") == "sw-1" and r)
    assert c.condition(s, "Succeeded")["reason"] == "MaxTrialsReached"
    assert s["status"]["trialsSucceeded"] == 2 and s["status"]["bestTrial"]["name"] == "sw-1"
    assert c.get("saeops.io/v1alpha1/saetrainingruns", "sw-2") is None

    # A GitOps edit raising maxTrials resumes the finished sweep.
    await c.patch("SAESweep", "sw", {"spec": {"maxTrials": 3}})
    await c.wait("trial sw-2", lambda: c.get("saeops.io/v1alpha1/saetrainingruns", "sw-2"))
    s = await c.wait("sweep Running", lambda: (r := c.get("saeops.io/v1alpha1/saesweeps", "sw"))
                     and r.get("status", {}).get("phase") == "Running" and r)
