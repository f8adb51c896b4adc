"""2-rank runs under torchrun: preemption, kill -9 with elastic restart, failing and hung
ranks, and a tensor-parallel run whose artifacts and checkpoints load on one process."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from saeops.api import load_resource
from saeops.runtime.distributed import EXIT_PREEMPTED, PREEMPTED_MARKER
from saeops.runtime.launch import run_resource
from saeops.runtime.models import load_dictionary
from tests.distributed.conftest import (
    PYTHON,
    assert_bitwise,
    latest_step,
    manifest,
    saeops_run,
    weights,
    write_manifest,
)


@pytest.fixture(scope="module")
def uninterrupted_dp(cache: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dp") / "out"
    res = saeops_run(write_manifest(out.parent / "m.json", manifest(out, cache, data=2, interval=4)))
    assert res.returncode == 0, res.stdout[-4000:]
    return out


def test_sigterm_to_torchrun_checkpoints_exits_preempted_and_resumes_exactly(
        cache: str, uninterrupted_dp: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = write_manifest(tmp_path / "m.json", manifest(out, cache, data=2, interval=4, max_restarts=1))
    # Rank 1 signals its parent, the torchrun agent, as Kubernetes signals the pod's main process.
    res = saeops_run(spec, env={"SAEOPS_FAULT": "sigterm-parent@step:step=13,rank=1"})
    assert res.returncode == EXIT_PREEMPTED, res.stdout[-4000:]
    assert 13 <= latest_step(out) < 32
    assert (out / "checkpoints" / PREEMPTED_MARKER).exists()
    res = saeops_run(spec)
    assert res.returncode == 0, res.stdout[-4000:]
    assert_bitwise(weights(out), weights(uninterrupted_dp))


def test_kill_9_worker_torchrun_restarts_and_result_is_unchanged(
        cache: str, uninterrupted_dp: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = write_manifest(tmp_path / "m.json", manifest(out, cache, data=2, interval=4, max_restarts=1))
    # SIGKILL on rank 1 after step 14 (last checkpoint: 12), first attempt only.
    res = saeops_run(spec, env={"SAEOPS_FAULT": "kill@step:step=14,rank=1"})
    assert res.returncode == 0, res.stdout[-4000:]
    assert "resumed from checkpoint at step 12" in res.stdout
    assert_bitwise(weights(out), weights(uninterrupted_dp))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_raising_rank_makes_the_other_exit_with_an_error(cache: str, tmp_path: Path) -> None:
    # Plain processes, no torchrun agent to clean up: rank 0 must fail on its own.
    spec = write_manifest(tmp_path / "m.json", manifest(tmp_path / "out", cache, data=2, steps=200))
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
            "SAEOPS_DIST_TIMEOUT_S": "20", "SAEOPS_FAULT": "raise@step:step=3,rank=1"}
    procs = [subprocess.Popen([PYTHON, "-m", "saeops.runtime.entrypoint", "--spec", spec, "--no-progress"],
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    t0 = time.monotonic()
    try:
        codes = [p.wait(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes[1] != 0 and codes[0] != 0, codes
    assert time.monotonic() - t0 < 90


def test_a_hung_rank_times_out_instead_of_hanging(cache: str, tmp_path: Path) -> None:
    spec = write_manifest(tmp_path / "m.json", manifest(tmp_path / "out", cache, data=2, steps=200))
    t0 = time.monotonic()
    res = saeops_run(spec, env={"SAEOPS_DIST_TIMEOUT_S": "10", "SAEOPS_FAULT": "hang@step:step=3,rank=1"},
                     timeout=120)
    assert res.returncode not in (0, EXIT_PREEMPTED), res.stdout[-3000:]
    assert time.monotonic() - t0 < 120


def test_tensor_parallel_run_saves_unsharded_and_resumes_on_one_process(cache: str, tmp_path: Path) -> None:
    tp, single = tmp_path / "tp", tmp_path / "single"
    res = saeops_run(write_manifest(tmp_path / "tp.json", manifest(tp, cache, tensor=2, steps=16)))
    assert res.returncode == 0, res.stdout[-4000:]
    assert run_resource(load_resource(write_manifest(tmp_path / "s.json", manifest(single, cache, steps=16))),
                        progress=False) == 0
    a, b = weights(tp), weights(single)  # data=1: both read the same batches
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    loaded = load_dictionary(tp)
    assert loaded.W_dec.shape == (64, 16)
    # The tensor-parallel checkpoint continues in one process (a longer run of the same spec).
    longer = write_manifest(tmp_path / "more.json", manifest(tp, cache, steps=24))
    assert run_resource(load_resource(longer), progress=False) == 0
    assert latest_step(tp) == 24
