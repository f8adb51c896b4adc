"""The quickstart as a two-node SAETrainingRun, run as pods: the Indexed Job's two containers meet
over torchrun's rendezvous through the headless Service's names, train, write to S3 with
credentials from a Secret, and the CR ends Succeeded with the final L0/EV. Prometheus (Debian's
binary) discovers and scrapes the rank-0 pod during the run. The same manifest run by `saeops
run` with `parallelism.data: 2` in the same image must reach the same explained variance.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from tests.cluster import manifests
from tests.cluster.conftest import SECRET_VALUE, Cluster

PROMETHEUS = shutil.which("prometheus")
RUN = "quickstart"


@pytest_asyncio.fixture
async def prometheus(cluster: Cluster, tmp_path: Path) -> AsyncIterator[str]:
    """Prometheus discovering pods from the runner's file_sd list, as kubernetes_sd would."""
    if PROMETHEUS is None:
        pytest.skip("the prometheus binary is not installed (apt-get install prometheus)")
    assert cluster.runner.sd_file is not None
    cluster.runner.sd_file.write_text("[]")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "saeops-pods", "honor_labels": True,
                            "file_sd_configs": [{"files": [str(cluster.runner.sd_file)], "refresh_interval": "1s"}]}],
    }))
    from tests.cluster.apiserver import free_port

    url = f"http://127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address={url.removeprefix('http://')}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        await cluster.wait("Prometheus ready", lambda: proc.poll() is not None or _ready(url), 60)
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def query(url: str, promql: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def listeners(port: int) -> set[str]:
    """Local addresses listening on `port` on this host (the pods share its network)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


def container_listeners(c: Cluster, cid: str) -> set[str]:
    """Addresses on which the processes of one container listen (TCP)."""
    pids = set(c.docker("top", cid, "-eo", "pid").stdout.split()[1:])
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3] for line in out.splitlines() if any(f"pid={pid}," in line for pid in pids)}


def saeops_run_in_image(c: Cluster, doc: dict[str, Any], tmp: Path, data: int) -> dict[str, Any]:
    """`saeops run` of `doc` with `parallelism.data` in a container of the image (read-only root,
    uid 1000, host loopback); returns metrics.json's final values."""
    doc = json.loads(json.dumps(doc))
    doc["spec"]["parallelism"] = {"data": data}
    doc["spec"]["output"]["storageUri"] += "-saeops-run"
    manifest = manifests.write(tmp / "local.yaml", doc)
    manifest.chmod(0o644)
    # Same threads per worker as in the pods (torchrun sets 1 only when it starts several per node).
    proc = c.docker.run_to_end([
        "--network=host", "--read-only", "--user", "1000:1000", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--tmpfs", "/tmp:rw,exec,mode=1777", "--tmpfs", "/dev/shm",
        "-e", "HOME=/tmp", "-e", "OMP_NUM_THREADS=2", "-e", f"AWS_ACCESS_KEY_ID={SECRET_VALUE}",
        "-e", f"AWS_SECRET_ACCESS_KEY={SECRET_VALUE}", "-v", f"{manifest}:/work/run.yaml:ro",
        c.image, "saeops", "run", "/work/run.yaml", "--no-progress"], timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    prefix = urllib.parse.urlparse(doc["spec"]["output"]["storageUri"]).path.lstrip("/")
    return c.s3_json(f"{prefix}/metrics.json")["final"]


@pytest.mark.asyncio
@pytest.mark.timeout(2400)
async def test_two_node_quickstart_as_pods(cluster: Cluster, prometheus: str, tmp_path: Path) -> None:
    c = cluster
    doc = manifests.quickstart(c, RUN, nodes=2)
    await c.create("SAETrainingRun", doc)

    pods = await c.wait("two running pods", lambda: len(c.runner.running(RUN)) == 2 and c.runner.running(RUN))
    rank0, rank1 = pods
    assert rank0.index == 0 and rank1.index == 1 and rank0.ip != rank1.ip
    for rec in pods:  # what the pods run with, as rendered
        ctx = rec.container["securityContext"]
        assert ctx["runAsUser"] == 1000 and ctx["allowPrivilegeEscalation"] is False
        assert ctx.get("readOnlyRootFilesystem") is True, "rendered pods must run with a read-only root"
    # Rendezvous and metrics listen on the rank-0 pod's address only, not on every interface.
    await c.wait("rank 0 serving /metrics", lambda: rank0.ip in listeners(9400), 900)
    assert listeners(9400) == {rank0.ip} and listeners(29500) == {rank0.ip}
    for rec in pods:  # every socket a pod listens on (gloo's too) is on its own address
        assert rec.cid is not None
        addrs = container_listeners(c, rec.cid)
        assert addrs and {a.rsplit(":", 1)[0] for a in addrs} == {rec.ip}, (rec.name, addrs)
    # Prometheus found the pod and scraped it while it trained.
    series = await c.wait("Prometheus scraping rank 0", lambda: query(
        prometheus, f'saeops_tokens_total{{run="{RUN}",kubernetes_pod_name="{rank0.name}"}}'), 300)
    assert float(series[0]["value"][1]) == doc["spec"]["trainer"]["totalTrainingTokens"]

    run = await c.phase("SAETrainingRun", RUN, "Succeeded", timeout=1500)
    final = c.s3_json(f"runs/{RUN}/metrics.json")["final"]
    for key in ("l0", "explained_variance"):
        assert float(run["metrics"][key]) == pytest.approx(final[key], rel=1e-3), (key, run["metrics"], final)
    assert set(c.s3_keys(f"runs/{RUN}/")) >= {f"runs/{RUN}/{f}" for f in ("sae.safetensors", "config.json", "metrics.json")}
    assert run["restarts"] == 0

    # Both nodes trained in one world of two; rank 0's termination message carries the result.
    assert "rank 0/2" in c.runner.log_of(rank0) and "rank 1/2" in c.runner.log_of(rank1)
    term = json.loads(c.get("Pod", rank0.name)["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert term["final"]["explained_variance"] == final["explained_variance"]
    assert term["lastCheckpoint"].startswith(f"s3://{c.bucket}/runs/{RUN}/checkpoints/")
    ev = await asyncio.to_thread(query, prometheus, f'max_over_time(saeops_explained_variance{{run="{RUN}"}}[1h])')
    assert ev, "Prometheus kept no explained-variance samples of the run"

    local = await asyncio.to_thread(saeops_run_in_image, c, doc, tmp_path, 2)
    print(f"explained variance: two pods {final['explained_variance']!r}, saeops run {local['explained_variance']!r}")
    assert abs(local["explained_variance"] - final["explained_variance"]) <= 1e-6, (local, final)
    assert local["l0"] == pytest.approx(final["l0"], abs=1e-6)
