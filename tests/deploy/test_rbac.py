"""Least privilege: the chart's roles grant exactly what the operator's code calls.

The verbs are not listed by hand: every scenario of tests/operator/scenarios.py runs the real
operator process against the API emulator, which records each request made with the operator's
token as (API group, resource, verb), the unit an RBAC rule grants. The chart's Role must grant
that set and nothing more, except `update` on the kinds' `finalizers`, which no request makes:
the API server's admission (OwnerReferencesPermissionEnforcement) demands it of whoever creates
an object whose owner reference sets blockOwnerDeletion.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy._helpers import NAMESPACE, RELEASE, Obj, by_kind, rendered_objects

pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")

KINDS = ("saetrainingruns", "activationcaches", "saesweeps")
Grant = tuple[str, str, str]
ADMISSION_ONLY: set[Grant] = {("saeops.io", f"{k}/finalizers", "update") for k in KINDS}
NETWORK_POLICY_VERBS: set[Grant] = {("networking.k8s.io", "networkpolicies", v) for v in ("get", "create", "delete")}

SCENARIOS: dict[str, dict[str, Any]] = {
    "namespaced": {},
    "namespaced-multi": {"watch": {"namespaces": ["team-a", "team-b"]}},
    "cluster-wide": {"watch": {"clusterWide": True}},
    "no-run-network-policy": {"runs": {"networkPolicy": {"enabled": False}}},
    "restricted-runs": {"runs": {"allowedStoragePrefixes": ["s3://sae/{namespace}"], "allowedImages": ["ghcr.io/x/*"]}},
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


def granted(role: Obj) -> set[Grant]:
    return {(g, r, v) for g, r, v, _ in grants(role)}


@pytest.fixture(scope="module")
def derived() -> set[Grant]:
    """(group, resource, verb) of every request the operator made in the emulator scenarios."""
    from tests.operator import scenarios

    outcomes = scenarios.run_all()
    failed = [name for name, o in outcomes.items() if o.error is not None]
    assert not failed, f"scenarios {failed} failed (see tests/operator/test_process.py): their calls are incomplete"
    calls = {(c.group, c.resource, c.verb) for o in outcomes.values() for c in o.calls}
    print(f"\n{len(calls)} (group, resource, verb) derived from {len(outcomes)} scenarios, "
          f"{sum(len(o.calls) for o in outcomes.values())} requests:")
    for group, resource, verb in sorted(calls):
        print(f"  {group or 'core'}/{resource}: {verb}")
    return calls


def test_the_role_grants_exactly_the_verbs_the_code_uses(derived: set[Grant]) -> None:
    (role,) = by_kind(rendered_objects(), "Role")
    have = granted(role)
    assert have - derived - ADMISSION_ONLY == set(), "granted but never used"
    assert derived - have == set(), "used but not granted"
    # The emulator saw no Secret, no wildcard and nothing cluster-scoped.
    assert not any(r == "secrets" for _, r, _ in derived)
    assert {r for _, r, _ in derived} >= {"jobs", "pods", "configmaps", "services", "networkpolicies", "events"}


def test_without_run_network_policies_the_role_drops_them(derived: set[Grant]) -> None:
    objs = rendered_objects(SCENARIOS["no-run-network-policy"])
    (role,) = by_kind(objs, "Role")
    assert granted(role) == (derived | ADMISSION_ONLY) - NETWORK_POLICY_VERBS
    (dep,) = by_kind(objs, "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--no-run-network-policy" in args and not any(a.startswith("--metrics-from") for a in args)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_role_grants_the_same_rules_and_no_wildcards(scenario: str) -> None:
    objs = rendered_objects(SCENARIOS[scenario])
    assert roles(objs), "no roles rendered"
    expected = granted(by_kind(rendered_objects({k: v for k, v in SCENARIOS[scenario].items() if k != "watch"}),
                               "Role")[0])
    for role in roles(objs):
        for group, resource, verb, names in grants(role):
            assert "*" not in (group, resource, verb), f"{role['metadata']['name']}: wildcard"
            assert not names
        assert granted(role) == expected, role["metadata"]["name"]
        assert "aggregationRule" not in role


def test_no_secrets_and_no_cluster_wide_discovery() -> None:
    for values in SCENARIOS.values():
        for role in roles(rendered_objects(values)):
            assert all(resource not in ("secrets", "namespaces", "customresourcedefinitions")
                       for _, resource, _, _ in grants(role)), role["metadata"]["name"]


def test_the_operator_runs_without_scanning() -> None:
    """No CRD/Namespace watch is granted, so kopf must not try one (it would log warnings)."""
    for values in SCENARIOS.values():
        (dep,) = by_kind(rendered_objects(values), "Deployment")
        assert "--no-scanning" in dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_namespaced_mode_uses_roles_in_each_watched_namespace() -> None:
    objs = rendered_objects(SCENARIOS["namespaced-multi"])
    assert {r["metadata"]["namespace"] for r in by_kind(objs, "Role")} == {"team-a", "team-b"}
    assert {b["metadata"]["namespace"] for b in by_kind(objs, "RoleBinding")} == {"team-a", "team-b"}
    assert not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding")


def test_cluster_wide_mode_uses_a_cluster_role_and_no_roles() -> None:
    objs = rendered_objects(SCENARIOS["cluster-wide"])
    assert not by_kind(objs, "Role") and not by_kind(objs, "RoleBinding")
    assert {r["metadata"]["name"] for r in by_kind(objs, "ClusterRole")} == {RELEASE}


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


def test_rbac_can_be_disabled() -> None:
    objs = rendered_objects({"rbac": {"create": False}})
    assert not roles(objs) and not by_kind(objs, "RoleBinding") and not by_kind(objs, "ClusterRoleBinding")
