"""The generated CRDs carry the spec's Kubernetes grammar and URI rules as patterns and CEL rules:
`kubectl apply` refuses what the operator would refuse, and accepts what the models accept."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saeops.api import SpecError, parse_resource
from saeops.api.uris import STORAGE_URI_PATTERN, URIError, parse_storage_uri
from saeops.operator.crds import all_crds
from tests.spec.test_spec import quickstart_doc


def schema(kind: str) -> dict[str, Any]:
    crd = next(c for c in all_crds().values() if c["spec"]["names"]["kind"] == kind)
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: Any):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def crd_accepts(doc: dict[str, Any]) -> bool:
    # OpenAPI 3.0 bounds (boolean exclusiveMinimum) are Draft 4 semantics.
    return jsonschema.Draft4Validator(schema(doc["kind"])).is_valid(doc)


def test_patterns_are_in_the_crds_and_compile() -> None:
    spec = schema("SAETrainingRun")["properties"]["spec"]["properties"]
    res = spec["resources"]["properties"]
    assert "pattern" in spec["output"]["properties"]["secretRef"]["properties"]["name"]
    assert "pattern" in spec["output"]["properties"]["storageUri"]
    assert "pattern" in spec["output"]["properties"]["endpointUrl"]
    assert "pattern" in spec["activations"]["properties"]["cacheRef"]
    assert "pattern" in spec["queueName"] and spec["queueName"]["maxLength"] == 63
    for field in ("priorityClassName", "serviceAccountName", "shmSize", "image"):
        assert "pattern" in res[field], field
    assert "pattern" in res["nodeSelector"]["additionalProperties"]
    assert "pattern" in res["resourcesPerNode"]["properties"]["requests"]["additionalProperties"]
    tol = res["tolerations"]["items"]
    assert "pattern" in tol["properties"]["key"] and len(tol["x-kubernetes-validations"]) == 3
    assert any("numProcPerNode" in r["rule"] for r in schema("SAETrainingRun")["properties"]["spec"]["x-kubernetes-validations"])
    patterns = [n["pattern"] for kind in ("SAETrainingRun", "ActivationCache", "SAESweep") for n in walk(schema(kind))
                if isinstance(n.get("pattern"), str)]
    assert len(patterns) > 20
    for p in patterns:
        re.compile(p)
        # The common subset of RE2 (the API server) and Rust's regex (pydantic): no look-around,
        # no backreferences.
        assert not re.search(r"\(\?[=!<]|\\[1-9]", p), p


@pytest.mark.parametrize(("path", "value"), [
    (("output", "secretRef"), {"name": "S3_Creds"}),
    (("queueName",), "Team-A"),
    (("resources", "priorityClassName"), "High"),
    (("resources", "shmSize"), "2 Gi"),
    (("resources", "nodeSelector"), {"gpu": "a b"}),
    (("resources", "resourcesPerNode"), {"requests": {"memory": "1GB"}}),
    (("resources", "tolerations"), [{"key": "k", "operator": "Exists", "value": "v"}]),
    (("resources", "tolerations"), [{"key": "k", "tolerationSeconds": 3}]),
    (("activations",), {"cacheRef": "My.Cache"}),
    (("output", "storageUri"), "s3://bkt/a/../b"),
    (("output", "storageUri"), "/data//x"),
    (("output", "endpointUrl"), "file://"),
    (("resources",), {"numNodes": 2}),
])
def test_crd_and_models_refuse_the_same_values(path: tuple[str, ...], value: Any) -> None:
    doc = quickstart_doc()
    doc["spec"]["output"]["storageUri"] = "s3://bkt/runs/q"
    node = doc["spec"]
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value
    if path == ("resources",):
        doc["spec"]["parallelism"] = {"data": 1}  # 2 processes, data 1
    with pytest.raises(SpecError):
        parse_resource(copy.deepcopy(doc))
    # CEL rules (tolerations, parallelism) are not evaluated by jsonschema; their presence is
    # checked above, the rest must be refused by the schema itself.
    if path[-1] not in ("tolerations",) and path != ("resources",):
        assert not crd_accepts(doc), path


@given(st.text(alphabet="ab/.~:3s-_%é ", max_size=16) | st.sampled_from(
    ["s3://bkt", "s3://bkt/", "s3://bkt/a/b/", "file:///", "file://localhost/x", "/", "./a", "././a/b/", "a/.b",
     "a/..b", "a/b..", ".x", "..x"]))
@settings(max_examples=500, deadline=None, database=None)
def test_the_uri_pattern_accepts_everything_the_parser_accepts(uri: str) -> None:
    """The CRD must never refuse a location the models accept (it may accept more)."""
    try:
        parse_storage_uri(uri)
    except URIError:
        return
    assert re.match(STORAGE_URI_PATTERN, uri), uri


@pytest.mark.parametrize("uri", ["../x", "a/../b", "s3://bkt/a/./b", "s3://bkt//a", "file:///a/../b", "/a/./b",
                                 "/a//b", "s3://", "s3:///x", "x\ny", "a\\b"])
def test_the_uri_pattern_refuses_dot_segments_and_empty_ones(uri: str) -> None:
    assert not re.match(STORAGE_URI_PATTERN, uri)
