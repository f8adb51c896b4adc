"""Kubernetes' grammar (saeops.api.k8s): what the API server refuses, the spec refuses first,
with the field named; the CRD patterns say the same as the Python checks."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from saeops.api import SpecError, k8s, parse_resource

ROOT = Path(__file__).resolve().parents[2]


def quickstart() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())


@pytest.mark.parametrize("name", ["a", "run-1", "x" * 63, "0abc", "a-b-c"])
def test_dns_labels_accepted(name: str) -> None:
    assert k8s.check_dns_label(name) == name


@pytest.mark.parametrize("name", ["", "A", "a_b", "-a", "a-", "a.b", "x" * 64, "a b", "é"])
def test_dns_labels_refused(name: str) -> None:
    with pytest.raises(ValueError, match="DNS-1123 label"):
        k8s.check_dns_label(name)


@pytest.mark.parametrize("name", ["a", "a.b", "s3-creds", "a-b.c-d.e", ".".join(["x" * 63] * 3) + ".abc"])
def test_dns_subdomains_accepted(name: str) -> None:
    assert len(name) <= 253 and k8s.check_dns_subdomain(name) == name


@pytest.mark.parametrize("name", ["", "A", "a..b", ".a", "a.", "a_b", "a/b", "x" * 254, "a.-b"])
def test_dns_subdomains_refused(name: str) -> None:
    with pytest.raises(ValueError, match="DNS-1123 subdomain"):
        k8s.check_dns_subdomain(name)


@pytest.mark.parametrize("key", ["app", "App_1.x", "saeops.io/run", "kueue.x-k8s.io/queue-name", "a/" + "B" * 63])
def test_label_keys_accepted(key: str) -> None:
    assert k8s.check_label_key(key) == key


@pytest.mark.parametrize("key", ["", "/a", "a/", "a/b/c", "-a", "a b", "A_/x", "x" * 64, "x" * 254 + "/a", "é"])
def test_label_keys_refused(key: str) -> None:
    with pytest.raises(ValueError, match="not a valid key"):
        k8s.check_label_key(key)


@pytest.mark.parametrize(("value", "ok"), [("", True), ("a", True), ("A.b-c_d", True), ("x" * 63, True),
                                           ("x" * 64, False), ("a b", False), ("-a", False), ("a/b", False)])
def test_label_values(value: str, ok: bool) -> None:
    if ok:
        assert k8s.check_label_value(value) == value
    else:
        with pytest.raises(ValueError, match="label value"):
            k8s.check_label_value(value)


@pytest.mark.parametrize(("text", "value"), [
    ("1", 1), ("500m", Decimal("0.5")), ("2Gi", 2 * 2**30), ("1.5G", Decimal("1.5e9")), ("1e3", 1000),
    ("+1", 1), (".5", Decimal("0.5")), ("3.", 3), ("64Mi", 64 * 2**20), ("1E-3", Decimal("0.001")),
    ("10n", Decimal("1e-8")), ("-1", -1),
])
def test_quantities_parse(text: str, value: Any) -> None:
    assert k8s.parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("text", ["", "Gi", "1GB", "1 Gi", "1g", "lots", "1.2.3", "1e", "0x10", "1Ki1", "--1", "1e999"])
def test_quantities_refused(text: str) -> None:
    with pytest.raises(ValueError):
        k8s.parse_quantity(text)


@given(st.from_regex(k8s.LABEL_KEY_PATTERN, fullmatch=True))
@settings(max_examples=200, deadline=None, database=None)
def test_label_key_pattern_agrees_with_the_check(key: str) -> None:
    # The pattern goes into the CRD; what it accepts within the length caps, the model accepts.
    prefix, _, name = key.rpartition("/")
    if len(name) <= 63 and len(prefix) <= 253:
        k8s.check_label_key(key)


@given(st.text(alphabet="ab.-/_A0", max_size=20))
@settings(max_examples=300, deadline=None, database=None)
def test_checks_never_accept_what_the_patterns_refuse(text: str) -> None:
    for pattern, check in ((k8s.DNS_LABEL_PATTERN, k8s.check_dns_label),
                           (k8s.DNS_SUBDOMAIN_PATTERN, k8s.check_dns_subdomain),
                           (k8s.LABEL_KEY_PATTERN, k8s.check_label_key),
                           (k8s.LABEL_VALUE_PATTERN, k8s.check_label_value)):
        try:
            check(text)
        except ValueError:
            continue
        assert re.match(pattern, text), (pattern, text)


# ---------------------------------------------------------------- in the spec models


def _refused(mutate: Any, needle: str) -> str:
    doc = quickstart()
    mutate(doc)
    with pytest.raises(SpecError) as err:
        parse_resource(doc)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg, msg
    return msg


def _res(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"].setdefault("resources", {})


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda d: d["metadata"].update(name="Quick_Start"), "metadata.name: 'Quick_Start' is not a valid name"),
    (lambda d: d["metadata"].update(namespace="team.a"), "metadata.namespace"),
    (lambda d: d["metadata"].update(labels={"bad key": "x"}), "metadata.labels.bad key: (key)"),
    (lambda d: d["metadata"].update(labels={"team": "a b"}), "metadata.labels.team: 'a b' is not a valid label value"),
    (lambda d: d["metadata"].update(annotations={"note": "x" * (256 * 1024)}), "metadata.annotations: annotations total"),
    (lambda d: d["metadata"].update(clusterName="c"), "metadata.clusterName: unknown field"),
    (lambda d: d["spec"]["output"].update(storageUri="s3://bkt/x", secretRef={"name": "S3_Creds"}),
     "spec.output.secretRef.name: 'S3_Creds' is not a valid name (DNS-1123 subdomain)"),
    (lambda d: d["spec"].update(queueName="Team-A"), "spec.queueName"),
    (lambda d: d["spec"].update(queueName="a" * 64), "spec.queueName"),
    (lambda d: _res(d).update(priorityClassName="High"), "spec.resources.priorityClassName"),
    (lambda d: _res(d).update(serviceAccountName="sa_1"), "spec.resources.serviceAccountName"),
    (lambda d: _res(d).update(nodeSelector={"gpu": "H100 80GB"}), "spec.resources.nodeSelector.gpu"),
    (lambda d: _res(d).update(nodeSelector={"a/b/c": "x"}), "spec.resources.nodeSelector.a/b/c: (key)"),
    (lambda d: _res(d).update(tolerations=[{"key": "a b", "operator": "Exists"}]), "spec.resources.tolerations.0.key"),
    (lambda d: _res(d).update(tolerations=[{"operator": "Equal", "value": "x"}]), "operator must be Exists when key is empty"),
    (lambda d: _res(d).update(tolerations=[{"key": "k", "operator": "Exists", "value": "v"}]), "value must be empty"),
    (lambda d: _res(d).update(tolerations=[{"key": "k", "operator": "Exists", "tolerationSeconds": 5}]),
     "tolerationSeconds needs effect: NoExecute"),
    (lambda d: _res(d).update(resourcesPerNode={"requests": {"cpu": "lots"}}), "spec.resources.resourcesPerNode.requests.cpu"),
    (lambda d: _res(d).update(resourcesPerNode={"requests": {"memory": "1GB"}}), "'1GB' is not a Kubernetes quantity"),
    (lambda d: _res(d).update(resourcesPerNode={"limits": {"memory": "-1Gi"}}), "must not be negative"),
    (lambda d: _res(d).update(resourcesPerNode={"requests": {"cpu": 2}}), "quote it"),
    (lambda d: _res(d).update(resourcesPerNode={"requests": {"gpu": "1"}}), "is not a container resource"),
    (lambda d: _res(d).update(resourcesPerNode={"requests": {"cpu": "8"}, "limits": {"cpu": "4"}}),
     "requests.cpu=8 is more than limits.cpu=4"),
    (lambda d: _res(d).update(resourcesPerNode={"requests": {"nvidia.com/gpu": "1"}}), "needs limits.nvidia.com/gpu"),
    (lambda d: _res(d).update(resourcesPerNode={"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "2"}}),
     "must equal limits.nvidia.com/gpu"),
    (lambda d: _res(d).update(resourcesPerNode={"limits": {"nvidia.com/gpu": "0.5"}}), "whole number"),
    (lambda d: _res(d).update(shmSize="2 Gi"), "spec.resources.shmSize"),
    (lambda d: _res(d).update(image="repo/img:tag latest"), "spec.resources.image"),
    (lambda d: d["spec"].setdefault("activations", {}).update(cacheRef="My.Cache"), "spec.activations.cacheRef"),
])
def test_spec_refuses_what_the_api_server_would(mutate: Any, needle: str) -> None:
    _refused(mutate, needle)


def test_a_cluster_spec_with_every_kubernetes_value_is_accepted() -> None:
    doc = quickstart()
    doc["metadata"].update(namespace="team-a", labels={"app.kubernetes.io/name": "x", "tier": ""},
                           annotations={"example.com/note": "any text\nat all"}, uid="0-1", generation=3,
                           resourceVersion="12", creationTimestamp="2026-01-01T00:00:00Z",
                           finalizers=["saeops.io/cleanup"], ownerReferences=[{"kind": "SAESweep", "name": "s"}],
                           managedFields=[{"manager": "kubectl"}])
    doc["spec"]["queueName"] = "team-a"
    doc["spec"]["output"] = {"storageUri": "s3://bkt/runs/x", "secretRef": {"name": "s3.creds"},
                             "endpointUrl": "http://minio.minio.svc:9000", "region": "eu-west-1"}
    doc["spec"]["resources"] = {
        "numNodes": 2, "numProcPerNode": 4, "image": "registry.local:5000/saeops@sha256:abc",
        "resourcesPerNode": {"requests": {"cpu": "7500m", "memory": "64Gi", "nvidia.com/gpu": "4",
                                          "hugepages-2Mi": "1Gi"},
                             "limits": {"memory": "64Gi", "nvidia.com/gpu": "4", "hugepages-2Mi": "1Gi"}},
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                        {"operator": "Exists"}, {"key": "k", "value": "v", "effect": "NoExecute",
                                                 "tolerationSeconds": 30}],
        "priorityClassName": "batch.low", "serviceAccountName": "trainer", "shmSize": "16Gi",
    }
    run = parse_resource(doc)
    assert run.spec.parallelism.data == 8
    assert run.metadata.to_manifest()["ownerReferences"] == [{"kind": "SAESweep", "name": "s"}]
