"""Data / tensor parallel runs equal a single process on the same global batches."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.distributed.conftest import PYTHON, manifest, run_proc, weights, write_manifest
from tests.distributed.workers import dp_job

WORKERS = str(Path(__file__).with_name("workers.py"))


def torchrun(procs: int, *args: str) -> None:
    res = run_proc([PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
                    WORKERS, *args])
    assert res.returncode == 0, res.stdout[-4000:]


def test_data_parallel_job_equals_single_process(tmp_path: Path) -> None:
    # The synthetic source gives rank r rows [r*B/2, (r+1)*B/2) of the single process's batches.
    single = write_manifest(tmp_path / "single.json", manifest(tmp_path / "single", "unused", steps=12))
    two = write_manifest(tmp_path / "dp.json", manifest(tmp_path / "dp", "unused", steps=12, data=2))
    torchrun(2, "dp-job", two)
    dp_job(single)
    a, b = weights(tmp_path / "single"), weights(tmp_path / "dp")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    m_single = json.loads((tmp_path / "single" / "metrics.json").read_text())["final"]
    m_dp = json.loads((tmp_path / "dp" / "metrics.json").read_text())["final"]
    assert m_dp["tokens"] == m_single["tokens"] == 12 * 64
    assert m_dp["l0"] == m_single["l0"] == 4.0
    assert abs(m_dp["mse"] - m_single["mse"]) < 1e-3 * max(m_single["mse"], 1e-6)
    assert m_dp["dead_fraction"] == m_single["dead_fraction"]


def _reports(prefix: Path, procs: int) -> list[dict]:
    return [json.loads(Path(f"{prefix}.rank{r}.json").read_text()) for r in range(procs)]


def test_tensor_parallel_topk_and_batchtopk_equal_single_process(tmp_path: Path) -> None:
    torchrun(2, "tp-equal", str(tmp_path / "tp"), "1", "2")
    for report in _reports(tmp_path / "tp", 2):
        for act_fn in ("topk", "batchtopk"):
            assert report[act_fn]["same_selection"], act_fn
            assert report[act_fn]["max_abs_diff"] < 1e-5, (act_fn, report[act_fn])
            assert report[act_fn]["optimizer_diff"] < 1e-5, (act_fn, report[act_fn])


def test_mesh_two_data_by_one_tensor_equals_single_process(tmp_path: Path) -> None:
    # BatchTopK included: its selection spans the data ranks (the global batch).
    torchrun(2, "tp-equal", str(tmp_path / "mesh"), "2", "1")
    for report in _reports(tmp_path / "mesh", 2):
        for act_fn in ("topk", "batchtopk"):
            assert report[act_fn]["same_selection"], act_fn
            assert report[act_fn]["max_abs_diff"] < 1e-5, (act_fn, report[act_fn])
