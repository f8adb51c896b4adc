"""Checkpoints: SIGTERM stops at a step boundary with a checkpoint, resume is bitwise exact,
and a checkpoint interrupted mid-write is never resumed from (single process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saeops.api import load_resource
from saeops.runtime.distributed import EXIT_PREEMPTED, PREEMPTED_MARKER
from saeops.runtime.launch import run_resource
from tests.distributed.conftest import (
    assert_bitwise,
    latest_step,
    manifest,
    saeops_run,
    weights,
    write_manifest,
)


def run_here(spec_path: str) -> int:
    return run_resource(load_resource(spec_path), progress=False)


@pytest.fixture(scope="module")
def uninterrupted(cache: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    assert run_here(write_manifest(out.parent / "m.json", manifest(out, cache))) == 0
    return out


def test_sigterm_checkpoints_and_resume_is_bitwise_exact(cache: str, uninterrupted: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_manifest(tmp_path / "m.json", manifest(tmp_path / "out", cache))
    monkeypatch.setenv("SAEOPS_FAULT", "sigterm@step:step=13")
    assert run_here(spec) == EXIT_PREEMPTED
    step = latest_step(tmp_path / "out")
    assert step in (13, 14)  # the step boundary after the signal, not the interval (8)
    assert (tmp_path / "out" / "checkpoints" / PREEMPTED_MARKER).exists()
    assert not (tmp_path / "out" / "sae.safetensors").exists()
    monkeypatch.delenv("SAEOPS_FAULT")
    assert run_here(spec) == 0
    assert not (tmp_path / "out" / "checkpoints" / PREEMPTED_MARKER).exists()
    assert_bitwise(weights(tmp_path / "out"), weights(uninterrupted))
    history = json.loads((tmp_path / "out" / "metrics.json").read_text())["history"]
    assert [int(h["step"]) for h in history] == list(range(4, 33, 4))


def test_checkpoint_killed_mid_write_is_never_latest(cache: str, uninterrupted: Path, tmp_path: Path) -> None:
    spec = write_manifest(tmp_path / "m.json", manifest(tmp_path / "out", cache))
    # Dies after step 16's state file is written and before `latest` moves to it.
    res = saeops_run(spec, env={"SAEOPS_FAULT": "exit@checkpoint-written:step=16"})
    assert res.returncode != 0, res.stdout[-3000:]
    ckpt = tmp_path / "out" / "checkpoints"
    assert (ckpt / "step-00000016" / "manifest.json").exists()
    assert latest_step(tmp_path / "out") == 8
    assert run_here(spec) == 0  # resumes from 8, rewrites 16, finishes
    assert_bitwise(weights(tmp_path / "out"), weights(uninterrupted))
    assert latest_step(tmp_path / "out") == 32
    assert sorted(p.name for p in ckpt.glob("step-*")) == ["step-00000024", "step-00000032"]
