"""Helpers for the distributed tests: a small activation cache, run manifests, and processes
started with hard deadlines (a hung test fails instead of blocking the suite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

PYTHON = sys.executable
D_MODEL = 16
DEADLINE_S = 150
"""Hard limit for one launched process tree (torchrun start is ~5-10 s on a busy machine)."""


def make_cache(path: Path, *, shards: int = 8, tokens_per_shard: int = 512) -> str:
    """A cache of sparse synthetic activations (no language model needed)."""
    from saeops.runtime.cache import CacheWriter

    g = torch.Generator().manual_seed(0)
    n = shards * tokens_per_shard
    feats = torch.randn(64, D_MODEL, generator=g)
    codes = torch.rand(n, 64, generator=g) * (torch.rand(n, 64, generator=g) < 0.05)
    acts = codes @ feats + 0.01 * torch.randn(n, D_MODEL, generator=g)
    w = CacheWriter(str(path), ["h"], D_MODEL, torch.float32, tokens_per_shard=tokens_per_shard,
                    identity={"model": {"name": "synthetic"}}, background=False)
    w.write({"h": acts}, torch.zeros(n, dtype=torch.int32), torch.arange(n, dtype=torch.int32),
            torch.zeros(n, dtype=torch.int64))
    w.finalize()
    return str(path)


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_cache(tmp_path_factory.mktemp("cache") / "c")


def manifest(out: Path | str, cache_uri: str, *, data: int = 1, tensor: int = 1, steps: int = 32,
             batch: int = 64, interval: int = 8, act_fn: str = "topk", max_restarts: int = 0,
             d_sae: int = 64) -> dict[str, Any]:
    """An SAETrainingRun manifest training from `cache_uri` into `out`."""
    return {
        "apiVersion": "saeops.io/v1alpha1",
        "kind": "SAETrainingRun",
        "metadata": {"name": "dist-test"},
        "spec": {
            "model": {"name": "synthetic", "native": {}},
            "activations": {"cacheUri": cache_uri},
            "sae": {"type": "sae", "hookPointIn": "h", "dSae": d_sae, "actFn": act_fn, "topK": 4},
            "initializer": {"initTokens": 512},
            "trainer": {"totalTrainingTokens": steps * batch, "batchSize": batch, "lr": 3e-3,
                        "logFrequency": 4, "checkpointInterval": interval, "progressBar": False},
            "parallelism": {"data": data, "tensor": tensor},
            "resources": {"numProcPerNode": data * tensor},
            "failurePolicy": {"maxRestarts": max_restarts},
            "output": {"storageUri": str(out)},
        },
    }


def write_manifest(path: Path, m: dict[str, Any]) -> str:
    path.write_text(json.dumps(m))
    return str(path)


def run_proc(args: list[str], *, env: dict[str, str] | None = None, timeout: float = DEADLINE_S,
             cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion under a hard deadline (the whole process group is killed
    on expiry, so no torchrun worker outlives a test)."""
    full_env = {**os.environ, "SAEOPS_DIST_TIMEOUT_S": "90", **(env or {})}
    proc = subprocess.Popen(args, env=full_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        raise AssertionError(f"{args} did not finish within {timeout}s:\n{out[-4000:]}") from None
    return subprocess.CompletedProcess(args, proc.returncode, out, "")


def saeops_run(spec_path: str, *, env: dict[str, str] | None = None,
               timeout: float = DEADLINE_S) -> subprocess.CompletedProcess[str]:
    """`saeops run SPEC` in a subprocess (launches torchrun itself when parallelism > 1)."""
    return run_proc([PYTHON, "-m", "saeops.cli", "run", spec_path, "--no-progress"], env=env,
                    timeout=timeout)


def weights(out: Path | str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "sae.safetensors"))


def latest_step(out: Path | str) -> int:
    return int(json.loads((Path(out) / "checkpoints" / "latest.json").read_text())["step"])


def assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs (max {float((a[k] - b[k]).abs().max()):.3g})"
