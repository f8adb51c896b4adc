"""bench/gpu/run.py works before any GPU time is spent: its tiny CPU mode end to end, its
fail-soft parts, its bad input, and the parsing of the outputs it reads."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
GPU = REPO / "bench" / "gpu"
sys.path.insert(0, str(GPU))

import report  # noqa: E402
import run as run_py  # noqa: E402
import shapes  # noqa: E402
import synth  # noqa: E402


def run(out: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GPU / "run.py"), "--tiny", "--out", str(out), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip


def results(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    lines = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    return lines[0], [r for r in lines[1:] if r["part"] == "step"], [r for r in lines[1:] if r["part"] == "peer"]


def test_tiny_run_measures_every_part_and_writes_the_table(tmp_path: Path) -> None:
    keys = ["small-fp32", "gemma-bf16"]  # one fp32 and one bf16 shape keep CI short
    proc = run(tmp_path, "--shapes", ",".join(keys))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert {"env.log", "tests.log", "step.log", "peers.log", "run.log", "results.md", "results.jsonl"} <= {
        p.name for p in tmp_path.iterdir()
    }
    head, step, peers = results(tmp_path)
    parts = {p["name"]: p for p in head["parts"]}
    tests = next(p for name, p in parts.items() if name.startswith("kernel tests"))
    assert tests["status"] == "ok" and " passed" in tests["note"] and "failed" not in tests["note"]

    # The step benchmark: bench_gpu.py's own rows, parsed, at every shape.
    assert [r["shape"] for r in step] == keys
    for r in step:
        rows = r["rows"]
        assert rows[report.GEMM]["over_gemm"] == 1.0
        assert rows[report.TORCH]["median_ms"] > 0 and rows[report.DENSE]["over_dense"] == 1.0

    # Peers: saeops always; sparsify and SAELens where an interpreter has them.
    by = {(r["library"], r["shape"]): r for r in peers}
    for lib in ("saeops", "sparsify", "sae-lens"):
        for key in keys:
            row = by[(lib, key)]
            if lib != "saeops" and row["status"].startswith("not installed"):
                continue
            assert row["status"] == "ok", row
            shape = shapes.select(True, key)[0]
            assert row["tokens"] == shape.steps * shape.batch and row["l0"] == pytest.approx(shape.k)
            assert row["tokens_per_s"] > 0 and row["step_over_gemm"] > 0 and row["peak_mib"] > 0
            assert math.isfinite(row["ev"]) and row["ev"] <= 1
    assert all(by[("saeops", k)]["ev"] > 0.2 for k in keys)  # a working SAE (init + 6 steps), not noise
    for key in keys:  # every runner generated the same activations
        assert len({r["data"] for r in peers if r["shape"] == key and r["status"] == "ok"}) == 1

    md = (tmp_path / "results.md").read_text()
    assert proc.stdout.rstrip().endswith(md.rstrip().splitlines()[-1])
    for key in keys:
        assert f"| {key} | saeops " in md and f"| {key} (" in md


def test_a_broken_peer_leaves_the_others_and_a_missing_one_reads_not_installed(tmp_path: Path) -> None:
    if subprocess.run([sys.executable, "-c", "import sparsify"], capture_output=True).returncode == 0:
        pytest.skip("this interpreter has sparsify")
    # SAELens' "interpreter" fails at once; sparsify's runner starts after it, in an
    # interpreter without sparsify, and says so itself (exit 3).
    env = dict(os.environ, SAEOPS_SAELENS_PYTHON="/bin/false", SAEOPS_SPARSIFY_PYTHON=sys.executable)
    proc = run(tmp_path, "--parts", "env,peers", "--peers", "sae-lens,sparsify", env=env)
    assert proc.returncode == 1, proc.stdout[-3000:]  # a part failed, yet everything was written
    head, _, peers = results(tmp_path)
    status = {p["name"]: p["status"] for p in head["parts"]}
    assert status == {"env": "ok", "peer sae-lens": "failed (exit 1)",
                      "peer sparsify": "not installed (SAEOPS_SPARSIFY_PYTHON lacks it)"}
    assert len(peers) == 8
    assert all(r["status"] == "failed (runner exited 1)" for r in peers if r["library"] == "sae-lens")
    assert all(r["status"].startswith("not installed (No module named") for r in peers if r["library"] == "sparsify")
    md = (tmp_path / "results.md").read_text()
    assert "| small-fp32 | sae-lens | failed (runner exited 1) |" in md


def test_peer_interpreter_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SAEOPS_SPARSIFY_PYTHON", str(tmp_path / "nope"))
    assert run_py.peer_python("sparsify", "SAEOPS_SPARSIFY_PYTHON", ()) == (
        None, f"SAEOPS_SPARSIFY_PYTHON={tmp_path / 'nope'} does not exist")
    monkeypatch.delenv("SAEOPS_SPARSIFY_PYTHON")
    assert run_py.peer_python("saeops.runtime", None, ()) == (sys.executable, "this interpreter")
    assert run_py.peer_python("json", "X", ()) == (sys.executable, "this interpreter")
    py, why = run_py.peer_python("no_such_module_here", "SAEOPS_X_PYTHON", ("nowhere/python",))
    assert py is None and "set SAEOPS_X_PYTHON" in why


def test_a_hanging_part_is_killed_at_the_budget_and_reported(tmp_path: Path) -> None:
    hang = tmp_path / "hang"  # an "interpreter" that never finishes, with a child of its own
    hang.write_text("#!/bin/sh\nsleep 300 &\nwait\n")
    hang.chmod(0o755)
    env = dict(os.environ, SAEOPS_SAELENS_PYTHON=str(hang))
    t0 = time.monotonic()
    proc = run(tmp_path / "out", "--parts", "peers", "--peers", "sae-lens", "--budget", "8", env=env)
    assert time.monotonic() - t0 < 60 and proc.returncode == 1
    head, _, peers = results(tmp_path / "out")
    assert head["parts"][0]["status"].startswith("failed (timed out after")
    assert len(peers) == 4 and all(r["status"] == "failed (timed out)" for r in peers)


@pytest.mark.parametrize(("args", "field"), [(["--shapes", "huge-fp8"], "--shapes"), (["--parts", "env,bake"], "--parts")])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path: Path, args: list[str], field: str) -> None:
    out = tmp_path / "out"
    proc = run(out, *args, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {field}") and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_parses_the_step_table_of_the_last_h200_run() -> None:
    text = (REPO / "bench/kernels/logs/h200-2026-11-27-bench.log").read_text()
    first = text.split("== bench_gpu.py --dtype bf16\n")[0]
    rows = report.parse_step_table(first)
    assert rows[report.TRITON] == {"median_ms": 3.6, "min_ms": 3.5, "over_gemm": 2.11, "over_dense": 0.31}
    assert rows[report.GEMM]["median_ms"] == 1.7 and rows["decode fwd+bwd (torch)"]["over_gemm"] == 0.61
    assert not any(name.startswith(("path", "Name", "-")) for name in rows)  # profiler tables skipped


def test_pytest_summary_takes_the_final_line() -> None:
    text = "tests/a.py ....F\n= 1 failed, 105 passed in 17.16s =\n"
    assert report.pytest_summary(text) == "1 failed, 105 passed in 17.16s"
    assert report.pytest_summary("ImportError: nope\n") == ""


def test_synthetic_activations_are_deterministic_and_structured() -> None:
    dev = torch.device("cpu")
    a_train, a_eval = synth.activations(32, 600, 300, dev, seed=3)
    b_train, _ = synth.activations(32, 600, 300, dev, seed=3)
    c_train, _ = synth.activations(32, 600, 300, dev, seed=4)
    assert a_train.shape == (600, 32) and a_eval.shape == (300, 32)
    assert torch.equal(a_train, b_train) and synth.fingerprint(a_train) == synth.fingerprint(b_train)
    assert not torch.equal(a_train, c_train) and not torch.equal(a_train[:300], a_eval)
    # A decaying (power-law-like) spectrum, not white noise: ~10x from the first to the last direction.
    eig = torch.linalg.svdvals(a_train - a_train.mean(0)) ** 2
    assert eig[0] > 8 * eig[-1] and eig[0] > 2.5 * eig[16]
