"""The Helm chart renders with the real Helm engine, lints clean and yields valid Kubernetes objects."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.deploy._helpers import (
    CHART,
    CRDS,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    Obj,
    by_kind,
    crd_files,
    render_chart,
    render_notes,
    rendered_objects,
)

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")

MONITORING_FORCED = {"metrics": {"serviceMonitor": {"force": True}, "podMonitor": {"force": True}}}

# Every documented toggle of values.yaml, one rendering each.
TOGGLES: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced-multi": {"watch": {"namespaces": ["team-a", "team-b"]}},
    "cluster-wide": {"watch": {"clusterWide": True}},
    "monitoring-forced": MONITORING_FORCED,
    "monitoring-forced-cluster-wide": {**MONITORING_FORCED, "watch": {"clusterWide": True}},
    "network-policy": {"networkPolicy": {"enabled": True, "metricsFrom": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}},
    "runs-restricted": {"runs": {
        "allowedStoragePrefixes": ["s3://sae-artifacts/{namespace}", "/mnt/shared/{namespace}"],
        "allowedImages": ["ghcr.io/saeops/saeops:*", "registry.corp/ml/trainer:1.2"],
        "allowedServiceAccountNames": ["default", "saeops-runner"],
        "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"team": "observability"}},
                                           "podSelector": {"matchLabels": {"app": "prometheus"}}}]}}},
    "runs-restricted-cluster-wide": {"runs": {"allowedStoragePrefixes": ["s3://sae-artifacts/{namespace}"]},
                                     "watch": {"clusterWide": True}},
    "no-run-network-policy": {"runs": {"networkPolicy": {"enabled": False}}},
    "no-rbac-no-sa": {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}},
    "no-metrics-service": {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"force": True}}},
    "digest-and-extras": {
        "image": {"digest": "sha256:" + "a" * 64},
        "imagePullSecrets": ["regcred"],
        "operator": {"extraArgs": ["--verbose"], "extraEnv": [{"name": "SAEOPS_LOG", "value": "debug"}],
                     "envFrom": [{"secretRef": {"name": "saeops-s3-readonly"}}], "pollIntervalSeconds": 5,
                     "nodeSelector": {"kubernetes.io/os": "linux"},
                     "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops",
                                      "effect": "NoSchedule"}],
                     "priorityClassName": "system-cluster-critical",
                     "podAnnotations": {"example.com/team": "interp"}},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/saeops"}},
    },
}
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor"}


def deployment(objs: list[Obj]) -> Obj:
    (dep,) = by_kind(objs, "Deployment")
    return dep


def operator_container(objs: list[Obj]) -> Obj:
    (container,) = deployment(objs)["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("toggle", list(TOGGLES))
def test_renders_and_validates_against_kubernetes_schemas(toggle: str) -> None:
    objs = rendered_objects(TOGGLES[toggle])
    assert objs, "nothing rendered"
    for obj in objs:
        assert obj.get("apiVersion") and obj.get("kind"), obj
        if obj["kind"] in CUSTOM_KINDS:
            continue  # Prometheus Operator CRDs: shape checked in test_monitoring_objects
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{toggle}: {obj['kind']}/{obj['metadata']['name']} invalid for "
                            f"Kubernetes {version} at {list(e.path)}: {e.message}")


@pytest.mark.parametrize("toggle", list(TOGGLES))
def test_object_names_are_unique_and_namespaced_in_the_release(toggle: str) -> None:
    objs = rendered_objects(TOGGLES[toggle])
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), keys
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "Namespace", "CustomResourceDefinition"}
    watched = set(TOGGLES[toggle].get("watch", {}).get("namespaces", [])) | {NAMESPACE}
    for kind, ns, name in keys:
        if kind in cluster_scoped:
            assert ns is None, (kind, name)
        elif kind in ("Role", "RoleBinding"):
            assert ns in watched, (kind, ns, name)
        else:
            assert ns == NAMESPACE, (kind, ns, name)


def test_lint_is_clean() -> None:
    result = helm.lint(CHART, strict=True, kube_version="v" + KUBE_VERSIONS[0])
    assert result["errors"] == [], result
    assert result["messages"] == [], result


@pytest.mark.parametrize("toggle", ["cluster-wide", "monitoring-forced", "network-policy", "runs-restricted",
                                    "no-run-network-policy"])
def test_lint_is_clean_with_toggles(toggle: str) -> None:
    result = helm.lint(CHART, TOGGLES[toggle], strict=True, kube_version="v" + KUBE_VERSIONS[0])
    assert result["errors"] == [], result


@pytest.mark.parametrize(
    "values",
    [
        {"unknownKey": 1},
        {"watch": {"clusterWide": "yes"}},
        {"watch": {"namespaces": ["Not_A_Namespace"]}},
        {"operator": {"metricsPort": 70000}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"metrics": {"podMonitor": {"interval": "soon"}}},
        {"secrets": {"names": ["one"]}},  # removed: the operator reads no Secret
        {"runs": {"allowedStoragePrefixes": ["runs/{namespace}"]}},  # relative: no pod can use it
        {"runs": {"allowedStoragePrefixes": ["ftp://x/{namespace}"]}},
        {"runs": {"allowedImages": ["has space"]}},
        {"runs": {"allowedServiceAccountNames": ["Not_A_Name"]}},
        {"runs": {"networkPolicy": {"metricsFrom": [{"podSelektor": {}}]}}},
        {"runs": {"networkPolicy": {"enabled": "yes"}}},
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError):
        render_chart(values)


def test_values_schema_is_strict_json() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["additionalProperties"] is False

    def objects(node: Any) -> list[Obj]:
        if not isinstance(node, dict):
            return []
        found = [node] if node.get("type") == "object" and "properties" in node else []
        for child in node.get("properties", {}).values():
            found += objects(child)
        return found

    for node in objects(schema):
        assert node.get("additionalProperties") is False, node


def test_deployment_is_one_recreated_restricted_replica() -> None:
    objs = rendered_objects()
    dep = deployment(objs)
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(objs)
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["serviceAccountName"] == f"{RELEASE}"
    assert container["image"] == "ghcr.io/saeops/saeops:0.1.0-cpu"


def test_operator_command_follows_watch_values() -> None:
    default = operator_container(rendered_objects())
    assert default["command"] == ["saeops", "operator"]
    assert "--metrics-port=9090" in default["args"] and "--interval=10" in default["args"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in default["args"]
    assert f"--namespace={NAMESPACE}" in default["args"]
    assert "--all-namespaces" not in default["args"]

    multi = operator_container(rendered_objects(TOGGLES["namespaced-multi"]))["args"]
    assert [a for a in multi if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]

    wide = operator_container(rendered_objects(TOGGLES["cluster-wide"]))["args"]
    assert "--all-namespaces" in wide
    assert not any(a.startswith("--namespace") for a in wide)

    extra = operator_container(rendered_objects(TOGGLES["digest-and-extras"]))
    assert extra["args"][-1] == "--verbose" and "--interval=5" in extra["args"]
    assert extra["envFrom"] == [{"secretRef": {"name": "saeops-s3-readonly"}}]
    assert extra["image"] == "ghcr.io/saeops/saeops@sha256:" + "a" * 64


def test_metrics_service_targets_the_operator_port() -> None:
    objs = rendered_objects()
    (svc,) = by_kind(objs, "Service")
    dep = deployment(objs)
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    (port,) = svc["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"
    assert any(p["name"] == "metrics" for p in operator_container(objs)["ports"])


def test_monitoring_objects_only_when_crds_exist_or_forced() -> None:
    default = rendered_objects()
    assert not by_kind(default, "ServiceMonitor") and not by_kind(default, "PodMonitor")
    assert "PodMonitor" not in " ".join(o["kind"] for o in rendered_objects(TOGGLES["cluster-wide"]))
    disabled = rendered_objects({"metrics": {"serviceMonitor": {"enabled": False, "force": True},
                                             "podMonitor": {"enabled": False, "force": True}}})
    assert not by_kind(disabled, "ServiceMonitor") and not by_kind(disabled, "PodMonitor")
    no_service = rendered_objects(TOGGLES["no-metrics-service"])
    assert not by_kind(no_service, "ServiceMonitor"), "a ServiceMonitor needs the metrics Service"


def _check_monitor_shape(obj: Obj, endpoints_key: str) -> None:
    """Minimal structural check of a Prometheus Operator monitor (monitoring.coreos.com/v1)."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert obj["metadata"]["name"] and obj["metadata"]["namespace"] == NAMESPACE
    spec = obj["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", endpoints_key, "jobLabel", "podTargetLabels"}
    assert spec["selector"]["matchLabels"] and all(isinstance(v, str) for v in spec["selector"]["matchLabels"].values())
    ns_sel = spec["namespaceSelector"]
    assert ns_sel == {"any": True} or (list(ns_sel) == ["matchNames"] and ns_sel["matchNames"])
    allowed = {"port", "path", "interval", "scrapeTimeout", "honorLabels", "relabelings", "scheme"}
    for ep in spec[endpoints_key]:
        assert set(ep) <= allowed, set(ep) - allowed
        assert ep["port"] == "metrics" and ep["path"] == "/metrics"
        for key in ("interval", "scrapeTimeout"):
            assert str(ep[key])[-1] in "smh", ep[key]
        for relabel in ep.get("relabelings", []):
            assert relabel["action"] in {"keep", "drop", "replace", "labelmap", "labeldrop", "labelkeep"}


