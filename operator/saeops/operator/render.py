"""Pure renderers: a run or cache -> its ConfigMap, headless Service and Indexed Job.

Everything here is a function of the resource (and, for a run with `cacheRef`, the cache it
reads), so `saeops render FILE` shows exactly what the operator will create.
"""

from __future__ import annotations

import json
from typing import Any

from saeops.api import (
    ActivationCache,
    AnyResource,
    OutputSpec,
    SAESweep,
    SAETrainingRun,
    names,
    parse_resource,
)
from saeops.operator.sweep import plan_trials

SPEC_DIR = "/etc/saeops"
SPEC_FILE = "spec.json"
RENDEZVOUS_PORT = 29500
CONTAINER = "runtime"
RUN_AS = 1000

Obj = dict[str, Any]



def child_labels(kind: str, name: str) -> dict[str, str]:
    """Labels on every child (and the pods): recommended app labels plus the owner's identity."""
    return {
        "app.kubernetes.io/name": "saeops",
        "app.kubernetes.io/instance": names.dns_label(name),
        "app.kubernetes.io/component": names.kind_label(kind),
        "app.kubernetes.io/managed-by": names.MANAGED_BY,
        names.LABEL_RUN: name,
        names.LABEL_KIND: names.kind_label(kind),
    }


def selector_labels(kind: str, name: str) -> dict[str, str]:
    """The subset of labels that identifies one run's pods."""
    return {names.LABEL_RUN: name, names.LABEL_KIND: names.kind_label(kind)}


def _meta(resource: Obj, name: str) -> Obj:
    rmeta = resource["metadata"]
    meta: Obj = {
        "name": name,
        "labels": child_labels(resource["kind"], rmeta["name"]),
        "ownerReferences": [names.owner_reference(resource)],
    }
    if rmeta.get("namespace"):
        meta["namespace"] = rmeta["namespace"]
    return meta


def cache_uri(cache: Obj) -> str | None:
    """Where an ActivationCache's data lives (its recorded artifact, else its output URI)."""
    artifacts = (cache.get("status") or {}).get("artifacts") or {}
    return artifacts.get("cache") or ((cache.get("spec") or {}).get("output") or {}).get("storageUri")


def runtime_document(resource: Obj, cache: Obj | None = None) -> Obj:
    """The manifest the runtime reads from spec.json: identity + spec, no status.

    A run's `activations.cacheRef` (a cluster name the runtime cannot resolve) becomes the
    cache's storage URI. Secrets are only ever named (`output.secretRef.name`), never valued.
    """
    spec = json.loads(json.dumps(resource["spec"]))
    acts = spec.get("activations") or {}
    if resource["kind"] == SAETrainingRun.KIND and acts.get("cacheRef") and cache is not None:
        uri = cache_uri(cache)
        if uri:
            acts = {k: v for k, v in acts.items() if k != "cacheRef"}
            acts["cacheUri"] = uri
            spec["activations"] = acts
    meta = resource["metadata"]
    doc_meta = {"name": meta["name"]}
    if meta.get("namespace"):
        doc_meta["namespace"] = meta["namespace"]
    return {"apiVersion": names.API, "kind": resource["kind"], "metadata": doc_meta, "spec": spec}


def render_configmap(resource: Obj, cache: Obj | None = None) -> Obj:
    """ConfigMap with spec.json."""
    doc = runtime_document(resource, cache)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(resource, names.configmap_name(resource["metadata"]["name"])),
        "data": {SPEC_FILE: json.dumps(doc, indent=2, sort_keys=True)},
    }


def render_service(resource: Obj, metrics_port: int | None) -> Obj:
    """Headless Service: stable DNS `<job>-<index>.<service>` for the rendezvous."""
    name = resource["metadata"]["name"]
    ports = [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT, "protocol": "TCP"}]
    if metrics_port:
        ports.append({"name": "metrics", "port": metrics_port, "targetPort": metrics_port, "protocol": "TCP"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(resource, names.service_name(name)),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(resource["kind"], name),
            # Rank 0 must resolve before it is Ready: it becomes ready only after rendezvous.
            "publishNotReadyAddresses": True,
            "ports": ports,
        },
    }


def _s3_env(output: OutputSpec) -> list[Obj]:
    env: list[Obj] = []
    if output.secret_ref is not None:
        # Only a reference travels: the kubelet reads the Secret, the operator never does.
        for key, optional in (
            ("AWS_ACCESS_KEY_ID", False),
            ("AWS_SECRET_ACCESS_KEY", False),
            ("AWS_SESSION_TOKEN", True),
        ):
            env.append(
                {
                    "name": key,
                    "valueFrom": {
                        "secretKeyRef": {"name": output.secret_ref.name, "key": key, "optional": optional}
                    },
                }
            )
    if output.endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": output.endpoint_url})
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": output.endpoint_url})
    if output.region:
        env.append({"name": "AWS_REGION", "value": output.region})
        env.append({"name": "AWS_DEFAULT_REGION", "value": output.region})
    if output.force_path_style:
        env.append({"name": "SAEOPS_S3_FORCE_PATH_STYLE", "value": "true"})
    return env


