"""The pod runner itself, with small Jobs in the base image (no training): pods with their own
addresses that find each other through the Service, the pod's settings applied, termination
messages, the Job's status, disruptions replaced without counting, garbage collection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.cluster import images
from tests.cluster.apiserver import NS, ApiServer, api_server
from tests.cluster.engine import Docker, cache_dir
from tests.cluster.podrunner import PodRunner

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(600)]
Obj = dict[str, Any]
# Each pod: its resolver's view of itself and its peer, who it runs as, whether / is writable, the
# Secret's key from its env, the spec file; the result goes to the termination message.
SCRIPT = """
import json, os, socket, sys
me = os.environ["INDEX"]
out = {"index": me, "ip": os.environ["POD_IP"], "uid": os.getuid(), "peer": socket.gethostbyname("j-0.j"),
       "self": socket.gethostbyname(socket.gethostname()), "secret": os.environ["TOKEN"],
       "spec": open("/etc/spec/spec.json").read(), "root_writable": os.access("/", os.W_OK)}
try:
    open("/tmp/x", "w").write("tmp is writable")
    out["tmp"] = True
except OSError:
    out["tmp"] = False
open("/dev/termination-log", "w").write(json.dumps(out))
sys.exit(int(os.environ.get("EXIT_" + me, "0")))
"""


def job(name: str = "j", completions: int = 2, command: list[str] | None = None, **extra_env: str) -> Obj:
    env = [{"name": "INDEX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
           {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}},
           *({"name": k, "value": v} for k, v in extra_env.items())]
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS},
        "spec": {"completionMode": "Indexed", "completions": completions, "parallelism": completions, "backoffLimit": 0,
                 "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {
                     "restartPolicy": "Never", "subdomain": "j", "terminationGracePeriodSeconds": 5,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000},
                     "containers": [{"name": "main", "image": images.BASE_TAG,
                                     "command": command or ["python3", "-c", SCRIPT],
                                     "env": env, "terminationMessagePolicy": "FallbackToLogsOnError",
                                     "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                                         "capabilities": {"drop": ["ALL"]}},
                                     "volumeMounts": [{"name": "spec", "mountPath": "/etc/spec"},
                                                      {"name": "tmp", "mountPath": "/tmp"}]}],
                     "volumes": [{"name": "spec", "configMap": {"name": "spec"}}, {"name": "tmp", "emptyDir": {}}]}}},
    }


@pytest_asyncio.fixture
async def env(engine: Docker, tmp_path: Path) -> AsyncIterator[tuple[ApiServer, PodRunner]]:
    images.build_base(engine, cache_dir(), images.BuildLog())
    async with api_server(tmp_path) as api:
        for kind, body in (("services", {"kind": "Service", "metadata": {"name": "j"},
                                         "spec": {"clusterIP": "None", "selector": {"app": "j"}}}),
                           ("secrets", {"kind": "Secret", "metadata": {"name": "tok"}, "stringData": {"token": "t0k"}}),
                           ("configmaps", {"kind": "ConfigMap", "metadata": {"name": "spec"}, "data": {"spec.json": "{}"}})):
            async with api.emu.post(f"/api/v1/namespaces/{NS}/{kind}", json={"apiVersion": "v1", **body}) as resp:
                assert resp.status < 300
        runner = PodRunner(api.url, engine, tmp_path / "pods", NS)
        await runner.start()
        try:
            yield api, runner
        finally:
            await runner.close()
    assert not runner.errors, runner.errors
    assert not engine.leftovers()


async def create_job(api: ApiServer, body: Obj) -> None:
    async with api.emu.post(f"/apis/batch/v1/namespaces/{NS}/jobs", json=body) as resp:
        assert resp.status < 300, await resp.text()


async def until(what: str, fn: Any, timeout: float = 120) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = fn()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def conditions(obj: Obj | None) -> set[str]:
    return {c["type"] for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["status"] == "True"}


async def test_indexed_job_runs_as_pods_that_find_each_other(env: tuple[ApiServer, PodRunner]) -> None:
    api, _runner = env
    await create_job(api, job())
    done = await until("Job Complete", lambda: "Complete" in conditions(api.get("batch/v1/jobs", "j")) and
                       api.get("batch/v1/jobs", "j"))
    assert done["status"]["succeeded"] == 2 and done["status"]["completedIndexes"] == "0-1"
    pods = sorted(api.all("v1/pods"), key=lambda p: p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
    results = [json.loads(p["status"]["containerStatuses"][0]["state"]["terminated"]["message"]) for p in pods]
    ips = [p["status"]["podIP"] for p in pods]
    assert len(set(ips)) == 2 and all(ip.startswith("127.") and ip != "127.0.0.1" for ip in ips)
    for i, (pod, out) in enumerate(zip(pods, results, strict=True)):
        assert pod["status"]["phase"] == "Succeeded" and pod["spec"]["hostname"] == f"j-{i}"
        assert pod["metadata"]["labels"]["app"] == "j" and pod["metadata"]["ownerReferences"][0]["kind"] == "Job"
        assert out == {"index": str(i), "ip": ips[i], "uid": 1000, "peer": ips[0], "self": ips[i], "secret": "t0k",
                       "spec": "{}", "root_writable": False, "tmp": True}


async def test_failure_counts_and_disruption_does_not(env: tuple[ApiServer, PodRunner]) -> None:
    api, runner = env
    # Index 1 fails once: backoffLimit 0 fails the Job, and its message falls back to the log tail.
    await create_job(api, job("f", command=["sh", "-c", "echo the last words; exit 3"]))
    failed = await until("Job Failed", lambda: "Failed" in conditions(api.get("batch/v1/jobs", "f")) and
                         api.get("batch/v1/jobs", "f"))
    assert failed["status"]["failed"] >= 1
    reasons = {c["reason"] for c in failed["status"]["conditions"] if c["type"] == "Failed"}
    assert reasons == {"BackoffLimitExceeded"}
    term = next(r.terminated for r in runner.history.values() if r.job["metadata"]["name"] == "f" and r.terminated)
    assert term["exitCode"] == 3 and term["message"] == "the last words"

    # A pod that keeps running is disrupted: DisruptionTarget, stop, a replacement; nothing counted.
    await create_job(api, job("d", completions=1, command=["sleep", "600"]))
    first = await until("a running pod", lambda: [r for r in runner.history.values()
                                                   if r.job["metadata"]["name"] == "d" and r.phase == "Running"])
    await runner.disrupt(first[0].name)
    second = await until("its replacement", lambda: [r for r in runner.history.values() if r.job["metadata"]["name"] == "d"
                                                     and r.phase == "Running" and r.name != first[0].name])
    assert first[0].action == "Ignore" and second[0].index == 0 and second[0].ip != first[0].ip
    stopped = api.get("v1/pods", first[0].name)
    assert "DisruptionTarget" in conditions(stopped) and stopped["status"]["phase"] == "Failed"
    job_d = api.get("batch/v1/jobs", "d")
    assert job_d["status"]["failed"] == 0 and job_d["status"]["active"] == 1 and not conditions(job_d) & {"Failed"}

    # Deleting the Job removes its pods and containers (the garbage collector's part).
    async with api.emu.delete(f"/apis/batch/v1/namespaces/{NS}/jobs/d") as resp:
        assert resp.status < 300
    await until("pods of the deleted Job gone", lambda: not [p for p in api.all("v1/pods")
                                                             if p["metadata"]["labels"]["app"] == "d"])
    await until("its container gone", lambda: not runner.cids, timeout=60)
