"""Rendered children: valid Kubernetes objects, Pod Security "restricted", torchrun wiring."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from saeops.api import SAETrainingRun, k8s, layout, names, parse_resource
from saeops.operator.policy import ClusterPolicy
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
    doc["spec"]["output"] = {"storageUri": "s3://bkt/runs/q", "secretRef": {"name": "s3-creds"},
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


def _restricted_violations(pod: dict) -> list[str]:
    """Pod Security Standards "restricted" (v1.30+), checked field by field."""
    bad = []
    psc = pod.get("securityContext", {})
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        bad.append("host namespaces")
    allowed = {"configMap", "emptyDir", "secret", "projected", "persistentVolumeClaim", "downwardAPI", "csi",
               "ephemeral"}
    bad += [f"volume {v['name']}" for v in pod.get("volumes", []) if set(v) - {"name"} - allowed]
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            bad.append("privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append("allowPrivilegeEscalation")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            bad.append("runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            bad.append("runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append("seccompProfile")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append("capabilities")
        if any("hostPort" in p for p in c.get("ports", [])):
            bad.append("hostPort")
        if (sc.get("procMount") or "Default") != "Default":
            bad.append("procMount")
    return bad


@pytest.mark.parametrize("doc", [quickstart(), _big_run(), cache_doc(), run_on_cache()], ids=["run", "big", "cache", "fromcache"])
def test_pods_are_restricted_read_only_and_tokenless(doc):
    pod = _job(doc)["spec"]["template"]["spec"]
    assert _restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["terminationMessagePath"] == layout.TERMINATION_LOG
    # Every place the runtime and its libraries write is an emptyDir, never the image.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {path for path, name in mounts.items() if "emptyDir" in volumes[name]}
    assert {"/tmp", "/dev/shm"} <= writable
    env = {e["name"]: e for e in c["env"]}
    for key in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR", "MPLCONFIGDIR"):
        assert any(env[key]["value"] == w or env[key]["value"].startswith(w + "/") for w in writable), key
    assert env["SAEOPS_POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_pod_security_restricted_check_catches_violations():
    pod = _job(quickstart())["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    assert set(_restricted_violations(pod)) == {"allowPrivilegeEscalation", "volume h"}


def test_indexed_job_and_torchrun():
    job = _job(_big_run())
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    assert spec["podFailurePolicy"]["rules"][0] == {
        "action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["subdomain"] == names.service_name("SAETrainingRun", "quickstart") == "quickstart-run"
    cmd = pod["containers"][0]["command"]
    assert cmd[:6] == ["python", "-m", "saeops.runtime.distributed.launcher", "--nnodes=4", "--nproc-per-node=8",
                       "--node-rank=$(JOB_COMPLETION_INDEX)"]
    assert "--master-addr=quickstart-run-0.quickstart-run" in cmd and "--master-port=29500" in cmd
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
    assert "status" not in spec
    # Identity for the runtime's run fingerprint: name, namespace and uid.
    assert spec["metadata"] == {"name": "quickstart", "namespace": "default", "uid": "uid-quickstart"}
    SAETrainingRun.model_validate(spec)  # the runtime can read it


def test_service_headless_and_owner_refs():
    children = _children(quickstart())
    svc = next(o for o in children if o["kind"] == "Service")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {names.LABEL_RUN: "quickstart", names.LABEL_KIND: "saetrainingrun"}
    assert svc["metadata"]["name"] == "quickstart-run"
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


@pytest.mark.parametrize("kind", ["SAETrainingRun", "ActivationCache"])
def test_long_names_are_valid_and_deterministic(kind):
    long = "a" * 63
    for fn, limit in ((names.job_name, 52), (names.service_name, 52), (names.configmap_name, 63),
                      (names.network_policy_name, 52)):
        a, b = fn(kind, long), fn(kind, long)
        assert a == b and len(a) <= limit and k8s.is_dns_label(a)
    # Pods of an Indexed Job have the hostname `<job>-<index>` (a DNS label), even for 10-digit indexes.
    assert len(f"{names.job_name(kind, long)}-{9_999_999_999}") <= 63
    assert names.job_name(kind, long) != names.job_name(kind, "a" * 62)
    assert names.service_name(kind, "1run")[0].isalpha()
    suffix = "-run" if kind == "SAETrainingRun" else "-cache"
    assert names.job_name(kind, "quickstart") == "quickstart" + suffix
    assert names.configmap_name(kind, "quickstart") == f"quickstart{suffix}-spec"
    assert names.job_name(kind, long).endswith(suffix)
    doc = quickstart()
    doc["metadata"]["name"] = long
    for obj in _children(doc):
        kubernetes_validate.validate(obj, K8S, strict=True)


def test_render_sweep_gives_first_trials():
    trials = render_manifest(sweep_doc(parallel=3))
    assert [t["metadata"]["name"] for t in trials] == ["sw-0", "sw-1", "sw-2"]
    assert trials[0]["spec"]["output"]["storageUri"].endswith("/sw-0")


def test_child_names_of_every_kind_and_name_are_distinct():
    """No two (kind, name) pairs share a Job, Service, ConfigMap or NetworkPolicy name."""
    pool = ["a", "a-run", "a-cache", "a-run-spec", "run", "cache", "x" * 63, "x" * 62, "1a", "s-1a"]
    for fn in (names.job_name, names.service_name, names.configmap_name, names.network_policy_name):
        made = {(kind, n): fn(kind, n) for kind in ("SAETrainingRun", "ActivationCache") for n in pool}
        assert len(set(made.values())) == len(made), fn.__name__


def test_network_policy_fences_the_run():
    doc = _big_run()
    peers = ({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},)
    children = render_children(doc, parse_resource({k: doc[k] for k in ("apiVersion", "kind", "metadata", "spec")}),
                               policy=ClusterPolicy(metrics_from=peers))
    assert [c["kind"] for c in children] == ["ConfigMap", "Service", "NetworkPolicy", "Job"]
    netpol = children[2]
    kubernetes_validate.validate(netpol, K8S, strict=True)
    pod_labels = _job(doc)["spec"]["template"]["metadata"]["labels"]
    spec = netpol["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert spec["policyTypes"] == ["Ingress"]
    same_run, metrics = spec["ingress"]
    # Same run: every port (torchrun's rendezvous and the collectives' data ports), same namespace only.
    assert same_run == {"from": [{"podSelector": spec["podSelector"]}]}
    assert metrics == {"from": list(peers), "ports": [{"port": 9400, "protocol": "TCP"}]}
    # Another run's pods do not match: the selector names the run.
    assert spec["podSelector"]["matchLabels"][names.LABEL_RUN] == "quickstart"
    off = render_children(doc, parse_resource({k: doc[k] for k in ("apiVersion", "kind", "metadata", "spec")}),
                          policy=ClusterPolicy(network_policy=False))
    assert [c["kind"] for c in off] == ["ConfigMap", "Service", "Job"]


def test_render_output_has_no_shared_objects():
    """`saeops render` prints YAML: a dict used twice would print as an anchor and an alias."""
    import yaml

    for doc in (quickstart(), cache_doc()):
        text = yaml.safe_dump_all(_children(doc), sort_keys=False)
        assert "&id" not in text and "*id" not in text


def _grouped_sweep_big():
    """A grouped sweep whose trials use the big run's pods (GPUs, queue, S3 endpoint)."""
    doc = sweep_doc(max_trials=4, parallel=4, grouped=True)
    big = _big_run()["spec"]
    for key in ("resources", "parallelism", "queueName", "output"):
        doc["spec"]["trialTemplate"][key] = big[key]
    doc["spec"]["trialTemplate"]["trainer"]["batchSize"] = 4096
    return doc


