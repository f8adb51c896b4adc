"""Pod-level building blocks shared by every Job the operator renders (a run's, a cache's, a
sweep group's): labels, the runtime's document, environment, the restricted security context and
the Indexed Job itself. Pure functions of their arguments."""

from __future__ import annotations

import copy
import json
from typing import Any

from saeops.api import ActivationCache, OutputSpec, SAETrainingRun, SpecError, layout, names, pods
from saeops.operator.policy import ClusterPolicy

SPEC_DIR = "/etc/saeops"
SPEC_FILE = "spec.json"
RENDEZVOUS_PORT = 29500
CONTAINER = "runtime"
RUN_AS = 1000
SCRATCH = "/tmp"
# The root file system is read-only: everything the runtime, torch, Triton and the Hugging Face
# libraries write goes to the /tmp emptyDir (the image's HOME and HF_HOME are not writable).
SCRATCH_ENV = {
    "HOME": SCRATCH,
    "XDG_CACHE_HOME": f"{SCRATCH}/.cache",
    "HF_HOME": f"{SCRATCH}/.cache/huggingface",
    "TORCH_EXTENSIONS_DIR": f"{SCRATCH}/.cache/torch_extensions",
    "TRITON_CACHE_DIR": f"{SCRATCH}/.cache/triton",
    "TORCHINDUCTOR_CACHE_DIR": f"{SCRATCH}/.cache/torchinductor",
    "MPLCONFIGDIR": f"{SCRATCH}/.cache/matplotlib",
    "PYTHONDONTWRITEBYTECODE": "1",
}

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


def meta(owner: Obj, name: str, labels: dict[str, str]) -> Obj:
    """Metadata of a child of `owner`: its labels (a copy), a controller owner reference, the
    owner's namespace."""
    rmeta = owner["metadata"]
    out: Obj = {"name": name, "labels": dict(labels), "ownerReferences": [names.owner_reference(owner)]}
    if rmeta.get("namespace"):
        out["namespace"] = rmeta["namespace"]
    return out


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
    rmeta = resource["metadata"]
    # Name, namespace and uid identify the resource to the runtime (it fingerprints runs with them).
    doc_meta = {k: rmeta[k] for k in ("name", "namespace", "uid") if rmeta.get(k)}
    return {"apiVersion": names.API, "kind": resource["kind"], "metadata": doc_meta, "spec": spec}


def service(metadata: Obj, selector: dict[str, str], metrics_port: int | None) -> Obj:
    """Headless Service: stable DNS `<job>-<index>.<service>` for the rendezvous."""
    ports = [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT, "protocol": "TCP"}]
    if metrics_port:
        ports.append({"name": "metrics", "port": metrics_port, "targetPort": metrics_port, "protocol": "TCP"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "clusterIP": "None",
            "selector": dict(selector),
            # Rank 0 must resolve before it is Ready: it becomes ready only after rendezvous.
            "publishNotReadyAddresses": True,
            "ports": ports,
        },
    }


def network_policy(metadata: Obj, selector: dict[str, str], metrics_port: int, policy: ClusterPolicy) -> Obj:
    """Ingress to one Job's pods: anything from pods of the same Job (torchrun's rendezvous store
    and the collectives' data connections, whose ports are chosen at run time), and the metrics
    port from the policy's peers (the operator, Prometheus). Egress is left open: pods reach
    object storage and model hubs the cluster admin knows better than we do."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": dict(selector)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": dict(selector)}}]},
                {"from": [copy.deepcopy(peer) for peer in policy.metrics_from],
                 "ports": [{"port": metrics_port, "protocol": "TCP"}]},
            ],
        },
    }


def s3_env(output: OutputSpec) -> list[Obj]:
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


def source_env(spec: Any) -> list[Obj]:
    """Where models are cached, the hub token (by reference), then the user's own variables."""
    env: list[Obj] = [{"name": "SAEOPS_CACHE_DIR", "value": pods.CACHE_DIR}]
    token = spec.model.secret_ref
    user = [e.to_manifest() for e in spec.resources.env]
    if token is not None:
        if any(e["name"] == "HF_TOKEN" for e in user):
            raise SpecError("spec.resources.env: HF_TOKEN is set from spec.model.secretRef already; remove one")
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}})
    return env + user


def restricted_container_context() -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
        "readOnlyRootFilesystem": True,
    }