def test_monitoring_objects_shape() -> None:
    objs = rendered_objects(MONITORING_FORCED)
    (sm,) = by_kind(objs, "ServiceMonitor")
    (pm,) = by_kind(objs, "PodMonitor")
    _check_monitor_shape(sm, "endpoints")
    _check_monitor_shape(pm, "podMetricsEndpoints")
    (svc,) = by_kind(objs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # Training pods: the labels the operator puts on Job pods, and only rank 0 (completion index 0).
    assert pm["spec"]["podMetricsEndpoints"][0]["honorLabels"] is True
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    wide = rendered_objects(TOGGLES["monitoring-forced-cluster-wide"])
    assert by_kind(wide, "PodMonitor")[0]["spec"]["namespaceSelector"] == {"any": True}


def test_pod_monitor_selects_the_pods_the_operator_renders() -> None:
    render = pytest.importorskip("saeops.operator.render", reason="operator renderer not present yet")
    from saeops.api import load_resource
    from tests.deploy._helpers import EXAMPLES

    (pm,) = by_kind(rendered_objects(MONITORING_FORCED), "PodMonitor")
    selector = pm["spec"]["selector"]
    job = next(o for o in render.render_manifest(load_resource(EXAMPLES / "run.yaml")) if o["kind"] == "Job")
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert selector["matchLabels"].items() <= pod_labels.items()
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In" and pod_labels.get(expr["key"]) in expr["values"]
    ports = job["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert any(p["name"] == "metrics" for p in ports)
    # The operator pod itself is not a training pod.
    dep = deployment(rendered_objects(MONITORING_FORCED))
    assert not selector["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_network_policy_allows_only_what_the_operator_needs() -> None:
    (np,) = by_kind(rendered_objects(TOGGLES["network-policy"]), "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = np["spec"]["ingress"]
    assert {p["port"] for p in ingress["ports"]} == {"metrics", "healthz"}
    assert ingress["from"] == TOGGLES["network-policy"]["networkPolicy"]["metricsFrom"]
    egress_ports = {p["port"] for rule in np["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 443, 6443, 9400}
    assert not by_kind(rendered_objects(), "NetworkPolicy")
    # extraEgress appends rules (object storage on another port), rendered valid.
    minio = {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 9000, "protocol": "TCP"}]}
    values = {"networkPolicy": {**TOGGLES["network-policy"]["networkPolicy"], "extraEgress": [minio]}}
    (np,) = by_kind(rendered_objects(values), "NetworkPolicy")
    assert np["spec"]["egress"][-1] == minio


def test_notes_render_for_both_modes() -> None:
    assert f"namespace(s): {NAMESPACE}" in render_notes()
    assert "every namespace" in render_notes({"watch": {"clusterWide": True}})
    assert "PodMonitor scrapes" in render_notes(MONITORING_FORCED)


def test_chart_crds_are_byte_identical_to_generated_crds() -> None:
    generated = crd_files()
    if not generated:
        pytest.skip(f"{CRDS} holds no CRDs yet (generated by `saeops crds`)")
    chart_crds = CHART / "crds"
    expected = {p.name: p.read_bytes() for p in generated}
    actual = {p.name: p.read_bytes() for p in sorted(chart_crds.glob("*.yaml"))}
    assert sorted(actual) == sorted(expected), "helm/saeops/crds/ and crds/ hold different files: cp crds/*.yaml helm/saeops/crds/"
    for name, data in expected.items():
        assert actual[name] == data, f"helm/saeops/crds/{name} differs from crds/{name}: cp crds/*.yaml helm/saeops/crds/"


def test_chart_crds_are_valid_kubernetes_objects() -> None:
    files = sorted((CHART / "crds").glob("*.yaml"))
    if not files:
        pytest.skip("helm/saeops/crds/ is empty")
    from tests.deploy._helpers import load_yaml_docs

    for path in files:
        for crd in load_yaml_docs(path.read_text(encoding="utf-8")):
            for version in KUBE_VERSIONS:
                kubernetes_validate.validate(crd, version, strict=True)


def test_chart_packages() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        archive = helm.package(CHART, destination=tmp)
        assert str(archive).endswith("saeops-0.1.0.tgz")


@pytest.mark.parametrize("toggle", ["default", "namespaced-multi", "cluster-wide", "digest-and-extras",
                                    "runs-restricted", "runs-restricted-cluster-wide", "no-run-network-policy"])
def test_operator_cli_accepts_the_rendered_arguments(toggle: str) -> None:
    cli = pytest.importorskip("saeops.operator.cli", reason="operator CLI not present yet")
    container = operator_container(rendered_objects(TOGGLES[toggle]))
    assert container["command"] == ["saeops", "operator"]
    args = cli.parse_args(container["args"])
    assert args.metrics_port == 9090 and args.liveness == "http://0.0.0.0:8080/healthz"
    assert args.no_scanning
    if "cluster-wide" in toggle:
        assert args.all_namespaces and not args.namespace
    else:
        assert args.namespace and not args.all_namespaces
    # The cluster policy the values describe reaches the operator intact.
    policy = cli.build_policy(args)
    runs = TOGGLES[toggle].get("runs", {})
    assert policy.storage_prefixes == tuple(runs.get("allowedStoragePrefixes", ()))
    assert policy.images == tuple(runs.get("allowedImages", ()))
    assert policy.service_accounts == tuple(runs.get("allowedServiceAccountNames", ()))
    netpol = runs.get("networkPolicy", {})
    assert policy.network_policy == netpol.get("enabled", True)
    if policy.network_policy:
        operator_peer, *others = policy.metrics_from
        assert operator_peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
        dep = deployment(rendered_objects(TOGGLES[toggle]))
        assert operator_peer["podSelector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        default_peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        assert others == netpol.get("metricsFrom", default_peers)