def _restricted_container_context() -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def torchrun_command(job: str, service: str, num_nodes: int, nproc: int) -> list[str]:
    """torchrun with the node rank from the completion index and rank 0 as the rendezvous."""
    return [
        "torchrun",
        f"--nnodes={num_nodes}",
        f"--nproc-per-node={nproc}",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        f"--master-addr={job}-0.{service}",
        f"--master-port={RENDEZVOUS_PORT}",
        "-m",
        "saeops.runtime.entrypoint",
        "--spec",
        f"{SPEC_DIR}/{SPEC_FILE}",
    ]


def render_job(resource: Obj, model: SAETrainingRun | ActivationCache) -> Obj:
    """The Indexed Job: one pod per node, torchrun inside, Pod Security "restricted"."""
    name = resource["metadata"]["name"]
    kind = resource["kind"]
    spec = model.spec
    res = spec.resources
    job = names.job_name(name)
    svc = names.service_name(name)
    metrics_port = metrics_port_of(model)
    labels = child_labels(kind, name)
    if spec.queue_name:
        labels[names.KUEUE_QUEUE_LABEL] = spec.queue_name
    env: list[Obj] = [
        # Declared (not only injected by the Job controller) so `$(JOB_COMPLETION_INDEX)`
        # expands in the command on every Kubernetes version.
        {
            "name": "JOB_COMPLETION_INDEX",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
            },
        },
        {"name": "SAEOPS_RUN_NAME", "value": name},
        {"name": "SAEOPS_KIND", "value": kind},
        {"name": "SAEOPS_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "SAEOPS_SPEC", "value": f"{SPEC_DIR}/{SPEC_FILE}"},
        {"name": "SAEOPS_METRICS_PORT", "value": str(metrics_port)},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
        *_s3_env(spec.output),
    ]
    container: Obj = {
        "name": CONTAINER,
        "image": res.image,
        "imagePullPolicy": res.image_pull_policy,
        "command": torchrun_command(job, svc, res.num_nodes, res.num_proc_per_node),
        "env": env,
        "ports": [
            {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"},
            {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"},
        ],
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": _restricted_container_context(),
    }
    rpn = res.resources_per_node
    if rpn.requests or rpn.limits:
        container["resources"] = {k: v for k, v in (("requests", rpn.requests), ("limits", rpn.limits)) if v}
    pod_spec: Obj = {
        "restartPolicy": "Never",  # required by podFailurePolicy; the Job replaces pods
        "subdomain": svc,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "spec", "configMap": {"name": names.configmap_name(name)}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shm_size}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod_spec["tolerations"] = [t.to_manifest() for t in res.tolerations]
    if res.priority_class_name:
        pod_spec["priorityClassName"] = res.priority_class_name
    if res.service_account_name:
        pod_spec["serviceAccountName"] = res.service_account_name
    job_spec: Obj = {
        "completionMode": "Indexed",
        "completions": res.num_nodes,
        "parallelism": res.num_nodes,
        # Any real failure fails the Job at once; the operator counts it against
        # failurePolicy.maxRestarts and recreates the Job (resuming from the checkpoint).
        "backoffLimit": 0,
        "podFailurePolicy": {
            "rules": [
                # Preemption, eviction and node drains are not the run's fault: the Job
                # controller replaces the pod without counting it.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {
            "metadata": {
                "labels": labels,
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(metrics_port),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": pod_spec,
        },
    }
    if spec.queue_name:
        # Kueue admits a queued Job by unsuspending it.
        job_spec["suspend"] = True
    meta = _meta(resource, job)
    meta["labels"] = labels
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def metrics_port_of(model: SAETrainingRun | ActivationCache) -> int:
    """Port of the rank-0 /metrics endpoint in the cluster."""
    metrics = getattr(model.spec, "metrics", None)
    if metrics is not None and metrics.enabled and metrics.port:
        return metrics.port
    return 9400


def render_children(resource: Obj, model: SAETrainingRun | ActivationCache, cache: Obj | None = None) -> list[Obj]:
    """ConfigMap, Service and Job of a run or cache, in creation order."""
    return [
        render_configmap(resource, cache),
        render_service(resource, metrics_port_of(model)),
        render_job(resource, model),
    ]


def _as_dict(resource: AnyResource | Obj) -> Obj:
    if isinstance(resource, dict):
        return resource
    doc = resource.to_manifest()
    doc.pop("status", None)
    return doc


def render_manifest(resource: AnyResource | Obj) -> list[Obj]:
    """What the operator would create for a manifest (`saeops render FILE`).

    Runs and caches give ConfigMap, Service and Job; a sweep gives its first trials
    (as many as parallelTrials allows) as SAETrainingRuns.
    """
    doc = _as_dict(resource)
    model = resource if not isinstance(resource, dict) else parse_resource(doc)
    doc.setdefault("metadata", {}).setdefault("namespace", "default")
    doc["metadata"].setdefault("uid", "")
    if isinstance(model, SAESweep):
        return plan_trials(doc, model)
    return render_children(doc, model)