def _as_written(doc):
    """A manifest as `saeops render` reads it from a file: no namespace, uid or generation."""
    doc["metadata"] = {"name": doc["metadata"]["name"]}
    return doc


@pytest.mark.parametrize("doc", [sweep_doc(max_trials=4, parallel=4, grouped=True), _grouped_sweep_big(),
                                 _as_written(sweep_doc(max_trials=4, parallel=4, grouped=True))],
                         ids=["grouped", "grouped-big", "as-written"])
def test_group_children_validate_and_pods_are_restricted(doc):
    objs = render_manifest(doc)
    kinds = [o["kind"] for o in objs]
    assert kinds == ["SAETrainingRun"] * 4 + ["ConfigMap", "Service", "NetworkPolicy", "Job"]
    for obj in objs[4:]:
        kubernetes_validate.validate(obj, K8S, strict=True)
    job = objs[-1]
    pod = job["spec"]["template"]["spec"]
    assert _restricted_violations(pod) == [] and pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["command"][-2:] == ["--group", "/etc/saeops"]
    trial = parse_resource(objs[0]).spec
    # The Job controller retries a group's pods (each member resumes): maxRestarts per node.
    assert job["spec"]["backoffLimit"] == trial.failure_policy.max_restarts * trial.resources.num_nodes > 0
    assert pod["volumes"][0] == {"name": "spec", "configMap": {"name": objs[4]["metadata"]["name"]}}


def test_group_child_names_never_take_a_run_or_cache_childs_name():
    pool = ["a", "a-run", "a-cache", "a-group", "x" * 63, "1a", "s-1a"]
    groups = [names.group_name(s, [i, i + 1]) for s in pool for i in (0, 7)]
    assert len(set(groups)) == len(groups) and all(k8s.is_dns_label(g) for g in groups)
    made = {names.group_job_name(g) for g in groups} | {names.group_configmap_name(g) for g in groups}
    made |= {names.group_service_name(g) for g in groups}
    for kind in ("SAETrainingRun", "ActivationCache"):
        for n in pool + groups:
            for fn in (names.job_name, names.service_name, names.configmap_name):
                assert fn(kind, n) not in made
    assert names.group_name("sw", [0, 1, 2]) != names.group_name("sw", [0, 1, 3])  # same first trial, other group
