"""Least privilege: the chart's roles grant nothing beyond what the operator needs."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy._helpers import NAMESPACE, RELEASE, Obj, by_kind, rendered_objects

pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")

KINDS = ("saetrainingruns", "activationcaches", "saesweeps")
CRUD = {"create", "get", "list", "watch", "patch", "delete"}

# (apiGroup, resource) -> the most each namespaced rule may grant.
ALLOWED: dict[tuple[str, str], set[str]] = {
    # get/list/watch/patch/update for all kinds; sweeps create trials, TTLs delete runs and caches.
    ("saeops.io", "saetrainingruns"): {"get", "list", "watch", "patch", "update", "create", "delete"},
    ("saeops.io", "activationcaches"): {"get", "list", "watch", "patch", "update", "delete"},
    ("saeops.io", "saesweeps"): {"get", "list", "watch", "patch", "update"},
    **{("saeops.io", f"{k}/status"): {"get", "patch", "update"} for k in KINDS},
    **{("saeops.io", f"{k}/finalizers"): {"update"} for k in KINDS},
    ("batch", "jobs"): CRUD,
    ("", "pods"): {"get", "list", "watch"},
    ("", "services"): CRUD,
    ("", "configmaps"): CRUD,
    ("", "events"): {"create", "patch"},
    ("", "secrets"): {"get"},  # and only with resourceNames (checked below)
}
# Cluster-scoped needs of kopf itself (resource discovery; namespaces when serving a namespace list).
ALLOWED_DISCOVERY: dict[tuple[str, str], set[str]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}

SCENARIOS: dict[str, dict[str, Any]] = {
    "namespaced": {},
    "namespaced-multi": {"watch": {"namespaces": ["team-a", "team-b"]}},
    "cluster-wide": {"watch": {"clusterWide": True}},
    "secrets": {"secrets": {"names": ["saeops-s3-credentials", "other"]}},
    "secrets-cluster-wide": {"secrets": {"names": ["saeops-s3-credentials"]}, "watch": {"clusterWide": True}},
}


def roles(objs: list[Obj]) -> list[Obj]:
    return by_kind(objs, "Role") + by_kind(objs, "ClusterRole")


def grants(role: Obj) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(apiGroup, resource, verb, resourceNames) for every combination a role's rules grant."""
    out = []
    for rule in role.get("rules", []):
        assert "nonResourceURLs" not in rule, f"{role['metadata']['name']}: non-resource URLs granted"
        names = tuple(rule.get("resourceNames", ()))
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    out.append((group, resource, verb, names))
    return out


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_no_wildcards_and_nothing_beyond_the_allowed_list(scenario: str) -> None:
    objs = rendered_objects(SCENARIOS[scenario])
    assert roles(objs), "no roles rendered"
    for role in roles(objs):
        name = role["metadata"]["name"]
        allowed = ALLOWED_DISCOVERY if name.endswith("-discovery") else ALLOWED
        for group, resource, verb, _ in grants(role):
            assert "*" not in (group, resource, verb), f"{name}: wildcard in {group}/{resource} {verb}"
            assert (group, resource) in allowed, f"{name}: grants {verb} on {group or 'core'}/{resource}"
            assert verb in allowed[(group, resource)], f"{name}: grants {verb} on {group or 'core'}/{resource}"
        assert "aggregationRule" not in role


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_secrets_only_get_by_name(scenario: str) -> None:
    values = SCENARIOS[scenario]
    expected = set(values.get("secrets", {}).get("names", []))
    seen: set[str] = set()
    for role in roles(rendered_objects(values)):
        for group, resource, verb, names in grants(role):
            if group == "" and resource == "secrets":
                assert verb == "get", f"{role['metadata']['name']}: {verb} on secrets"
                assert names, f"{role['metadata']['name']}: secrets without resourceNames"
                assert set(names) == expected
                seen.update(names)
    assert seen == expected


def test_no_secrets_at_all_by_default() -> None:
    for role in roles(rendered_objects()):
        assert all(resource != "secrets" for _, resource, _, _ in grants(role))


def test_namespaced_mode_uses_roles_in_each_watched_namespace() -> None:
    objs = rendered_objects(SCENARIOS["namespaced-multi"])
    assert {r["metadata"]["namespace"] for r in by_kind(objs, "Role")} == {"team-a", "team-b"}
    assert {b["metadata"]["namespace"] for b in by_kind(objs, "RoleBinding")} == {"team-a", "team-b"}
    # The only cluster-wide grant is kopf's discovery, which is read-only.
    (cluster_role,) = by_kind(objs, "ClusterRole")
    assert cluster_role["metadata"]["name"] == f"{RELEASE}-discovery"
    assert {verb for _, _, verb, _ in grants(cluster_role)} <= {"get", "list", "watch"}


def test_cluster_wide_mode_uses_a_cluster_role_and_no_roles() -> None:
    objs = rendered_objects(SCENARIOS["cluster-wide"])
    assert not by_kind(objs, "Role") and not by_kind(objs, "RoleBinding")
    names = {r["metadata"]["name"] for r in by_kind(objs, "ClusterRole")}
    assert names == {RELEASE, f"{RELEASE}-discovery"}
    # kopf only lists namespaces to resolve a namespace list; cluster-wide it does not need them.
    assert not any(resource == "namespaces" for r in roles(objs) for _, resource, _, _ in grants(r))


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_bindings_bind_the_operator_service_account_to_rendered_roles(scenario: str) -> None:
    objs = rendered_objects(SCENARIOS[scenario])
    role_keys = {(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]) for r in roles(objs)}
    (sa,) = by_kind(objs, "ServiceAccount")
    bindings = by_kind(objs, "RoleBinding") + by_kind(objs, "ClusterRoleBinding")
    assert len(bindings) == len(role_keys)
    for binding in bindings:
        ref = binding["roleRef"]
        ns = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        assert (ref["kind"], ns, ref["name"]) in role_keys, binding
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
        ]


def test_every_operator_need_is_granted() -> None:
    """The converse: the namespaced role covers each (group, resource, verb) in ALLOWED but secrets."""
    (role,) = by_kind(rendered_objects(), "Role")
    granted = {(g, r, v) for g, r, v, _ in grants(role)}
    for (group, resource), verbs in ALLOWED.items():
        if resource == "secrets":
            continue
        for verb in verbs:
            assert (group, resource, verb) in granted, (group, resource, verb)


def test_rbac_can_be_disabled() -> None:
    objs = rendered_objects({"rbac": {"create": False}})
    assert not roles(objs) and not by_kind(objs, "RoleBinding") and not by_kind(objs, "ClusterRoleBinding")