def torchrun_command(job: str, service: str, num_nodes: int, nproc: int, args: list[str] | None = None) -> list[str]:
    """torchrun with the node rank from the completion index and rank 0 as the rendezvous;
    `args` tell the entrypoint what to run (default: `--spec SPEC_DIR/spec.json`).

    Through saeops' launcher, which takes torchrun's arguments: on node 0 it serves the
    rendezvous store on the pod IP only (plain torchrun listens on every interface)."""
    return [
        "python",
        "-m",
        "saeops.runtime.distributed.launcher",
        f"--nnodes={num_nodes}",
        f"--nproc-per-node={nproc}",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        f"--master-addr={job}-0.{service}",
        f"--master-port={RENDEZVOUS_PORT}",
        "-m",
        "saeops.runtime.entrypoint",
        *(args if args is not None else ["--spec", f"{SPEC_DIR}/{SPEC_FILE}"]),
    ]


def indexed_job(owner: Obj, model: SAETrainingRun | ActivationCache, *, job: str, svc: str, configmap: str,
        labels: dict[str, str], identity: dict[str, str], spec_path: str | None = None,
        args: list[str] | None = None, annotations: dict[str, str] | None = None, backoff_limit: int = 0) -> Obj:
    """The Indexed Job: one pod per node, torchrun inside, Pod Security "restricted".

    `model` gives the pods (image, resources, storage, sources); `identity` the SAEOPS_* variables
    saying what they run, `spec_path` the manifest (SAEOPS_SPEC), `args` the entrypoint's
    arguments; `annotations` go on the Job and its pods."""
    spec = model.spec
    res = spec.resources
    metrics_port = metrics_port_of(model)
    labels = dict(labels)
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
        *({"name": k, "value": v} for k, v in identity.items()),
        {"name": "SAEOPS_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        # The runtime binds its metrics and rendezvous sockets to the pod's own address.
        {"name": "SAEOPS_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        *([{"name": "SAEOPS_SPEC", "value": spec_path}] if spec_path else []),
        {"name": "SAEOPS_METRICS_PORT", "value": str(metrics_port)},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *({"name": k, "value": v} for k, v in SCRATCH_ENV.items()),
        *s3_env(spec.output),
        *source_env(spec),
    ]
    container: Obj = {
        "name": CONTAINER,
        "image": res.image,
        "imagePullPolicy": res.image_pull_policy,
        "command": torchrun_command(job, svc, res.num_nodes, res.num_proc_per_node, args),
        "env": env,
        "ports": [
            {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"},
            {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"},
        ],
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": SCRATCH},
            {"name": res.cache_volume or pods.CACHE_VOLUME, "mountPath": pods.CACHE_DIR},
            *(m.to_manifest() for m in res.volume_mounts),
        ],
        # Rank 0 writes the outcome (final metrics, or the one-line error) here; a container
        # that dies before writing it leaves the tail of its log instead.
        "terminationMessagePath": layout.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_container_context(),
    }
    if res.env_from:
        container["envFrom"] = [e.to_manifest() for e in res.env_from]
    rpn = res.resources_per_node
    if rpn.requests or rpn.limits:
        container["resources"] = {k: v for k, v in (("requests", rpn.requests), ("limits", rpn.limits)) if v}
    pod_spec: Obj = {
        "restartPolicy": "Never",  # required by podFailurePolicy; the Job replaces pods
        "subdomain": svc,
        # Training pods never call the Kubernetes API: no token to steal.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "spec", "configMap": {"name": configmap}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shm_size}},
            {"name": "tmp", "emptyDir": {}},
            *([] if res.cache_volume else [{"name": pods.CACHE_VOLUME, "emptyDir": {}}]),
            *(v.to_manifest() for v in res.volumes),
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
        "backoffLimit": backoff_limit,
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
                    **(annotations or {}),
                },
            },
            "spec": pod_spec,
        },
    }
    if spec.queue_name:
        # Kueue admits a queued Job by unsuspending it.
        job_spec["suspend"] = True
    metadata = meta(owner, job, labels)  # labels copied: `saeops render` prints no YAML anchors
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def metrics_port_of(model: SAETrainingRun | ActivationCache) -> int:
    """Port of the rank-0 /metrics endpoint in the cluster."""
    metrics = getattr(model.spec, "metrics", None)
    if metrics is not None and metrics.enabled and metrics.port:
        return metrics.port
    return 9400
