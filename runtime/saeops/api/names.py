"""Deterministic, valid Kubernetes names and the labels saeops puts on everything it creates."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from saeops.api.base import API_GROUP, API_VERSION

GROUP = API_GROUP
VERSION = API_VERSION.split("/", 1)[1]
API = API_VERSION

LABEL_RUN = f"{GROUP}/run"
LABEL_KIND = f"{GROUP}/kind"
LABEL_SWEEP = f"{GROUP}/sweep"
LABEL_TRIAL_INDEX = f"{GROUP}/trial-index"
ANNOTATION_PARAMETERS = f"{GROUP}/parameters"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MANAGED_BY = "saeops-operator"

# An Indexed Job's pods get the hostname `<job>-<index>`, and a hostname is a DNS label
# (<= 63 chars), so job names stay short enough for a 4-digit index and a separator.
MAX_JOB_NAME = 52
_INVALID = re.compile(r"[^a-z0-9-]+")


def _digest(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def dns_label(name: str, max_len: int = 63, suffix: str = "") -> str:
    """`name` + `suffix` as an RFC 1123 label of at most `max_len` characters.

    Short valid names pass through unchanged (users recognise their children); long or
    irregular names are cut and get a hash of the full name, so distinct inputs stay distinct
    and the same input always maps to the same output.
    """
    clean = _INVALID.sub("-", name.lower()).strip("-") or "x"
    full = clean + suffix
    if full == name + suffix and len(full) <= max_len:
        return full
    tag = "-" + _digest(name + suffix)
    keep = max_len - len(tag) - len(suffix)
    return (clean[:keep].rstrip("-") or "x") + tag + suffix


def dns1035_label(name: str, max_len: int = 63) -> str:
    """A DNS-1035 label (must start with a letter): what Service names require."""
    label = dns_label(name, max_len)
    if label[0].isalpha():
        return label
    return dns_label("s-" + name, max_len)


def job_name(resource_name: str) -> str:
    """Name of the Indexed Job of a run or cache."""
    return dns_label(resource_name, MAX_JOB_NAME)


def service_name(resource_name: str) -> str:
    """Name of the headless Service giving the job's pods stable DNS names."""
    return dns1035_label(resource_name, MAX_JOB_NAME)


def configmap_name(resource_name: str) -> str:
    """Name of the ConfigMap holding spec.json."""
    return dns_label(resource_name, 63, suffix="-spec")


def trial_name(sweep_name: str, index: int) -> str:
    """Deterministic trial (SAETrainingRun) name: `<sweep>-<index>`."""
    return dns_label(sweep_name, 63, suffix=f"-{index}")


def kind_label(kind: str) -> str:
    """Value of the `saeops.io/kind` label (lower-case kind)."""
    return kind.lower()


DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
"""RFC 1123 label (what every child name must match)."""


def owner_reference(resource: dict[str, Any]) -> dict[str, Any]:
    """A controller owner reference to `resource` (a manifest dict with metadata.uid)."""
    meta = resource.get("metadata", {})
    return {
        "apiVersion": resource.get("apiVersion", API),
        "kind": resource["kind"],
        "name": meta["name"],
        "uid": meta.get("uid") or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }
