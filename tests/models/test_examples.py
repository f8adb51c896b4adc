"""The per-kind example manifests parse, build their dictionary on the model they name, and
(once the training job can stream them) train with a tiny budget via `saeops run`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from saeops.runtime.models import build_dictionary
from saeops.runtime.spec.load import load_resource

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KINDS = ["transcoder", "clt", "lorsa"]


@pytest.mark.parametrize("kind", KINDS)
def test_example_parses_and_builds(kind: str) -> None:
    run = load_resource(EXAMPLES / f"{kind}.yaml")
    spec = run.spec  # type: ignore[union-attr]
    assert spec.sae.type == kind
    d = spec.model.native.d_model
    model = build_dictionary(spec.sae, d, d)
    assert model.dictionary_type == kind


# CLT and Lorsa need the training job to pass stacked per-layer samples (`models.init_inputs`)
# and, for Lorsa, sequence batches and samples; until job.py does, they are expected to fail.
JOB_WIRING = pytest.mark.xfail(reason="train/job.py: init via models.init_inputs; lorsa needs sequence batches",
                               strict=False)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["transcoder", pytest.param("clt", marks=JOB_WIRING),
                                  pytest.param("lorsa", marks=JOB_WIRING)])
def test_example_trains_with_a_tiny_budget(kind: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("saeops.runtime.train.sources") is None:
        pytest.skip("the training job's activation sources (saeops.runtime.train.sources) are not there yet")
    from saeops.runtime.launch import run_resource

    run = load_resource(EXAMPLES / f"{kind}.yaml", [
        f"spec.output.storageUri={tmp_path}", "spec.trainer.totalTrainingTokens=4096",
        "spec.trainer.batchSize=1024", "spec.initializer.initTokens=2048", "spec.eval.enabled=false",
        "spec.trainer.progressBar=false",
    ])
    assert run_resource(run, progress=False) == 0
    assert (tmp_path / "metrics.json").exists()
