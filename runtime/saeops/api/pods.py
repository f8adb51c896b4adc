"""What a run adds to its pods: volumes, the training container's mounts, environment and
environment from Secrets/ConfigMaps, and the volume that caches downloaded models.

The models restate Kubernetes' own schema (`core/v1` Volume, VolumeMount, EnvVar,
EnvFromSource) for the volume types Pod Security "restricted" allows and a cluster run needs:
persistentVolumeClaim, configMap, secret and emptyDir. Their manifest form *is* the Kubernetes
form, so the operator copies them into the pod template unchanged. Names and paths the operator
uses itself are refused with a message naming the field.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from saeops.api.base import SpecModel
from saeops.api.k8s import DNSLabel, DNSSubdomain, Quantity

CACHE_DIR = "/var/cache/saeops"
"""Where the pods cache downloaded models (`SAEOPS_CACHE_DIR`)."""
CACHE_VOLUME = "model-cache"
"""Name of the default (emptyDir) cache volume."""
RESERVED_VOLUMES = frozenset({"spec", "dshm", "tmp", CACHE_VOLUME})
RESERVED_PATHS = ("/etc/saeops", "/dev/shm", "/tmp", CACHE_DIR)
RESERVED_ENV = frozenset({
    "JOB_COMPLETION_INDEX", "HOME", "XDG_CACHE_HOME", "HF_HOME", "TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR",
    "TORCHINDUCTOR_CACHE_DIR", "MPLCONFIGDIR", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "AWS_REGION", "AWS_DEFAULT_REGION", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
})
"""Set by the operator (the pod's scratch space, torchrun, `output`): not overridable."""

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError(f"{value[:64]!r}: an environment variable name is letters, digits, '_', '-' and '.', "
                         "not starting with a digit")
    if value in RESERVED_ENV or value.startswith("SAEOPS_"):
        raise ValueError(f"{value!r} is set by the operator; choose another name")
    return value


def _key(value: str) -> str:
    if not _KEY.match(value):
        raise ValueError(f"{value[:64]!r}: a Secret or ConfigMap key is letters, digits, '-', '_' and '.'")
    return value


def _relative(value: str) -> str:
    parts = value.split("/")
    if value.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{value[:64]!r}: a relative path without '..', '.' or empty segments")
    return value


def _mount_path(value: str) -> str:
    if not value.startswith("/") or any(p in (".", "..") for p in value.split("/")) or ":" in value:
        raise ValueError(f"{value[:64]!r}: a mount path is absolute, without '..' or ':'")
    path = value.rstrip("/") or "/"
    for reserved in RESERVED_PATHS:
        if path == "/" or path == reserved or path.startswith(reserved + "/"):
            raise ValueError(f"{value!r} is used by saeops itself ({reserved}); mount elsewhere, e.g. /data")
    return path


EnvName = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(_env_name)]
Key = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(_key)]
RelativePath = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_relative)]
MountPath = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_mount_path)]
FileMode = Annotated[int, Field(ge=0, le=0o777)]


def _one_of(spec: SpecModel, fields: tuple[str, ...], what: str) -> None:
    set_ = [f for f in fields if getattr(spec, f) is not None]
    if len(set_) != 1:
        camel = [spec.model_fields[f].alias or f for f in fields]
        raise ValueError(f"{what}: set exactly one of {', '.join(camel)}")


class KeyToPath(SpecModel):
    """One key of a Secret or ConfigMap projected to a file."""

    key: Key
    """The key."""
    path: RelativePath
    """File path relative to the mount point."""
    mode: FileMode | None = None
    """File mode bits (0-0777)."""


class PVCSource(SpecModel):
    """A PersistentVolumeClaim in the run's namespace."""

    claim_name: DNSSubdomain
    """Name of the claim."""
    read_only: bool | None = None
    """Mount read-only."""


class ConfigMapSource(SpecModel):
    """A ConfigMap's keys as files."""

    name: DNSSubdomain
    """Name of the ConfigMap."""
    items: list[KeyToPath] = Field(default_factory=list, max_length=64)
    """Keys to project (default: all)."""
    default_mode: FileMode | None = None
    """Mode of the files."""
    optional: bool | None = None
    """Start the pod even if the ConfigMap is missing."""


class SecretSource(SpecModel):
    """A Secret's keys as files."""

    secret_name: DNSSubdomain
    """Name of the Secret."""
    items: list[KeyToPath] = Field(default_factory=list, max_length=64)
    """Keys to project (default: all)."""
    default_mode: FileMode | None = None
    """Mode of the files."""
    optional: bool | None = None
    """Start the pod even if the Secret is missing."""


class EmptyDirSource(SpecModel):
    """Scratch space that lives as long as the pod."""

    medium: Literal["", "Memory"] | None = None
    """`Memory` for a tmpfs."""
    size_limit: Quantity | None = None
    """Size limit, e.g. 50Gi."""


