"""Fixtures of the pod scenarios: a container engine, the images, and a cluster made of the API
emulator, the real operator process, the pod runner and a moto S3 server, all on loopback.

The scenarios skip, with the one-line reason, only where no container engine can start; with
`SAEOPS_REQUIRE_CONTAINERS=1` (set by `.ci/run` where an engine runs) that is a failure instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.cluster import images
from tests.cluster.apiserver import GROUP_VERSION, NS, ApiServer, api_server, operator_process
from tests.cluster.engine import (
    ALLOWED_NETWORKS,
    Docker,
    EngineUnavailable,
    cache_dir,
    ensure_engine,
    stop_dockerd,
)
from tests.cluster.podrunner import PodRunner
from tests.fixtures_s3 import DUMMY_ENV, create_bucket, s3_server  # noqa: F401  (pytest fixture)

SECRET_NAME = "s3-creds"
SECRET_VALUE = "pods-s3cr3t-do-not-leak"
BUILD_LOG = images.BuildLog()
PATHS = {
    "SAETrainingRun": f"/apis/{GROUP_VERSION}/namespaces/{NS}/saetrainingruns",
    "ActivationCache": f"/apis/{GROUP_VERSION}/namespaces/{NS}/activationcaches",
    "SAESweep": f"/apis/{GROUP_VERSION}/namespaces/{NS}/saesweeps",
    "Secret": f"/api/v1/namespaces/{NS}/secrets",
}
RESOURCE = {"SAETrainingRun": f"{GROUP_VERSION}/saetrainingruns", "ActivationCache": f"{GROUP_VERSION}/activationcaches",
            "SAESweep": f"{GROUP_VERSION}/saesweeps", "Job": "batch/v1/jobs", "Pod": "v1/pods",
            "ConfigMap": "v1/configmaps", "Service": "v1/services"}


@pytest.fixture(scope="session")
def engine() -> Iterator[Docker]:
    """Docker with no bridge network; removes this session's containers at the end and checks
    that none is left and no network was added."""
    try:
        docker, started = ensure_engine(cache_dir() / "dockerd.log")
    except EngineUnavailable as e:
        if os.environ.get("SAEOPS_REQUIRE_CONTAINERS") == "1":
            pytest.fail(f"container engine required here but unavailable: {e}")
        pytest.skip(f"no container engine: {e}")
    networks = docker.networks()
    try:
        yield docker
    finally:
        docker.cleanup()
        left, now = docker.leftovers(), docker.networks()
        if started is not None:
            stop_dockerd(started)
    assert not left, f"containers left behind: {left}"
    assert now == networks, f"docker networks changed: {sorted(networks)} -> {sorted(now)}"
    if started is not None:
        assert now == ALLOWED_NETWORKS, now


@pytest.fixture(scope="session")
def image(engine: Docker) -> str:
    """The saeops CPU image of this source tree (built once per tree, reused while it is unchanged)."""
    work = cache_dir()
    base = images.build_base(engine, work, BUILD_LOG)
    uv = images.build_uv(engine, work, BUILD_LOG)
    return images.build_saeops(engine, work, base, uv, BUILD_LOG)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if BUILD_LOG.entries:
        terminalreporter.write_line(f"container images: {BUILD_LOG.summary()}")


@dataclass
class Cluster:
    """What a scenario drives: the API (objects), the runner (pods), S3 and helpers."""

    api: ApiServer
    runner: PodRunner
    docker: Docker
    image: str
    s3_endpoint: str
    bucket: str
    operator_log: Path
    workdir: Path

    async def create(self, kind: str, obj: dict[str, Any]) -> None:
        async with self.api.emu.post(PATHS[kind], json=obj) as resp:
            assert resp.status < 300, await resp.text()

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.api.get(RESOURCE[kind], name)

    def status(self, kind: str, name: str) -> dict[str, Any]:
        return (self.get(kind, name) or {}).get("status") or {}

    def condition(self, kind: str, name: str, ctype: str) -> dict[str, Any]:
        return next((c for c in self.status(kind, name).get("conditions") or [] if c.get("type") == ctype), {})

    async def wait(self, what: str, fn: Callable[[], Any], timeout: float = 600) -> Any:
        """Poll `fn` until it returns something truthy; on the deadline, fail with the logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert not self.runner.errors, self.runner.errors
            value = fn()
            if value:
                return value
            await asyncio.sleep(0.25)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.diagnostics()}")

    async def phase(self, kind: str, name: str, phase: str, timeout: float = 600) -> dict[str, Any]:
        """Wait for a terminal (or any) phase; a different terminal phase fails at once."""
        def check() -> dict[str, Any] | None:
            st = self.status(kind, name)
            if st.get("phase") in ("Succeeded", "Failed") and st.get("phase") != phase:
                raise AssertionError(f"{kind} {name} ended {st.get('phase')}, not {phase}: "
                                     f"{json.dumps(st)[:2000]}\n{self.diagnostics()}")
            return st if st.get("phase") == phase else None

        return await self.wait(f"{kind} {name} {phase}", check, timeout)

    def diagnostics(self) -> str:
        logs = sorted((self.workdir / "logs").glob("*.log")) if (self.workdir / "logs").exists() else []
        parts = [f"--- {p.name} (tail) ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:]) for p in logs[-4:]]
        op = self.operator_log.read_text(errors="replace").splitlines()[-30:] if self.operator_log.exists() else []
        return "\n".join([*parts, "--- operator log (tail) ---", *op])

    def s3(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                            aws_access_key_id=SECRET_VALUE, aws_secret_access_key=SECRET_VALUE)

    def s3_json(self, key: str) -> Any:
        return json.loads(self.s3().get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def s3_keys(self, prefix: str) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@asynccontextmanager
async def running_cluster(engine: Docker, image: str, s3_endpoint: str, tmp: Path) -> AsyncIterator[Cluster]:
    """API emulator + operator + pod runner + a fresh bucket; on exit every container is gone and
    no object, operator log line or pod log holds the Secret's value."""
    bucket = create_bucket(s3_endpoint)
    op_log = tmp / "operator.log"
    # Until the operator stops reading object storage itself, it needs the endpoint too.
    op_env = {**DUMMY_ENV, "AWS_ENDPOINT_URL": s3_endpoint}
    async with api_server(tmp) as api, operator_process(api.kubeconfig, op_log, op_env):
        runner = PodRunner(api.url, engine, tmp / "pods", NS, sd_file=tmp / "targets.json")
        c = Cluster(api, runner, engine, image, s3_endpoint, bucket, op_log, tmp / "pods")
        await c.create("Secret", {"apiVersion": "v1", "kind": "Secret",
                                  "metadata": {"name": SECRET_NAME, "namespace": NS},
                                  "stringData": {"AWS_ACCESS_KEY_ID": SECRET_VALUE, "AWS_SECRET_ACCESS_KEY": SECRET_VALUE}})
        await runner.start()
        try:
            yield c
        finally:
            await runner.close()
    assert not engine.leftovers(), "the runner left containers behind"
    assert not runner.errors, runner.errors
    for resource, name, version in api.history():
        if resource != "v1/secrets":
            assert SECRET_VALUE not in json.dumps(version), f"{resource} {name} holds the Secret's value"
    assert SECRET_VALUE not in op_log.read_text(errors="replace")
    for pod_log in (tmp / "pods" / "logs").glob("*.log"):
        assert SECRET_VALUE not in pod_log.read_text(errors="replace"), f"{pod_log.name} prints the Secret's value"


@pytest_asyncio.fixture
async def cluster(engine: Docker, image: str, s3_server: str, tmp_path: Path) -> AsyncIterator[Cluster]:  # noqa: F811
    """A cluster for one test."""
    async with running_cluster(engine, image, s3_server, tmp_path) as c:
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_cluster(engine: Docker, image: str, s3_server: str,  # noqa: F811
                         tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """A cluster shared by the tests of one module (run them with `loop_scope="module"`)."""
    async with running_cluster(engine, image, s3_server, tmp_path_factory.mktemp("cluster")) as c:
        yield c
