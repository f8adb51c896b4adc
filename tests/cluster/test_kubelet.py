"""The pod runner's translation of pods into containers, and its Job controller rules; no engine
needed. The last test runs every example's rendered Job template through the translation."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import jobctl, kubelet
from tests.cluster.apiserver import ROOT, table

Obj = dict[str, Any]


def pod(**container: Any) -> Obj:
    base = {"name": "runtime", "image": "img:1", "command": ["run", "--rank=$(JOB_COMPLETION_INDEX)", "$$(KEEP)"],
            "args": ["--undefined=$(NOPE)"]}
    return {"metadata": {"name": "j-0-abcde", "namespace": "ns", "uid": "u1",
                         "annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
            "spec": {"containers": [{**base, **container}], "hostname": "j-0", "subdomain": "j", "nodeName": "n",
                     "volumes": [{"name": "spec", "configMap": {"name": "cm"}},
                                 {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                                 {"name": "tmp", "emptyDir": {}}]},
            "status": {"podIP": "127.1.2.3", "hostIP": "127.0.0.1"}}


OBJECTS = {
    ("Secret", "creds"): {"kind": "Secret", "data": {"KEY": base64.b64encode(b"from-data").decode()},
                          "stringData": {"OTHER": "from-string-data"}},
    ("ConfigMap", "cm"): {"kind": "ConfigMap", "data": {"spec.json": "{}", "extra": "x"}},
}


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "x$(A)"}
    assert kubelet.expand("$(A)-$(B)-$(C)-$$(A)-$", env) == "1-x$(A)-$(C)-$(A)-$"


@pytest.mark.parametrize(("text", "value"), [("500m", "0.5"), ("2", "2"), ("4Gi", str(4 * 2**30)), ("1k", "1000"),
                                             ("1.5Mi", str(int(1.5 * 2**20)))])
def test_quantities(text: str, value: str) -> None:
    assert kubelet.quantity(text) == kubelet.Decimal(value)


def test_env_resolves_downward_api_secrets_and_earlier_variables() -> None:
    p = pod(env=[
        {"name": "INDEX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "ADDR", "value": "$(IP):9400"},
        {"name": "K1", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "KEY"}}},
        {"name": "K2", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "OTHER"}}},
        {"name": "K3", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "ABSENT", "optional": True}}},
    ])
    env = kubelet.container_env(p["spec"]["containers"][0], p, OBJECTS, {"JOB_COMPLETION_INDEX": "0"})
    assert env == {"JOB_COMPLETION_INDEX": "0", "INDEX": "0", "IP": "127.1.2.3", "NS": "ns", "ADDR": "127.1.2.3:9400",
                   "K1": "from-data", "K2": "from-string-data"}


@pytest.mark.parametrize("ref", [{"name": "creds", "key": "ABSENT"}, {"name": "no-such-secret", "key": "KEY"}])
def test_missing_secret_key_keeps_the_pod_from_starting(ref: Obj) -> None:
    p = pod(env=[{"name": "K", "valueFrom": {"secretKeyRef": ref}}])
    with pytest.raises(kubelet.PodConfigError):
        kubelet.container_env(p["spec"]["containers"][0], p, OBJECTS, {})


def test_volumes_configmap_read_only_files_and_tmpfs(tmp_path: Path) -> None:
    p = pod(volumeMounts=[{"name": "spec", "mountPath": "/etc/saeops", "readOnly": True},
                          {"name": "shm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"}])
    mounts = kubelet.volume_mounts(p, p["spec"]["containers"][0], OBJECTS, tmp_path)
    assert mounts.files[tmp_path / "spec" / "spec.json"] == "{}" and mounts.files[tmp_path / "spec" / "extra"] == "x"
    assert mounts.args == ["-v", f"{tmp_path / 'spec'}:/etc/saeops:ro",
                           "--tmpfs", f"/dev/shm:rw,exec,nosuid,nodev,mode=1777,size={64 * 2**20}",
                           "--tmpfs", "/tmp:rw,exec,nosuid,nodev,mode=1777"]
    p["spec"]["containers"][0]["volumeMounts"].append({"name": "spec", "mountPath": "/x", "subPath": "spec.json"})
    with pytest.raises(kubelet.PodConfigError, match="subPath"):
        kubelet.volume_mounts(p, p["spec"]["containers"][0], OBJECTS, tmp_path)


def test_security_context_and_limits_map_to_docker_flags() -> None:
    p = pod(securityContext={"runAsUser": 1000, "runAsGroup": 1000, "readOnlyRootFilesystem": True,
                             "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            resources={"limits": {"cpu": "1500m", "memory": "4Gi"}, "requests": {"cpu": "1"}})
    p["spec"]["securityContext"] = {"runAsNonRoot": True, "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
    c = p["spec"]["containers"][0]
    assert kubelet.security_args(p, c, "") == ["--user", "1000:1000", "--group-add", "1000", "--read-only",
                                               "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    assert kubelet.resource_args(c) == ["--cpus", "1.500", "--memory", str(4 * 2**30)]
    root = copy.deepcopy(p)
    del root["spec"]["containers"][0]["securityContext"]["runAsUser"]
    with pytest.raises(kubelet.PodConfigError, match="runAsNonRoot"):
        kubelet.security_args(root, root["spec"]["containers"][0], "0")


def test_command_replaces_the_entrypoint_and_expands_variables() -> None:
    c = pod()["spec"]["containers"][0]
    assert kubelet.command_args(c, {"JOB_COMPLETION_INDEX": "1"}, "img:1") == [
        "--entrypoint", "run", "img:1", "--rank=1", "$(KEEP)", "--undefined=$(NOPE)"]
    assert kubelet.command_args({"args": ["a"]}, {}, "img:1") == ["img:1", "a"]


def test_termination_message_file_first_logs_only_on_failure() -> None:
    logs = "\n".join(f"line {i}" for i in range(200))
    assert kubelet.termination_message('{"final": {}}', logs, "FallbackToLogsOnError", True) == '{"final": {}}'
    assert kubelet.termination_message("", logs, "FallbackToLogsOnError", False) == ""
    assert kubelet.termination_message("", logs, "File", True) == ""
    tail = kubelet.termination_message("", logs, "FallbackToLogsOnError", True)
    assert tail.splitlines()[0] == "line 120" and tail.endswith("line 199")
    assert len(kubelet.termination_message("x" * 10000, "", "File", True)) == 4096


def test_pod_failure_policy_and_job_conditions() -> None:
    job = {"metadata": {"name": "j"}, "spec": {"completions": 2, "backoffLimit": 0, "podFailurePolicy": {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}}]}}}
    assert jobctl.failure_action(job, "runtime", 143, {"DisruptionTarget"}) == "Ignore"
    assert jobctl.failure_action(job, "runtime", 2, set()) == "FailJob"
    assert jobctl.failure_action(job, "runtime", 1, set()) == "Count"
    assert jobctl.failure(job, 0, None, None) is None
    assert jobctl.failure(job, 1, None, None) == ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    assert jobctl.index_ranges({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    done = jobctl.job_status(job, active=0, ready=0, succeeded={0, 1}, counted=0, start="2025-01-01T00:00:00Z",
                             failed_because=None)
    assert {c["type"] for c in done["conditions"]} == {"Complete", "SuccessCriteriaMet"} and done["succeeded"] == 2
    again = jobctl.job_status({**job, "status": done}, active=0, ready=0, succeeded={0, 1}, counted=0,
                              start="2025-01-01T00:00:00Z", failed_because=None)
    assert again == done, "a settled status does not change (no needless patches)"
    failed = jobctl.job_status(job, active=0, ready=0, succeeded={0}, counted=1, start=None,
                               failed_because=("BackoffLimitExceeded", "m"))
    assert [c["type"] for c in failed["conditions"]] == ["FailureTarget", "Failed"] and failed["failed"] == 1


def test_table_renders_printer_columns() -> None:
    obj = {"metadata": {"name": "r", "creationTimestamp": "2025-01-01T00:00:00Z"},
           "status": {"phase": "Running", "metrics": {"l0": "31.5"}, "restarts": 0}}
    t = table([obj], [{"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                      {"name": "L0", "type": "string", "jsonPath": ".status.metrics.l0"},
                      {"name": "EV", "type": "string", "jsonPath": ".status.metrics.explained_variance"}])
    assert [c["name"] for c in t["columnDefinitions"]] == ["Name", "Phase", "L0", "EV"]
    assert t["rows"][0]["cells"] == ["r", "Running", "31.5", None]


def _examples() -> list[Obj]:
    docs = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    return [d for d in docs if d.get("kind") in ("SAETrainingRun", "ActivationCache")]


@pytest.mark.parametrize("doc", _examples(), ids=lambda d: d["metadata"]["name"])
def test_every_rendered_pod_can_be_run(doc: Obj, tmp_path: Path) -> None:
    """The operator's pods ask only for what this kubelet stand-in does (and what a pod of the
    image needs: a non-root user and a read-only root)."""
    from saeops.operator.render import render_manifest

    doc = copy.deepcopy(doc)
    doc["spec"]["output"] = {"storageUri": "s3://bucket/prefix", "secretRef": {"name": "creds"}}
    children = render_manifest(doc)
    (job,) = [ch for ch in children if ch["kind"] == "Job"]
    objects = {(ch["kind"], ch["metadata"]["name"]): ch for ch in children if ch["kind"] == "ConfigMap"}
    p = copy.deepcopy(job["spec"]["template"])
    # Every Secret key the pod reads (S3 credentials, a hub token) exists, as a user would create it.
    for ref in (e["valueFrom"]["secretKeyRef"] for c in p["spec"]["containers"] for e in c.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})):
        objects.setdefault(("Secret", ref["name"]), {"kind": "Secret", "stringData": {}})["stringData"][ref["key"]] = "x"
    p["metadata"].update(name="x-0-abcde", namespace="default", uid="u")
    p["metadata"].setdefault("annotations", {})["batch.kubernetes.io/job-completion-index"] = "0"
    p["status"] = {"podIP": "127.1.2.3", "hostIP": "127.0.0.1"}
    (container,) = p["spec"]["containers"]
    env = kubelet.container_env(container, p, objects, {"JOB_COMPLETION_INDEX": "0"})
    mounts = kubelet.volume_mounts(p, container, objects, tmp_path)
    flags = kubelet.security_args(p, container, "1000:1000")
    command = kubelet.command_args(container, env, container["image"])
    assert "--user" in flags and "--cap-drop" in flags and "no-new-privileges" in flags
    assert "$(" not in " ".join(command), command
    assert any(path.name == "spec.json" for path in mounts.files)
    assert env.get("SAEOPS_POD_IP") == "127.1.2.3", "pods must learn their IP (downward API status.podIP)"
    assert "--read-only" in flags, "pods must run with readOnlyRootFilesystem"
