"""Pods for models and data from elsewhere: the hub token by reference, the model cache volume,
the user's volumes, mounts, env and envFrom; still valid Kubernetes and Pod Security "restricted"."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from saeops.api import SpecError, parse_resource, pods
from saeops.cli import main
from saeops.operator.render import render_manifest

from .helpers import ROOT, quickstart
from .test_render import K8S, _restricted_violations

EXAMPLE = ROOT / "examples" / "llama-hub-pvc.yaml"


def _pod(objs: list[dict]) -> dict:
    return next(o for o in objs if o["kind"] == "Job")["spec"]["template"]["spec"]


def test_hub_model_pvc_cache_and_s3_dataset_render_valid_restricted_pods() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    objs = render_manifest(doc)
    for obj in objs:
        if not obj["apiVersion"].startswith("saeops.io"):
            kubernetes_validate.validate(obj, K8S, strict=True)
    pod = _pod(objs)
    assert _restricted_violations(pod) == []
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}}
    assert env["SAEOPS_CACHE_DIR"]["value"] == pods.CACHE_DIR
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert volumes[mounts[pods.CACHE_DIR]] == {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-model-cache"}}
    assert pods.CACHE_VOLUME not in volumes, "a named cache volume replaces the default emptyDir"
    configmap = next(o for o in objs if o["kind"] == "ConfigMap")
    assert "hf_" not in str(configmap), "the token itself never travels"


def test_default_cache_is_an_emptydir_and_user_pod_fields_are_copied() -> None:
    doc = quickstart()
    doc["spec"]["output"] = {"storageUri": "s3://bkt/runs/q"}
    doc["spec"]["resources"] = {
        "volumes": [{"name": "weights", "persistentVolumeClaim": {"claimName": "llama", "readOnly": True}},
                    {"name": "certs", "secret": {"secretName": "mirror-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}}],
        "volumeMounts": [{"name": "weights", "mountPath": "/models", "readOnly": True},
                         {"name": "certs", "mountPath": "/etc/mirror", "readOnly": True}],
        "env": [{"name": "HF_ENDPOINT", "value": "https://hf-mirror.internal"},
                {"name": "REQUESTS_CA_BUNDLE", "value": "/etc/mirror/ca.crt"},
                {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}}}],
        "envFrom": [{"configMapRef": {"name": "nccl-settings"}, "prefix": "NCCL_"}],
    }
    objs = render_manifest(doc)
    for obj in objs:
        if not obj["apiVersion"].startswith("saeops.io"):
            kubernetes_validate.validate(obj, K8S, strict=True)
    pod = _pod(objs)
    assert _restricted_violations(pod) == []
    (c,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[pods.CACHE_VOLUME] == {"name": pods.CACHE_VOLUME, "emptyDir": {}}
    for v in doc["spec"]["resources"]["volumes"]:
        assert volumes[v["name"]] == v
    for m in doc["spec"]["resources"]["volumeMounts"]:
        assert m in c["volumeMounts"]
    names = [e["name"] for e in c["env"]]
    assert names[-3:] == ["HF_ENDPOINT", "REQUESTS_CA_BUNDLE", "WANDB_API_KEY"] and "HF_TOKEN" not in names
    assert c["envFrom"] == doc["spec"]["resources"]["envFrom"]


@pytest.mark.parametrize("resources, needle", [
    ({"volumes": [{"name": "tmp", "emptyDir": {}}]}, "used by saeops itself"),
    ({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}, "hostPath"),
    ({"volumes": [{"name": "a", "emptyDir": {}, "secret": {"secretName": "s"}}]}, "exactly one of"),
    ({"volumeMounts": [{"name": "a", "mountPath": "/data"}]}, "'a' is not in volumes"),
    ({"volumes": [{"name": "a", "emptyDir": {}}], "volumeMounts": [{"name": "a", "mountPath": "/etc/saeops/x"}]},
     "used by saeops itself"),
    ({"volumes": [{"name": "a", "emptyDir": {}}], "volumeMounts": [{"name": "a", "mountPath": "data"}]}, "absolute"),
    ({"env": [{"name": "HOME", "value": "/root"}]}, "set by the operator"),
    ({"env": [{"name": "SAEOPS_CACHE_DIR", "value": "/x"}]}, "set by the operator"),
    ({"env": [{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}, "not both"),
    ({"envFrom": [{"secretRef": {"name": "s"}, "configMapRef": {"name": "c"}}]}, "exactly one of"),
    ({"cacheVolume": "nope"}, "cacheVolume: 'nope' is not in volumes"),
])
def test_bad_pod_fields_are_one_line_errors(resources: dict, needle: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    doc = quickstart()
    doc["spec"]["output"] = {"storageUri": "s3://bkt/runs/q"}
    doc["spec"]["resources"] = resources
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["render", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err, err
    assert "spec.resources" in err


def test_hf_token_twice_is_refused() -> None:
    doc = quickstart()
    doc["spec"]["output"] = {"storageUri": "s3://bkt/runs/q"}
    doc["spec"]["model"]["secretRef"] = {"name": "hf-token"}
    doc["spec"]["resources"] = {"env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "x", "key": "t"}}}]}
    with pytest.raises(SpecError, match=r"HF_TOKEN is set from spec\.model\.secretRef already"):
        render_manifest(copy.deepcopy(doc))
    parse_resource(doc)  # the manifest itself is valid; only the pod would carry the variable twice
