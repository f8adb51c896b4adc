"""The committed CRDs are current, valid, bounded, and accept every example."""

from __future__ import annotations

import jsonschema
import kubernetes_validate
import pytest
import yaml

from saeops.cli import main
from saeops.operator.crds import all_crds, render_yaml

from .helpers import ROOT, example_docs

K8S = "1.35.0"


def _walk(node, path="$"):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def _schema(kind: str) -> dict:
    for crd in all_crds().values():
        if crd["spec"]["names"]["kind"] == kind:
            return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    raise KeyError(kind)


def test_committed_crds_are_current():
    for name, obj in all_crds().items():
        path = ROOT / "crds" / name
        assert path.is_file(), f"{path} missing: run `saeops crds --out crds/`"
        assert path.read_text() == render_yaml(obj), f"{path} is stale: run `saeops crds --out crds/`"


def test_main_crds_writes_files(tmp_path):
    assert main(["crds", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(all_crds())


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_crd_is_valid_and_structural(name):
    crd = all_crds()[name]
    kubernetes_validate.validate(crd, K8S, strict=True)
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"]
    cols = [c["name"] for c in version["additionalPrinterColumns"]]
    assert "Phase" in cols and "Age" in cols
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if "$ref" in node or "anyOf" in node or "allOf" in node:
            pytest.fail(f"{path}: not structural")
        if path.endswith((".properties", "x-kubernetes-validations")) or path.endswith("metadata"):
            continue
        t = node.get("type")
        if t == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path}: unbounded string"
        if t == "array":
            assert "maxItems" in node, f"{path}: unbounded list"
        if t == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path}: unbounded map"
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert path.endswith("categorical.items"), f"{path}: preserve-unknown-fields only for categorical values"


def test_printer_columns():
    cols = {c["name"] for c in all_crds()["saeops.io_saetrainingruns.yaml"]["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Phase", "Progress", "L0", "EV", "Restarts", "Age"} <= cols
    cols = {c["name"] for c in all_crds()["saeops.io_saesweeps.yaml"]["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Done", "Trials", "Max", "Best", "Phase", "Age"} <= cols


def test_cel_rules_for_unions_and_immutability():
    run = _schema("SAETrainingRun")["properties"]["spec"]["properties"]
    assert any("has(self.path) != has(self.native)" in r["rule"] for r in run["model"]["x-kubernetes-validations"])
    assert any("cacheRef" in r["rule"] for r in run["activations"]["x-kubernetes-validations"])
    for field in ("model", "dataset", "sae"):
        assert {"rule": "self == oldSelf", "message": f"spec.{field} is immutable"} in run[field]["x-kubernetes-validations"]
    sweep = _schema("SAESweep")["properties"]["spec"]["properties"]
    assert any(r["rule"] == "self == oldSelf" for r in sweep["trialTemplate"]["x-kubernetes-validations"])
    for budget in ("maxTrials", "parallelTrials", "maxFailedTrials"):
        assert "x-kubernetes-validations" not in sweep[budget], f"{budget} must stay mutable"
    assert "x-kubernetes-validations" in sweep["parameters"]["items"]


def test_descriptions_come_from_docstrings():
    spec = _schema("SAETrainingRun")["properties"]["spec"]["properties"]
    assert spec["sae"]["properties"]["topK"]["description"].startswith("k of the TopK family")


@pytest.mark.parametrize("doc", example_docs(), ids=lambda d: d["metadata"]["name"])
def test_examples_validate_against_crd(doc):
    # OpenAPI 3.0 bounds (boolean exclusiveMinimum) are Draft 4 semantics.
    jsonschema.Draft4Validator(_schema(doc["kind"])).validate(doc)


def test_schema_rejects_bad_manifest():
    doc = next(d for d in example_docs() if d["kind"] == "SAETrainingRun")
    bad = yaml.safe_load(yaml.safe_dump(doc))
    bad["spec"]["sae"]["actFn"] = "nope"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(_schema("SAETrainingRun")).validate(bad)
