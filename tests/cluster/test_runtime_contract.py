"""What the runtime does for its pod, without a container: the termination message, servers on
the pod IP, and the launcher's rendezvous store on one address."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from saeops.api import layout
from saeops.runtime import entrypoint, launch, telemetry
from saeops.runtime.distributed import launcher


def test_no_termination_log_outside_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(launch.TERMINATION_LOG_ENV, raising=False)
    expected = Path(layout.TERMINATION_LOG) if Path(layout.TERMINATION_LOG).is_file() else None
    assert launch.termination_log() == expected
    monkeypatch.setattr(launch.layout, "TERMINATION_LOG", "/nonexistent/termination-log")
    assert launch.termination_log() is None
    launch.write_termination_message({"final": {}})  # nowhere to write: a no-op, never an error


def test_termination_message_is_compact_json_or_one_line_and_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv(launch.TERMINATION_LOG_ENV, str(log))
    launch.write_termination_message({"final": {"l0": 32.0}, "lastCheckpoint": None})
    assert log.read_text() == '{"final":{"l0":32.0},"lastCheckpoint":null}'
    launch.write_termination_message("error: spec.model.path: x does not exist")
    assert log.read_text() == "error: spec.model.path: x does not exist"
    launch.write_termination_message("e" * 10_000)
    assert len(log.read_bytes()) == launch.MAX_TERMINATION_MESSAGE


def test_final_summary_keeps_the_contract_keys() -> None:
    final = {"l0": 1, "explained_variance": 0.5, "mse": 0.1, "dead_fraction": 0, "dense_fraction": 0, "tokens": 8,
             "seconds": 2.5, "loss": 3.0, "loss_recovered": 0.9}
    assert launch._final_summary(final) == {k: float(final[k]) for k in launch.FINAL_KEYS}


def test_bad_input_exits_2_with_the_error_as_termination_message(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv(launch.TERMINATION_LOG_ENV, str(log))
    assert entrypoint.main(["--spec", str(tmp_path / "missing.yaml")]) == 2
    message = log.read_text()
    assert message.startswith("error: ") and "missing.yaml" in message and "\n" not in message


def test_unexpected_failure_exits_1_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv(launch.TERMINATION_LOG_ENV, str(log))

    def boom(*args: object, **kwargs: object) -> int:
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(launch, "run_resource", boom)
    spec = tmp_path / "run.json"
    from tests.runtime.conftest import tiny_run_doc

    spec.write_text(json.dumps(tiny_run_doc(tmp_path)))
    assert entrypoint.main(["--spec", str(spec)]) == 1
    assert log.read_text() == "error: RuntimeError: disk on fire"


def test_metrics_bind_the_pod_ip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(telemetry.POD_IP_ENV, "127.0.0.77")
    assert telemetry.bind_address() == "127.0.0.77"
    m = telemetry.RunMetrics("r", "ns")
    port = m.serve(0)
    try:
        assert m._server is not None and m._server.server_address[0] == "127.0.0.77"
        m.update("h", {"checkpoint_step": 12})
        with urllib.request.urlopen(f"http://127.0.0.77:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert 'saeops_checkpoint_step{hook_point="h",namespace="ns",run="r"} 12.0' in text
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        m.close()
    monkeypatch.delenv(telemetry.POD_IP_ENV)
    assert telemetry.bind_address() == "0.0.0.0"


def test_store_listens_on_one_address_and_torchrun_reuses_it() -> None:
    """The store server binds the given address; torchrun's own multi-tenant store on that port
    in the same process is the same server (it would otherwise listen on every interface)."""
    code = """
import datetime, socket, sys
import torch.distributed as dist
from saeops.runtime.distributed import launcher
port = launcher.serve_store("127.0.0.78", 0)
theirs = dist.TCPStore("127.0.0.78", port, 1, True, datetime.timedelta(seconds=30), multi_tenant=True)
theirs.set("k", "v")
assert launcher._held[1].get("k") == b"v"
try:
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    sys.exit("the store answered on 127.0.0.1")
except OSError:
    pass
print("ok", port)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr


def test_master_port_rewrite() -> None:
    argv = ["--nnodes=1", "--master-port=0", "-m", "x", "--master-port", "7"]
    assert launcher._with_port(argv, 1234) == ["--nnodes=1", "--master-port=1234", "-m", "x", "--master-port", "7"]
    assert launcher._with_port(["--master_port", "0", "s.py"], 9) == ["--master-port=9", "s.py"]
    cmd = launcher.torchrun_command("/s.json", 2, 3, progress=False)
    assert cmd[1:3] == ["-m", "saeops.runtime.distributed.launcher"] and "--master-addr=127.0.0.1" in cmd
    assert "--master-port=0" in cmd and cmd[-1] == "--no-progress"
