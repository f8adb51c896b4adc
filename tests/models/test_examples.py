"""The per-kind example manifests parse, build their dictionary on the model they name, and
train with a tiny budget via `saeops run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saeops.api.load import load_resource
from saeops.runtime.models import build_dictionary

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KINDS = ["transcoder", "clt", "lorsa"]


@pytest.mark.parametrize("kind", KINDS)
def test_example_parses_and_builds(kind: str) -> None:
    run = load_resource(EXAMPLES / f"{kind}.yaml")
    spec = run.spec  # type: ignore[union-attr]
    assert spec.sae.type == kind
    if spec.model.native is not None:
        d = spec.model.native.d_model
    else:  # a real model (MiniLM): its width from config.json
        from saeops.runtime.lm.checks import read_config
        from saeops.runtime.sources import resolve_source

        d = read_config(resolve_source(spec.model.path, "spec.model.path").path, "spec.model.path")["hidden_size"]
    model = build_dictionary(spec.sae, d, d)
    assert model.dictionary_type == kind


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["transcoder", "clt", "lorsa"])
def test_example_trains_with_a_tiny_budget(kind: str, tmp_path: Path) -> None:
    from saeops.runtime.launch import run_resource

    run = load_resource(EXAMPLES / f"{kind}.yaml", [
        f"spec.output.storageUri={tmp_path}", "spec.trainer.totalTrainingTokens=4096",
        "spec.trainer.batchSize=1024", "spec.initializer.initTokens=2048",
        "spec.trainer.progressBar=false",
        # MiniLM is a real model: a small shuffle buffer and evaluation keep the run short.
        "spec.activations.bufferSize=2048", "spec.eval.tokens=2048", "spec.model.batchSize=8",
    ])
    assert run_resource(run, progress=False) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["final"]["tokens"] >= 4096 * 0.5
    if run.spec.eval.enabled:  # the examples evaluate at the end: loss recovered lands in metrics.json
        assert "eval" in metrics and "loss_recovered" in metrics["eval"]