class Volume(SpecModel):
    """A pod volume (Kubernetes' Volume, restricted to the types below)."""

    name: DNSLabel
    """Volume name, referenced by volumeMounts."""
    persistent_volume_claim: PVCSource | None = None
    """A PVC (e.g. weights on a shared volume, or a download cache shared by the run's pods)."""
    config_map: ConfigMapSource | None = None
    """A ConfigMap."""
    secret: SecretSource | None = None
    """A Secret."""
    empty_dir: EmptyDirSource | None = None
    """An emptyDir."""

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        _one_of(self, ("persistent_volume_claim", "config_map", "secret", "empty_dir"), f"volume {self.name}")
        if self.name in RESERVED_VOLUMES:
            raise ValueError(f"volume name {self.name!r} is used by saeops itself; choose another")
        return self


class VolumeMount(SpecModel):
    """A volume mounted in the training container."""

    name: DNSLabel
    """Name of a volume in `volumes`."""
    mount_path: MountPath
    """Absolute path in the container."""
    sub_path: RelativePath | None = None
    """Mount this path inside the volume instead of its root."""
    read_only: bool | None = None
    """Mount read-only."""


class KeySelector(SpecModel):
    """One key of a Secret or ConfigMap."""

    name: DNSSubdomain
    """Name of the Secret or ConfigMap."""
    key: Key
    """The key."""
    optional: bool | None = None
    """Start the pod even if it is missing."""


class EnvVarSource(SpecModel):
    """Where an environment variable's value comes from."""

    secret_key_ref: KeySelector | None = None
    """A key of a Secret."""
    config_map_key_ref: KeySelector | None = None
    """A key of a ConfigMap."""

    @model_validator(mode="after")
    def _one(self) -> EnvVarSource:
        _one_of(self, ("secret_key_ref", "config_map_key_ref"), "valueFrom")
        return self


class EnvVar(SpecModel):
    """An environment variable of the training container (e.g. HF_ENDPOINT for a mirror)."""

    name: EnvName
    """Variable name."""
    value: str | None = Field(None, max_length=32768)
    """A literal value (never a credential: use valueFrom)."""
    value_from: EnvVarSource | None = None
    """A Secret or ConfigMap key."""

    @model_validator(mode="after")
    def _one(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"env {self.name}: set value or valueFrom, not both")
        return self


class LocalObjectRef(SpecModel):
    """A Secret or ConfigMap in the run's namespace."""

    name: DNSSubdomain
    """Its name."""
    optional: bool | None = None
    """Start the pod even if it is missing."""


class EnvFromSource(SpecModel):
    """All keys of a Secret or ConfigMap as environment variables."""

    prefix: str | None = Field(None, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    """Prepended to every key."""
    config_map_ref: LocalObjectRef | None = None
    """A ConfigMap."""
    secret_ref: LocalObjectRef | None = None
    """A Secret."""

    @model_validator(mode="after")
    def _one(self) -> EnvFromSource:
        _one_of(self, ("config_map_ref", "secret_ref"), "envFrom")
        return self


class PodFields(SpecModel):
    """Volumes, mounts and environment of the run's pods (mixed into ResourcesSpec)."""

    volumes: list[Volume] = Field(default_factory=list, max_length=32)
    """Pod volumes: persistentVolumeClaim, configMap, secret or emptyDir (Kubernetes' schema)."""
    volume_mounts: list[VolumeMount] = Field(default_factory=list, max_length=32)
    """Mounts of those volumes in the training container (a model on a PVC: mount it and set
    model.path to the mount path)."""
    env: list[EnvVar] = Field(default_factory=list, max_length=64)
    """Environment of the training container (HF_ENDPOINT, HF_HUB_OFFLINE, NCCL settings, ...)."""
    env_from: list[EnvFromSource] = Field(default_factory=list, max_length=16)
    """Secrets or ConfigMaps whose keys become environment variables."""
    cache_volume: DNSLabel | None = None
    """A volume of `volumes` mounted at /var/cache/saeops, where hub and S3 models are
    downloaded (a PVC shared by the run's pods downloads once); default: an emptyDir."""

    @model_validator(mode="after")
    def _references(self) -> PodFields:
        names = [v.name for v in self.volumes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"volumes: name {dup[0]!r} appears more than once")
        for m in self.volume_mounts:
            if m.name not in names:
                raise ValueError(f"volumeMounts: {m.name!r} is not in volumes ({', '.join(names) or 'none'})")
        paths = [m.mount_path for m in self.volume_mounts]
        dup = sorted({p for p in paths if paths.count(p) > 1})
        if dup:
            raise ValueError(f"volumeMounts: mountPath {dup[0]!r} appears more than once")
        if self.cache_volume is not None and self.cache_volume not in names:
            raise ValueError(f"cacheVolume: {self.cache_volume!r} is not in volumes ({', '.join(names) or 'none'})")
        if self.cache_volume is not None and self.cache_volume in [m.name for m in self.volume_mounts]:
            raise ValueError(f"cacheVolume: {self.cache_volume!r} is mounted at {CACHE_DIR} already; "
                             "leave it out of volumeMounts")
        env = [e.name for e in self.env]
        dup = sorted({n for n in env if env.count(n) > 1})
        if dup:
            raise ValueError(f"env: {dup[0]!r} appears more than once")
        return self


__all__ = ["CACHE_DIR", "CACHE_VOLUME", "EnvFromSource", "EnvVar", "PodFields", "Volume", "VolumeMount"]
