"""`spec.trainer.wandb`: a real run logs to W&B in offline mode (the run directory it writes is
read back), and a missing `wandb` package fails at start with one `error:` line."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saeops.runtime.telemetry import GAUGES
from tests.distributed.conftest import make_cache, manifest, write_manifest

wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")
BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of 7-byte-headed chunks
ROOT = Path(__file__).resolve().parents[2]


def records(path: Path) -> Iterator[Any]:
    """The protobuf records of an offline run's `run-<id>.wandb` file."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    off, parts = 7, []
    while off + 7 <= len(data):
        if BLOCK - off % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            off += BLOCK - off % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[off:off + 7])
        parts.append(data[off + 7:off + 7 + length])
        off += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_pb.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def _spec(tmp_path: Path) -> str:
    m = manifest(tmp_path / "out", make_cache(tmp_path / "cache", shards=2), steps=12, interval=4)
    m["spec"]["trainer"]["wandb"] = {"project": "saeops-test", "name": "offline-check"}
    return write_manifest(tmp_path / "run.json", m)


def saeops_run(spec_path: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`saeops run` in a fresh process (W&B's service writes the run file out when it exits)."""
    return subprocess.run([sys.executable, "-m", "saeops.cli", "run", spec_path, "--no-progress"],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env}, timeout=300)


def test_offline_run_logs_prometheus_metrics_config_and_artifacts(tmp_path: Path) -> None:
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wb"), "WANDB_SILENT": "true",
           "PYTHONPATH": str(ROOT)}
    proc = saeops_run(_spec(tmp_path), env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    (run_file,) = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    config: dict[str, Any] = {}
    artifacts = []
    for r in records(run_file):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "run":
            config = {i.key: json.loads(i.value_json) for i in r.run.config.update}
        elif kind == "artifact":
            artifacts.append((r.artifact.type, sorted(f.path for f in r.artifact.manifest.contents)))

    # The config is the run manifest.
    assert config["metadata"]["name"] == "dist-test" and config["spec"]["trainer"]["wandb"]["project"] == "saeops-test"
    # Every logging step (logFrequency 4 of 12 steps) carries every metric Prometheus serves.
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    logged = [h for h in history if "l0" in h]
    assert [h["_step"] for h in logged] == [4, 8, 12]
    expected = {name.removeprefix("saeops_") for name in GAUGES} | {"loss/total", "loss/mse"}
    for row, values in zip(logged, metrics["history"], strict=True):
        assert expected <= set(row), expected - set(row)
        assert row["explained_variance"] == values["explained_variance"] and row["l0"] == values["l0"]
        assert row["loss/mse"] == values["loss_mse"] and row["tokens_processed"] == values["tokens"]
    # The checkpoint steps (interval 4), the final metrics, and the artifacts of the run.
    assert [h["checkpoint_step"] for h in logged] == [4, 8, 12] and summary["checkpoint_step"] == 12
    assert summary["explained_variance"] == metrics["final"]["explained_variance"]
    assert artifacts == [("model", ["config.json", "metrics.json", "sae.safetensors"])]


def test_missing_wandb_fails_at_start_with_one_error_line(tmp_path: Path) -> None:
    # A `wandb` package that cannot be imported, first on the path.
    blocker = tmp_path / "blocker" / "wandb"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('wandb is not installed')\n")
    proc = saeops_run(_spec(tmp_path), {"PYTHONPATH": f"{blocker.parent}:{ROOT}"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: spec.trainer.wandb is set but the wandb package is not installed: "
                      "pip install 'saeops[wandb]'"], proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()  # nothing written
