"""Numbers and booleans as the API server types them: floats finite, integers bounded and never
booleans or floats, booleans never numbers; parallelism consistent with the process count."""

from __future__ import annotations

import math
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel

from saeops.api import KINDS, SpecError, parse_resource
from tests.spec.test_spec import quickstart_doc


def _set(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    node = doc
    *head, last = dotted.split(".")
    for k in head:
        node = node.setdefault(k, {})
    node[last] = value
    return doc


def _refused(dotted: str, value: Any, needle: str = "") -> str:
    with pytest.raises(SpecError) as err:
        parse_resource(_set(quickstart_doc(), dotted, value))
    msg = str(err.value)
    field = dotted.rsplit(".", 1)[0] if dotted.endswith(("0", "1")) else dotted
    assert field in msg and needle in msg and "\n" not in msg, msg
    return msg


def _float_paths() -> list[str]:
    """Manifest paths of every float field reachable from an SAETrainingRun spec."""
    out: list[str] = []

    def walk(model: type[BaseModel], prefix: str, depth: int) -> None:
        for name, f in model.model_fields.items():
            path = f"{prefix}.{f.alias or name}"
            sub = _model_in(f.annotation)
            if sub is not None and depth < 4:
                walk(sub, path, depth + 1)
            elif _has_float(f.annotation):
                out.append(path)

    walk(KINDS["SAETrainingRun"].model_fields["spec"].annotation, "spec", 0)  # type: ignore[arg-type]
    return out


def _has_float(tp: Any) -> bool:
    if tp is float:
        return True
    if get_origin(tp) in (tuple, Literal):
        return False
    return any(_has_float(a) for a in get_args(tp))


def _model_in(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for a in getattr(tp, "__args__", ()) or ():
        found = _model_in(a)
        if found is not None:
            return found
    return None


FLOAT_PATHS = _float_paths()


def test_the_float_fields_are_found() -> None:
    for path in ("spec.trainer.weightDecay", "spec.trainer.l1Coefficient", "spec.trainer.kWarmupSteps",
                 "spec.sae.expansionFactor", "spec.trainer.denseFeatureThreshold", "spec.trainer.lr",
                 "spec.initializer.initDecoderNorm", "spec.sae.lorsa.rotaryBase"):
        assert path in FLOAT_PATHS
    assert len(FLOAT_PATHS) >= 24, FLOAT_PATHS


@pytest.mark.parametrize("path", FLOAT_PATHS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_field_refuses_nan_and_inf(path: str, value: float) -> None:
    msg = _refused(path, value)
    assert "finite number" in msg or "fraction" in msg or "Input should be" in msg, msg


@pytest.mark.parametrize(("path", "value", "needle"), [
    ("spec.trainer.betas", [0.9, math.nan], "finite number"),
    ("spec.trainer.betas", [1.0, 0.9], "each Adam beta is in [0, 1)"),
    ("spec.trainer.betas", [True, 0.9], "valid number"),
    ("spec.trainer.betas", [0.9], "required field is missing"),
    ("spec.trainer.lr", "4e-4", "valid number"),
    ("spec.trainer.lr", True, "valid number"),
    ("spec.trainer.kWarmupSteps", 1.5, "a fraction of the total steps is in [0, 1)"),
    ("spec.trainer.lrWarmUpSteps", 100.0, "give a number of steps as an integer"),
    ("spec.trainer.kWarmupSteps", True, "valid"),
    ("spec.sae.topK", True, "valid integer (got True)"),
    ("spec.sae.topK", 16.0, "valid integer (got 16.0)"),
    ("spec.sae.topK", "16", "valid integer"),
    ("spec.sae.topK", 2**27, "less than or equal to 67108864"),
    ("spec.trainer.seed", 2**63, "less than or equal to 9223372036854775807"),
    ("spec.trainer.seed", 2**70, "less than or equal"),
    ("spec.trainer.seed", -1, "greater than or equal to 0"),
    ("spec.model.native.seed", 2**64, "less than or equal"),
    ("spec.trainer.totalTrainingTokens", 2**60, "less than or equal"),
    ("spec.trainer.batchSize", 4096.0, "valid integer"),
    ("spec.trainer.checkpointInterval", 2**50, "less than or equal"),
    ("spec.resources.numNodes", True, "valid integer"),
    ("spec.suspend", 1, "valid boolean"),
    ("spec.suspend", "true", "valid boolean"),
    ("spec.trainer.progressBar", 0, "valid boolean"),
    ("spec.activeDeadlineSeconds", 2**40, "less than or equal"),
    ("spec.metrics.port", 70000, "less than or equal"),
])
def test_numbers_and_booleans_are_strict(path: str, value: Any, needle: str) -> None:
    _refused(path, value, needle)


def test_topk_is_bounded_by_dsae_when_both_are_known() -> None:
    doc = quickstart_doc()
    doc["spec"]["sae"].update(dSae=16, topK=32)
    with pytest.raises(SpecError, match="topK=32 exceeds dSae=16"):
        parse_resource(doc)
    doc["spec"]["sae"].update(topK=16)
    assert parse_resource(doc).spec.sae.top_k == 16
    # relu ignores k: its default (50) above dSae is no error.
    doc["spec"]["sae"] = {"hookPointIn": "h", "actFn": "relu", "dSae": 16}
    assert parse_resource(doc).spec.sae.d_sae == 16


def test_integers_still_fill_float_fields() -> None:
    run = parse_resource(_set(_set(quickstart_doc(), "spec.trainer.lr", 1), "spec.trainer.betas", [0, 0.5]))
    assert run.spec.trainer.lr == 1.0 and isinstance(run.spec.trainer.lr, float)
    assert run.spec.trainer.betas == (0.0, 0.5)


def test_config_json_round_trip_keeps_validating() -> None:
    """Artifacts store `to_manifest()`; analyze/eval validate it again (strict mode included)."""
    import json

    run = parse_resource(quickstart_doc())
    again = KINDS["SAETrainingRun"].model_validate(json.loads(json.dumps(run.to_manifest())))
    assert again == run


# ---------------------------------------------------------------- parallelism (issue #16's seam)


def _procs(doc: dict[str, Any], nodes: int, per_node: int = 1) -> dict[str, Any]:
    doc["spec"]["resources"] = {"numNodes": nodes, "numProcPerNode": per_node}
    return doc


@pytest.mark.parametrize(("nodes", "per_node", "parallelism", "expected"), [
    (2, 1, None, (2, 1)),
    (2, 4, None, (8, 1)),
    (2, 4, {"tensor": 2}, (4, 2)),
    (2, 4, {"data": 4, "tensor": 2}, (4, 2)),
    (1, 1, None, (1, 1)),
])
def test_data_parallelism_defaults_to_the_process_count(nodes: int, per_node: int, parallelism: Any,
                                                        expected: tuple[int, int]) -> None:
    doc = _procs(quickstart_doc(), nodes, per_node)
    doc["spec"].pop("parallelism", None)
    if parallelism is not None:
        doc["spec"]["parallelism"] = parallelism
    run = parse_resource(doc)
    assert (run.spec.parallelism.data, run.spec.parallelism.tensor) == expected
    # The resolved values travel to the pods (spec.json) and validate there again.
    assert parse_resource(run.to_manifest()).spec.parallelism == run.spec.parallelism


@pytest.mark.parametrize(("nodes", "per_node", "parallelism", "needle"), [
    (2, 1, {"data": 1}, "parallelism.data x parallelism.tensor = 1 x 1 = 1 processes, but "
                        "resources.numNodes x resources.numProcPerNode = 2 x 1 = 2 processes"),
    (2, 4, {"data": 2, "tensor": 2}, "leave it out"),
    (1, 3, {"tensor": 2}, "parallelism.tensor=2 does not divide"),
])
def test_inconsistent_parallelism_is_refused_naming_both_fields(nodes: int, per_node: int, parallelism: Any,
                                                                needle: str) -> None:
    doc = _procs(quickstart_doc(), nodes, per_node)
    doc["spec"]["parallelism"] = parallelism
    with pytest.raises(SpecError) as err:
        parse_resource(doc)
    assert needle in str(err.value)


def test_default_data_must_divide_the_batch() -> None:
    doc = _procs(quickstart_doc(), 3)
    doc["spec"].pop("parallelism", None)
    doc["spec"]["trainer"]["batchSize"] = 4096
    with pytest.raises(SpecError, match=r"batchSize=4096 must be divisible by parallelism.data=3"):
        parse_resource(doc)


def test_cache_parallelism_follows_the_same_rule() -> None:
    import yaml

    from tests.spec.test_spec import ROOT

    doc = yaml.safe_load((ROOT / "examples" / "cache.yaml").read_text())
    doc["spec"]["resources"] = {"numNodes": 2}
    doc["spec"].pop("parallelism", None)
    assert parse_resource(doc).spec.parallelism.data == 2
    doc["spec"]["parallelism"] = {"data": 1}
    with pytest.raises(SpecError, match="numNodes x numProcPerNode"):
        parse_resource(doc)
