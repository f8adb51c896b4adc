"""Rendered children: valid Kubernetes objects, Pod Security "restricted", torchrun wiring."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from saeops.api import SAETrainingRun, names, parse_resource
from saeops.operator.render import render_children, render_manifest

from .helpers import cache_doc, example_docs, quickstart, run_on_cache, sweep_doc

K8S = "1.35.0"


def _children(doc):
    return render_children(doc, parse_resource({k: doc[k] for k in ("apiVersion", "kind", "metadata", "spec")}))


def _job(doc):
    return next(o for o in _children(doc) if o["kind"] == "Job")


def _big_run():
    doc = quickstart()
    doc["spec"]["resources"] = {
        "numNodes": 4, "numProcPerNode": 8,
        "resourcesPerNode": {"requests": {"cpu": "8", "nvidia.com/gpu": "8"}, "limits": {"nvidia.com/gpu": "8"}},
        "nodeSelector": {"gpu": "h100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "batch-low", "shmSize": "16Gi",
    }
    doc["spec"]["parallelism"] = {"data": 32}
    doc["spec"]["trainer"]["batchSize"] = 4096
    doc["spec"]["queueName"] = "team-a"
    doc["spec"]["output"] = {"storageUri": "s3://b/runs/q", "secretRef": {"name": "s3-creds"},
                             "endpointUrl": "http://minio:9000", "region": "eu-west-1"}
    return doc


@pytest.mark.parametrize("doc", [quickstart(), _big_run(), cache_doc(), run_on_cache()], ids=["run", "big", "cache", "fromcache"])
def test_children_validate(doc):
    for obj in _children(doc):
        kubernetes_validate.validate(obj, K8S, strict=True)


@pytest.mark.parametrize("doc", example_docs(), ids=lambda d: d["metadata"]["name"])
def test_render_manifest_examples_validate(doc):
    for obj in render_manifest(doc):
        if obj["apiVersion"].startswith("saeops.io"):
            parse_resource(obj)  # trials are valid runs
        else:
            kubernetes_validate.validate(obj, K8S, strict=True)


def test_pod_security_restricted():
    pod = _job(_big_run())["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert "privileged" not in sc or sc["privileged"] is False
        assert not c.get("ports") or all("hostPort" not in p for p in c["ports"])
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    allowed = {"configMap", "emptyDir", "secret", "projected", "persistentVolumeClaim", "downwardAPI"}
    for v in pod["volumes"]:
        assert set(v) - {"name"} <= allowed, v


def test_indexed_job_and_torchrun():
    job = _job(_big_run())
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    assert spec["podFailurePolicy"]["rules"][0] == {
        "action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["subdomain"] == names.service_name("quickstart")
    cmd = pod["containers"][0]["command"]
    assert cmd[:4] == ["torchrun", "--nnodes=4", "--nproc-per-node=8", "--node-rank=$(JOB_COMPLETION_INDEX)"]
    assert "--master-addr=quickstart-0.quickstart" in cmd and "--master-port=29500" in cmd
    assert cmd[-2:] == ["--spec", "/etc/saeops/spec.json"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert "JOB_COMPLETION_INDEX" in env and env["SAEOPS_RUN_NAME"]["value"] == "quickstart"
    assert env["SAEOPS_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["priorityClassName"] == "batch-low"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert job["metadata"]["labels"][names.KUEUE_QUEUE_LABEL] == "team-a"
    assert spec["suspend"] is True  # Kueue unsuspends on admission
    tmpl = spec["template"]["metadata"]
    assert tmpl["annotations"]["prometheus.io/port"] == "9400"
    assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in pod["containers"][0]["ports"]


def test_secret_only_by_reference():
    doc = _big_run()
    children = _children(doc)
    env = {e["name"]: e for e in _job(doc)["spec"]["template"]["spec"]["containers"][0]["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": key, "optional": False}
        assert "value" not in env[key]
    cm = next(o for o in children if o["kind"] == "ConfigMap")
    spec = json.loads(cm["data"]["spec.json"])
    assert spec["spec"]["output"]["secretRef"] == {"name": "s3-creds"}
    assert "status" not in spec and "uid" not in spec["metadata"]
    SAETrainingRun.model_validate(spec)  # the runtime can read it


def test_service_headless_and_owner_refs():
    children = _children(quickstart())
    svc = next(o for o in children if o["kind"] == "Service")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {names.LABEL_RUN: "quickstart", names.LABEL_KIND: "saetrainingrun"}
    pod_labels = _job(quickstart())["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    for obj in children:
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref["controller"] is True and ref["blockOwnerDeletion"] is True and ref["uid"] == "uid-quickstart"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == names.MANAGED_BY


def test_cache_ref_becomes_cache_uri():
    run = run_on_cache()
    cache = cache_doc()
    cache["status"] = {"phase": "Succeeded", "artifacts": {"cache": "s3://bucket/caches/acts"}}
    model = parse_resource({k: run[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    cm = render_children(run, model, cache)[0]
    acts = json.loads(cm["data"]["spec.json"])["spec"]["activations"]
    assert acts == {"cacheUri": "s3://bucket/caches/acts"}


def test_long_names_are_valid_and_deterministic():
    long = "a" * 63
    for fn, limit in ((names.job_name, 52), (names.service_name, 52), (names.configmap_name, 63)):
        a, b = fn(long), fn(long)
        assert a == b and len(a) <= limit and names.DNS_LABEL_RE.match(a)
    assert names.job_name(long) != names.job_name("a" * 62)
    assert names.service_name("1run")[0].isalpha()
    assert names.job_name("quickstart") == "quickstart"
    doc = quickstart()
    doc["metadata"]["name"] = long
    for obj in _children(doc):
        kubernetes_validate.validate(obj, K8S, strict=True)


def test_render_sweep_gives_first_trials():
    trials = render_manifest(sweep_doc(parallel=3))
    assert [t["metadata"]["name"] for t in trials] == ["sw-0", "sw-1", "sw-2"]
    assert trials[0]["spec"]["output"]["storageUri"].endswith("/sw-0")
