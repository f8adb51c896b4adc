"""Tenancy: what a cluster admin restricts (storage prefixes per namespace, images, ServiceAccounts),
relative outputs refused for a cluster, in the reconcile, in sweeps and in `saeops render`."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from saeops.api import SpecError, parse_resource
from saeops.api.uris import URIError
from saeops.operator.cli import build_policy, parse_args
from saeops.operator.policy import ClusterPolicy
from saeops.operator.reconcile import reconcile
from saeops.operator.render import render_manifest
from saeops.operator.state import Observed, ObservedSweep
from saeops.operator.sweep import reconcile_sweep

from .helpers import ROOT, T0, cache_doc, cond, quickstart, sweep_doc

TEAMS = ClusterPolicy(storage_prefixes=("s3://shared/{namespace}", "file:///mnt/scratch/{namespace}"),
                      images=("ghcr.io/saeops/saeops:*", "registry.corp/ml/trainer:1.2"),
                      service_accounts=("default", "saeops-runner"))


def _run(uri: str = "s3://shared/default/runs/a", namespace: str = "default", **resources) -> dict:
    doc = quickstart()
    doc["metadata"]["namespace"] = namespace
    doc["spec"]["output"]["storageUri"] = uri
    doc["spec"]["resources"] = {**doc["spec"].get("resources", {}), **resources}
    return doc


def _failed(doc: dict, policy: ClusterPolicy = TEAMS) -> dict:
    d = reconcile(Observed(resource=doc), T0, policy)
    assert not d.create, "a refused run creates nothing"
    return cond(d.status, "Failed")


@pytest.mark.parametrize("uri", ["s3://shared/default", "s3://shared/default/runs/a", "file:///mnt/scratch/default/x",
                                 "/mnt/scratch/default/x"])
def test_inside_the_namespace_prefix_runs(uri):
    d = reconcile(Observed(resource=_run(uri)), T0, TEAMS)
    assert any(c["kind"] == "Job" for c in d.create)


@pytest.mark.parametrize(("uri", "namespace"), [
    ("s3://shared/team-b/runs/a", "default"),      # another team's prefix
    ("s3://shared/defaultx/runs/a", "default"),    # whole segments only
    ("s3://shared", "default"),                    # above the prefix
    ("s3://other/default/runs", "default"),        # another bucket
    ("file:///mnt/scratch/team-b/x", "default"),
    ("s3://shared/default/runs/a", "team-b"),      # the same URI from another namespace
])
def test_outside_the_namespace_prefix_is_forbidden(uri, namespace):
    failed = _failed(_run(uri, namespace))
    assert failed["reason"] == "Forbidden"
    assert failed["message"].startswith("spec.output.storageUri:")
    assert f"s3://shared/{namespace}" in failed["message"] and f"file:///mnt/scratch/{namespace}" in failed["message"]


@pytest.mark.parametrize("uri", ["s3://shared/default/../team-b", "s3://shared/default//x", "s3://shared/./default"])
def test_path_tricks_cannot_escape_the_prefix(uri):
    failed = _failed(_run(uri))
    assert failed["reason"] in ("InvalidSpec", "Forbidden") and "storageUri" in failed["message"]


@pytest.mark.parametrize("uri", ["runs/quickstart", "./runs", "quickstart"])
def test_a_relative_output_is_refused_for_a_cluster(uri):
    failed = _failed(_run(uri), ClusterPolicy())
    assert failed["reason"] == "InvalidSpec"
    assert failed["message"].startswith("spec.output.storageUri:")
    assert "s3://" in failed["message"] and "mounted volume" in failed["message"]


def test_images_and_service_accounts():
    ok = reconcile(Observed(resource=_run(image="ghcr.io/saeops/saeops:0.2.0-cuda")), T0, TEAMS)
    assert any(c["kind"] == "Job" for c in ok.create)
    ok = reconcile(Observed(resource=_run(image="registry.corp/ml/trainer:1.2", serviceAccountName="saeops-runner")),
                   T0, TEAMS)
    assert any(c["kind"] == "Job" for c in ok.create)
    failed = _failed(_run(image="registry.corp/ml/trainer:1.3"))
    assert failed["reason"] == "Forbidden" and failed["message"].startswith("spec.resources.image:")
    failed = _failed(_run(serviceAccountName="cluster-admin-ish"))
    assert failed["reason"] == "Forbidden" and failed["message"].startswith("spec.resources.serviceAccountName:")
    # Unset means the namespace's `default` ServiceAccount, which must then be listed.
    failed = _failed(_run(), ClusterPolicy(service_accounts=("saeops-runner",)))
    assert failed["reason"] == "Forbidden" and "default is not allowed" in failed["message"]


def test_a_forbidden_run_is_retried_when_fixed():
    doc = _run("s3://shared/team-b/x")
    d = reconcile(Observed(resource=doc), T0, TEAMS)
    doc = copy.deepcopy(doc)
    doc["status"] = d.status
    assert reconcile(Observed(resource=doc), T0, TEAMS).changes_nothing
    doc["spec"]["output"]["storageUri"] = "s3://shared/default/x"
    doc["metadata"]["generation"] = 2
    d = reconcile(Observed(resource=doc), T0, TEAMS)
    assert any(c["kind"] == "Job" for c in d.create) and cond(d.status, "Failed")["status"] == "False"


def test_caches_are_checked_too():
    doc = cache_doc()
    assert _failed(doc)["reason"] == "Forbidden"  # s3://bucket/caches/acts is outside s3://shared/default


def test_a_sweep_with_a_forbidden_template_fails_before_any_trial():
    sweep = sweep_doc()
    sweep["spec"]["trialTemplate"]["output"] = {"storageUri": "s3://elsewhere/sweeps"}
    d = reconcile_sweep(ObservedSweep(resource=sweep), T0, TEAMS)
    assert not d.create and d.status["phase"] == "Failed"
    failed = cond(d.status, "Failed")
    assert failed["reason"] == "Forbidden" and failed["message"].startswith("spec.trialTemplate.output.storageUri:")
    sweep["spec"]["trialTemplate"]["output"] = {"storageUri": "s3://shared/default/sweeps"}
    d = reconcile_sweep(ObservedSweep(resource=sweep), T0, TEAMS)
    assert [t["spec"]["output"]["storageUri"] for t in d.create] == ["s3://shared/default/sweeps/sw-0",
                                                                       "s3://shared/default/sweeps/sw-1"]


def test_render_refuses_what_the_operator_would_fail():
    doc = quickstart()
    doc["spec"]["output"]["storageUri"] = "runs/quickstart"
    with pytest.raises(SpecError, match=r"^spec.output.storageUri: .*relative.*s3://"):
        render_manifest(parse_resource({k: doc[k] for k in ("apiVersion", "kind", "metadata", "spec")}))
    with pytest.raises(SpecError, match=r"outside the storage allowed in namespace default"):
        render_manifest(_run("s3://shared/other"), TEAMS)


def test_saeops_render_prints_one_error_line_for_a_relative_output():
    out = subprocess.run([sys.executable, "-m", "saeops.cli", "render", str(ROOT / "examples" / "quickstart.yaml")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: spec.output.storageUri: 'runs/quickstart' is a relative path")
    ok = subprocess.run([sys.executable, "-m", "saeops.cli", "render", str(ROOT / "examples" / "quickstart.yaml"),
                         "--set", "spec.output.storageUri=s3://bucket/q"],
                        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert ok.returncode == 0 and "kind: Job" in ok.stdout, ok.stderr


def test_operator_flags_build_the_policy():
    args = parse_args(["--allowed-storage-prefix", "s3://shared/{namespace}", "--allowed-image", "ghcr.io/x/*",
                       "--allowed-service-account", "runner", "--metrics-from",
                       '{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}'])
    policy = build_policy(args)
    assert policy.storage_prefixes == ("s3://shared/{namespace}",) and policy.images == ("ghcr.io/x/*",)
    assert policy.service_accounts == ("runner",) and policy.network_policy
    assert policy.metrics_from == ({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},)
    assert not build_policy(parse_args(["--no-run-network-policy"])).network_policy
    with pytest.raises(URIError):
        build_policy(parse_args(["--allowed-storage-prefix", "relative/{namespace}"]))
    with pytest.raises(SystemExit):
        parse_args(["--metrics-from", "[1]"])


def test_operator_refuses_a_bad_prefix_in_one_line():
    out = subprocess.run([sys.executable, "-m", "saeops.operator", "--allowed-storage-prefix", "s3://"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: --allowed-storage-prefix:")
