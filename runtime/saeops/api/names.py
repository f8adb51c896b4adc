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
LABEL_GROUP = f"{GROUP}/group"
ANNOTATION_MEMBERS = f"{GROUP}/members"
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


def dns1035_label(name: str, max_len: int = 63, suffix: str = "") -> str:
    """A DNS-1035 label (must start with a letter): what Service names require."""
    label = dns_label(name, max_len, suffix)
    if label[0].isalpha():
        return label
    # Always hashed once prefixed: `1a` must not take the name of a resource called `s-1a`.
    tag = "-" + _digest(name + suffix)
    clean = "s-" + (_INVALID.sub("-", name.lower()).strip("-") or "x")
    return clean[: max_len - len(tag) - len(suffix)].rstrip("-") + tag + suffix


# Children carry their owner's kind, so an ActivationCache and an SAETrainingRun of one name
# never share a Job, ConfigMap or Service.
CHILD_SUFFIX = {"SAETrainingRun": "-run", "ActivationCache": "-cache"}


def _suffix(kind: str) -> str:
    try:
        return CHILD_SUFFIX[kind]
    except KeyError:
        raise ValueError(f"{kind!r} has no Job: expected one of {', '.join(CHILD_SUFFIX)}") from None


def job_name(kind: str, resource_name: str) -> str:
    """Name of the Indexed Job of a run (`NAME-run`) or cache (`NAME-cache`)."""
    return dns_label(resource_name, MAX_JOB_NAME, _suffix(kind))


def service_name(kind: str, resource_name: str) -> str:
    """Name of the headless Service giving the job's pods stable DNS names (`<job>-<i>.<service>`)."""
    return dns1035_label(resource_name, MAX_JOB_NAME, _suffix(kind))


def configmap_name(kind: str, resource_name: str) -> str:
    """Name of the ConfigMap holding spec.json (`NAME-run-spec`, `NAME-cache-spec`)."""
    return dns_label(resource_name, 63, _suffix(kind) + "-spec")


def network_policy_name(kind: str, resource_name: str) -> str:
    """Name of the NetworkPolicy admitting traffic to the run's pods (the Job's name)."""
    return job_name(kind, resource_name)


def trial_name(sweep_name: str, index: int) -> str:
    """Deterministic trial (SAETrainingRun) name: `<sweep>-<index>`."""
    return dns_label(sweep_name, 63, suffix=f"-{index}")


def kind_label(kind: str) -> str:
    """Value of the `saeops.io/kind` label (lower-case kind)."""
    return kind.lower()


# A sweep's group of trials (one activation stream) runs as one Job the sweep owns; its children
# end in `-group`, which no run or cache child does.
GROUP_SUFFIX = "-group"


def group_name(sweep_name: str, indices: list[int]) -> str:
    """The group of these trial indices (the `saeops.io/group` label value): `<sweep>-g<first>-<hash>`.

    The hash of every member index keeps a later group that starts at the same trial (a deleted
    trial recreated) from taking the name of one that still runs."""
    members = ",".join(str(i) for i in sorted(indices))
    return dns_label(sweep_name, 63, suffix=f"-g{min(indices)}-{_digest(members, 6)}")


def group_job_name(group: str) -> str:
    """Name of a group's Indexed Job (also its NetworkPolicy's): `<group>-group`."""
    return dns_label(group, MAX_JOB_NAME, GROUP_SUFFIX)


def group_service_name(group: str) -> str:
    """Name of a group's headless Service."""
    return dns1035_label(group, MAX_JOB_NAME, GROUP_SUFFIX)


def group_configmap_name(group: str) -> str:
    """Name of the ConfigMap holding a group's member-NNN.json (`<group>-group-spec`)."""
    return dns_label(group, 63, GROUP_SUFFIX + "-spec")


def member_file(position: int) -> str:
    """The ConfigMap key (and file) of a group's member at `position` (sorted by name = position)."""
    return f"member-{position:03d}.json"


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


def owned_by(obj: dict[str, Any] | None, owner_uid: str | None) -> bool:
    """Whether `obj`'s ownerReferences name the owner of uid `owner_uid` (an empty uid owns nothing).

    The operator adopts, patches and deletes only what this says it owns: a same-named object
    someone else created is never touched."""
    if not obj or not owner_uid:
        return False
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(isinstance(r, dict) and r.get("uid") == owner_uid for r in refs)
