"""The same run from the hub (model and dataset), from S3 (model directory and dataset shards) and
from local directories gives bitwise-identical activation caches and dictionary weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from saeops.api import parse_resource
from saeops.runtime.launch import run_resource
from tests.hub.conftest import upload_dir
from tests.hub.fake_hub import FakeHub

HOOKS = ["blocks.0.hook_mlp_out", "blocks.1.hook_resid_post"]


def _sources(kind: str, tiny_gpt2: Path, corpus: Path, bucket: str) -> tuple[str, str]:
    if kind == "local":
        return str(tiny_gpt2), str(corpus)
    if kind == "hub":
        return "hf://org/tiny-gpt2", "hf://datasets/org/docs"
    return upload_dir(bucket, "models/tiny-gpt2", tiny_gpt2), upload_dir(bucket, "data/docs", corpus)


def cache_manifest(model: str, dataset: str, out: Path) -> dict[str, Any]:
    return {
        "apiVersion": "saeops.io/v1alpha1", "kind": "ActivationCache", "metadata": {"name": "eq"},
        "spec": {"model": {"name": "tiny-gpt2", "path": model, "batchSize": 8},
                 "dataset": {"path": dataset, "contextSize": 32},
                 "hookPoints": HOOKS, "totalTokens": 3000, "shardSize": 1000,
                 "output": {"storageUri": str(out)}},
    }


def run_manifest(model: str, dataset: str, out: Path) -> dict[str, Any]:
    return {
        "apiVersion": "saeops.io/v1alpha1", "kind": "SAETrainingRun", "metadata": {"name": "eq"},
        "spec": {"model": {"name": "tiny-gpt2", "path": model, "batchSize": 8},
                 "dataset": {"path": dataset, "contextSize": 32},
                 "activations": {"bufferSize": 1024},
                 "sae": {"type": "sae", "hookPointIn": "blocks.1.hook_resid_post", "dSae": 64, "actFn": "topk",
                         "topK": 4},
                 "initializer": {"initTokens": 512},
                 "trainer": {"totalTrainingTokens": 2048, "batchSize": 256, "lr": 3e-3, "logFrequency": 2,
                             "progressBar": False},
                 "output": {"storageUri": str(out)}},
    }


@pytest.fixture(scope="module")
def bucket(s3_server: str) -> str:
    from tests.fixtures_s3 import create_bucket

    return f"s3://{create_bucket(s3_server)}"


@pytest.fixture
def env(hub_env: FakeHub, s3_server: str, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    return hub_env


def test_caches_from_hub_s3_and_local_are_bitwise_identical(env: FakeHub, tiny_gpt2: Path, corpus: Path,
                                                             bucket: str, tmp_path: Path) -> None:
    shards: dict[str, dict[str, list[str]]] = {}
    for kind in ("local", "hub", "s3"):
        model, dataset = _sources(kind, tiny_gpt2, corpus, bucket)
        out = tmp_path / kind
        assert run_resource(parse_resource(cache_manifest(model, dataset, out)), progress=False) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        shards[kind] = {h: [s["sha256"] for s in manifest["shards"][h]] for h in HOOKS}
        assert manifest["total_tokens"] == 3000
        if kind == "hub":  # the pinned commits of the model and the dataset are recorded
            assert len(manifest["model"]["revision"]) == 40 and len(manifest["dataset"]["commit"]) == 40
        if kind == "s3":
            assert manifest["model"]["source"] == "s3" and len(manifest["model"]["sha256"]) == 64
    assert shards["hub"] == shards["local"] == shards["s3"]
    assert all(len(v) == 3 for v in shards["local"].values())


def test_training_from_hub_s3_and_local_gives_identical_weights(env: FakeHub, tiny_gpt2: Path, corpus: Path,
                                                                 bucket: str, tmp_path: Path) -> None:
    weights = {}
    for kind in ("local", "hub", "s3"):
        model, dataset = _sources(kind, tiny_gpt2, corpus, bucket)
        out = tmp_path / kind
        assert run_resource(parse_resource(run_manifest(model, dataset, out)), progress=False) == 0
        weights[kind] = load_file(str(out / "sae.safetensors"))
    for kind in ("hub", "s3"):
        assert set(weights[kind]) == set(weights["local"])
        for name, t in weights["local"].items():
            assert t.equal(weights[kind][name]), f"{kind}: {name} differs"
