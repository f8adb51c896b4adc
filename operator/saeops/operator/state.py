"""What a reconcile sees (Observed) and what it asks for (Desired): plain data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to emit on the resource."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class ChildRef:
    """A child to delete: apiVersion/kind/name (namespace is the owner's) and the uid observed,
    so the delete is conditional on it still being that object (a precondition)."""

    api_version: str
    kind: str
    name: str
    uid: str | None = None


@dataclass(frozen=True)
class Rejection:
    """The API server refused a create or patch for good (a 4xx other than 409/429)."""

    kind: str
    name: str
    code: int
    message: str


@dataclass(frozen=True)
class Observed:
    """Everything a run/cache reconcile reads, as the API server returned it.

    `configmap`, `service`, `networkpolicy`, `job`: whatever holds a child's name, owned or
    not (the reconcile checks ownerReferences). `pods`: the pods of that Job (their statuses
    carry the termination messages). `cache`: the ActivationCache named by
    `spec.activations.cacheRef` (None when absent or not referenced). `metrics`: samples
    scraped from the rank-0 pod's /metrics, by metric name (None when unreachable).
    `foreign`: objects found under a child's name when a create answered 409.
    `rejection`: the API server refused a child or the status for good.
    `group_job`: for a sweep's trial packed into a group (label `saeops.io/group`), whatever holds
    its group's Job name; `pods` are then that Job's and `metrics` the trial's own series.
    """

    resource: Obj
    job: Obj | None = None
    pods: tuple[Obj, ...] = ()
    configmap: Obj | None = None
    service: Obj | None = None
    networkpolicy: Obj | None = None
    cache: Obj | None = None
    metrics: dict[str, float] | None = None
    foreign: tuple[Obj, ...] = ()
    rejection: Rejection | None = None
    group_job: Obj | None = None


@dataclass
class Desired:
    """The difference to apply: children to create or delete, a status, events, a requeue."""

    create: list[Obj] = field(default_factory=list)
    delete: list[ChildRef] = field(default_factory=list)
    status: Obj | None = None  # None: unchanged (no patch)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    delete_self: bool = False

    @property
    def changes_nothing(self) -> bool:
        """True when applying this does not touch the cluster (the handler then skips the writes)."""
        return not (self.create or self.delete or self.status is not None or self.events or self.delete_self)


@dataclass(frozen=True)
class ObservedSweep:
    """A sweep and its trials (SAETrainingRuns labelled `saeops.io/sweep=<name>`; the reconcile
    counts only those the sweep owns), plus `foreign`/`rejection` as for runs.

    `children`: whatever holds the name of a group's ConfigMap, Service, NetworkPolicy or Job, for
    every group its trials or owned Jobs name (owned or not: the reconcile checks). `caches`: the
    ActivationCaches the trials' `activations.cacheRef` name."""

    resource: Obj
    trials: tuple[Obj, ...] = ()
    foreign: tuple[Obj, ...] = ()
    rejection: Rejection | None = None
    children: tuple[Obj, ...] = ()
    caches: tuple[Obj, ...] = ()
