"""A real Prometheus server scrapes the runtime's /metrics; L0 and EV come back through its HTTP API.

The metrics source (`metrics_source`) is a real tiny training run started with `saeops run
--metrics-port`; the values Prometheus returns must equal the final ones the run wrote to metrics.json.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus binary is not installed "
                                "(apt-get install -y --no-install-recommends prometheus)")

DEADLINE_S = 60.0
POLL_S = 0.2
JOB = "saeops-runtime"


@dataclass
class MetricsSource:
    """Where the runtime serves /metrics and what it reported (metric name -> value)."""

    port: int
    labels: dict[str, str]
    expected: dict[str, float] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], what: str, deadline_s: float = DEADLINE_S) -> Any:
    """Poll `check` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    pause = threading.Event()
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, urllib.error.URLError, ValueError) as e:
            last_error = e
        pause.wait(POLL_S)
    raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what} (last error: {last_error})")


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read().decode())


@pytest.fixture
def metrics_source(tmp_path: Path) -> Iterator[MetricsSource]:
    """A real (tiny) training run serving /metrics on 127.0.0.1; once it has written metrics.json it
    keeps serving its final values (`spec.metrics.lingerSeconds`) until the test ends it."""
    import os
    import signal
    import sys

    from tests.runtime.conftest import tiny_run_doc

    doc = tiny_run_doc(tmp_path)
    doc["metadata"].update(name="prom-test", namespace="saeops-tests")
    doc["spec"]["metrics"] = {"lingerSeconds": 300}
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(doc), encoding="utf-8")
    port = free_port()
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "saeops.cli", "run", str(manifest), "--no-progress",
                             "--metrics-port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    metrics_json = tmp_path / "out" / "metrics.json"
    try:
        wait_for(lambda: proc.poll() is not None or metrics_json.exists(), "the training run to finish", 180)
        assert proc.poll() is None, (tmp_path / "run.log").read_text()
        final = json.loads(metrics_json.read_text())["final"]
        yield MetricsSource(
            port=port,
            labels={"run": "prom-test", "namespace": "saeops-tests", "hook_point": "blocks.1.hook_resid_post"},
            expected={"saeops_l0": final["l0"], "saeops_explained_variance": final["explained_variance"]},
        )
    finally:
        proc.send_signal(signal.SIGTERM)  # ends the linger; the run has already finished
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(timeout=15)
        log.close()
    assert code == 0, (tmp_path / "run.log").read_text()


def prometheus_config(target_port: int) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": JOB,
            "honor_labels": True,  # as the chart's PodMonitor: the runtime's namespace label wins
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
        }],
    }


@pytest.fixture
def prometheus(metrics_source: MetricsSource, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping `metrics_source`; yields its base URL."""
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(metrics_source.port)), encoding="utf-8")
    if PROMTOOL is not None:
        check = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True,
                               timeout=60, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200,
                 "Prometheus to be ready")
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


def query(url: str, promql: str) -> list[dict[str, Any]]:
    body = http_json(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_l0_and_ev_from_the_runtime(prometheus: str, metrics_source: MetricsSource) -> None:
    for metric, value in metrics_source.expected.items():
        # Earlier scrapes may have caught mid-training values: wait for the final one.
        series = wait_for(lambda m=metric, v=value: [s for s in query(prometheus, m)
                                                     if float(s["value"][1]) == pytest.approx(v, rel=1e-6)],
                          f"{metric} = {value} in Prometheus")
        (sample,) = series
        labels = sample["metric"]
        for key, expected in metrics_source.labels.items():
            assert labels[key] == expected, (metric, labels)
        assert labels["job"] == JOB


def test_prometheus_sees_the_target_up_and_every_contract_metric(prometheus: str,
                                                                  metrics_source: MetricsSource) -> None:
    from saeops.runtime.telemetry import LOSS_GAUGE

    up = wait_for(lambda: [s for s in query(prometheus, f'up{{job="{JOB}"}}') if s["value"][1] == "1"],
                  "the runtime target to be up")
    assert len(up) == 1
    loss = wait_for(lambda: query(prometheus, LOSS_GAUGE), "loss terms")
    assert {"total", "mse"} <= {s["metric"]["term"] for s in loss}
    # The names the Grafana dashboard and the operator rely on are discoverable through the API.
    names = set(http_json(f"{prometheus}/api/v1/label/__name__/values")["data"])
    assert set(metrics_source.expected) <= names


def test_generated_config_passes_promtool(tmp_path: Path) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(9400)), encoding="utf-8")
    out = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
