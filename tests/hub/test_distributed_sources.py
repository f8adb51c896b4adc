"""A 2-rank run under torchrun with the model from the (fake) hub and the text from S3: one process
downloads while the other waits, the ranks read disjoint windows, and a rank killed mid-run is
restarted from the checkpoint and ends with the weights of an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.distributed.conftest import assert_bitwise, saeops_run, weights
from tests.hub.conftest import upload_dir
from tests.hub.fake_hub import FakeHub


def manifest(out: Path, dataset: str) -> dict[str, Any]:
    return {
        "apiVersion": "saeops.io/v1alpha1", "kind": "SAETrainingRun", "metadata": {"name": "dist-hub"},
        "spec": {
            "model": {"name": "tiny-gpt2", "path": "hf://org/tiny-gpt2", "batchSize": 8, "device": "cpu"},
            "dataset": {"path": dataset, "contextSize": 32},
            "activations": {"bufferSize": 512},
            "sae": {"type": "sae", "hookPointIn": "blocks.1.hook_resid_post", "dSae": 64, "actFn": "topk",
                    "topK": 4},
            "initializer": {"initTokens": 256},
            "trainer": {"totalTrainingTokens": 16 * 128, "batchSize": 128, "lr": 3e-3, "logFrequency": 4,
                        "checkpointInterval": 4, "progressBar": False},
            "parallelism": {"data": 2},
            "resources": {"numProcPerNode": 2},
            "failurePolicy": {"maxRestarts": 1},
            "output": {"storageUri": str(out)},
        },
    }


@pytest.mark.slow
def test_two_ranks_from_hub_and_s3_resume_after_a_kill(hub: FakeHub, s3_bucket: str, s3_server: str,
                                                       corpus: Path, tmp_path: Path) -> None:
    dataset = upload_dir(s3_bucket, "data/docs", corpus)
    # The C++ kernels are beside the point here; loading them costs minutes on a busy machine.
    env = {"HF_ENDPOINT": hub.url, "AWS_ENDPOINT_URL": s3_server, "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "SAEOPS_CPU_EXT": "0"}
    runs = {}
    for name, fault in (("uninterrupted", None), ("killed", "kill@step:step=10,rank=1")):
        out = tmp_path / name
        spec = tmp_path / f"{name}.json"
        spec.write_text(json.dumps(manifest(out, dataset)))
        before = [p for p in hub.downloads() if p.endswith("model.safetensors")]
        res = saeops_run(str(spec), env={**env, "SAEOPS_CACHE_DIR": str(tmp_path / f"cache-{name}"),
                                         **({"SAEOPS_FAULT": fault} if fault else {})}, timeout=300)
        assert res.returncode == 0, res.stdout[-4000:]
        fetched = [p for p in hub.downloads() if p.endswith("model.safetensors")]
        assert len(fetched) - len(before) == 1, "one process downloads, the other waits for it"
        runs[name] = out
        if fault:
            assert "resumed from checkpoint at step 8" in res.stdout, res.stdout[-4000:]
    assert_bitwise(weights(runs["killed"]), weights(runs["uninterrupted"]))
