"""Spec models: loading from every format, overrides, and one-line errors naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from saeops.api import (
    SAESweep,
    SAETrainingRun,
    SpecError,
    load_resource,
    parse_resource,
    read_document,
)

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def quickstart_doc() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


def write(tmp_path: Path, doc: dict, suffix: str = ".yaml") -> Path:
    p = tmp_path / f"m{suffix}"
    if suffix == ".json":
        p.write_text(json.dumps(doc))
    else:
        p.write_text(yaml.safe_dump(doc))
    return p


def test_quickstart_loads_with_defaults_from_seeds() -> None:
    run = load_resource(QUICKSTART)
    assert isinstance(run, SAETrainingRun)
    sae = run.spec.sae
    assert sae.act_fn == "topk" and sae.top_k == 32
    assert sae.out_hook == sae.hook_point_in  # an SAE reconstructs its input
    # Seed defaults.
    assert sae.jumprelu_threshold_window == 2.0
    assert sae.norm_activation == "dataset-wise"
    assert sae.sparsity_include_decoder_norm is True
    assert sae.sparsity_threshold_for_triton_spmm_kernel == 0.996
    t = run.spec.trainer
    assert t.l1_coefficient == 8e-5 and t.k_exponential_factor == 3.0 and t.frequency_scale == 0.01
    assert t.tanh_stretch_coefficient == 4.0 and t.k_warmup_steps == 0.1


def test_json_and_toml_give_the_same_resource(tmp_path: Path) -> None:
    doc = quickstart_doc()
    from_json = load_resource(write(tmp_path, doc, ".json"))
    toml_text = _to_toml(doc)
    (tmp_path / "m.toml").write_text(toml_text)
    from_toml = load_resource(tmp_path / "m.toml")
    assert from_json == from_toml == load_resource(QUICKSTART)


def _to_toml(doc: dict, prefix: str = "") -> str:
    """A tiny TOML writer for nested string/number/bool mappings (enough for manifests)."""
    scalars, tables = [], []
    for k, v in doc.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            scalars.append(f"{k} = {json.dumps(v)}")
    out = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    for k, v in tables:
        out.append(_to_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(out) + "\n"


def test_set_overrides_use_manifest_names(tmp_path: Path) -> None:
    run = load_resource(QUICKSTART, ["spec.sae.topK=16", "spec.trainer.lr=1e-3", "spec.sae.actFn=batchtopk"])
    assert run.spec.sae.top_k == 16 and run.spec.trainer.lr == 1e-3 and run.spec.sae.act_fn == "batchtopk"


def test_snake_case_is_accepted_in_python() -> None:
    run = load_resource(QUICKSTART)
    assert run.spec.sae.model_dump(by_alias=True)["topK"] == 32
    assert run.spec.sae.model_copy(update={"top_k": 8}).top_k == 8


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(kind="SAETrainingRn"), "kind: unknown kind 'SAETrainingRn'; did you mean SAETrainingRun?"),
        (lambda d: d["spec"]["sae"].update(topKk=3), "spec.sae.topKk: unknown field; did you mean spec.sae.topK?"),
        (lambda d: d["spec"]["trainer"].update(batchSize="many"), "spec.trainer.batchSize"),
        (lambda d: d["spec"]["trainer"].update(batchSize=0), "spec.trainer.batchSize"),
        (lambda d: d["spec"]["sae"].update(dModel=64, topK=2000), "topK=2000 exceeds dSae=1024"),
        (lambda d: d["spec"]["sae"].update(actFn="softmax"), "spec.sae.actFn"),
        (lambda d: d["spec"].pop("trainer"), "spec.trainer: required field is missing"),
        (lambda d: d["spec"]["output"].update(storageUri="gs://bucket/x"), "spec.output.storageUri"),
        (lambda d: d["metadata"].update(name="Bad_Name"), "metadata.name"),
        (lambda d: d.update(apiVersion="v1"), "apiVersion: expected saeops.io/v1alpha1"),
        (lambda d: d["spec"]["trainer"].update(initialK=4), "initialK=4 must be >= sae.topK=32"),
        (lambda d: d["spec"]["parallelism"].__setitem__("data", 3) if "parallelism" in d["spec"]
         else d["spec"].update(parallelism={"data": 3}), "parallelism.data x parallelism.tensor = 3"),
    ],
)
def test_bad_input_gives_one_line_naming_the_field(tmp_path: Path, mutate, needle: str) -> None:
    doc = quickstart_doc()
    mutate(doc)
    with pytest.raises(SpecError) as err:
        load_resource(write(tmp_path, doc))
    msg = str(err.value)
    assert needle in msg
    assert "\n" not in msg


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("apiVersion: saeops.io/v1alpha1\nkind: SAETrainingRun\nspec: [1, 2\n")
    with pytest.raises(SpecError, match=r"bad.yaml: line \d+ column \d+: malformed yaml"):
        read_document(p)


def test_missing_file() -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_resource("/nonexistent/run.yaml")


def test_sweep_parameters_need_exactly_one_domain() -> None:
    doc = {
        "apiVersion": "saeops.io/v1alpha1",
        "kind": "SAESweep",
        "metadata": {"name": "s"},
        "spec": {
            "trialTemplate": quickstart_doc()["spec"],
            "parameters": [{"name": "sae.topK", "categorical": [8, 16], "uniform": {"min": 1, "max": 2}}],
        },
    }
    with pytest.raises(SpecError, match="exactly one of categorical, uniform, logUniform"):
        parse_resource(doc)
    doc["spec"]["parameters"] = [{"name": "sae.topK", "categorical": [8, 16]}]
    assert isinstance(parse_resource(doc), SAESweep)


def test_every_field_has_a_description() -> None:
    """Docstrings become CRD descriptions; a field without one is a `kubectl explain` hole."""
    from pydantic import BaseModel

    from saeops.api import KINDS

    seen: set[type] = set()
    missing: list[str] = []

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{model.__name__}.{name}")
            for sub in _models_in(field.annotation):
                walk(sub)

    def _models_in(tp) -> list[type[BaseModel]]:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return [tp]
        return [m for a in getattr(tp, "__args__", ()) or () for m in _models_in(a)]

    for cls in KINDS.values():
        walk(cls)
    assert not missing, missing
