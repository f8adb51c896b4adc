"""What a cluster admin allows runs to do, and how their pods are fenced in.

One frozen `ClusterPolicy` is built from the operator's command line (the Helm chart renders
it from its values) and handed to the pure reconcilers and to `saeops render`:

- a run's `storageUri` must be an absolute location a pod can reach (never a relative path)
  and, when the admin lists prefixes, lie within one of them (`{namespace}` in a prefix is the
  run's namespace, so one list gives every team its own prefix);
- its image and ServiceAccount must be among the allowed values, when those are listed;
- each run gets a NetworkPolicy: its pods accept traffic from pods of the same run only
  (torchrun's rendezvous and the collectives' data ports), and the metrics port also from
  the configured peers (the operator, Prometheus).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saeops.api import ActivationCache, SAESweep, SAETrainingRun
from saeops.api.locations import storage_locations
from saeops.api.uris import StorageURI, URIError, parse_storage_uri

Obj = dict[str, Any]
NAMESPACE_PLACEHOLDER = "{namespace}"
DEFAULT_SERVICE_ACCOUNT = "default"
# Without configured peers, /metrics is open to pods of any namespace (never to addresses
# outside the cluster); the chart always pins the operator and the monitoring namespace.
ANY_POD: Obj = {"namespaceSelector": {}}


@dataclass(frozen=True)
class Problem:
    """Why a resource may not run here: a condition reason and a one-line message naming the field."""

    reason: str  # InvalidSpec or Forbidden
    message: str


@dataclass(frozen=True)
class ClusterPolicy:
    """The admin's rules for runs, caches and sweeps (empty tuples: no restriction)."""

    storage_prefixes: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    network_policy: bool = True
    metrics_from: tuple[Obj, ...] = (ANY_POD,)

    def __post_init__(self) -> None:
        for prefix in self.storage_prefixes:
            # Fail at startup, not on the first run: every prefix must parse for some namespace.
            parse_storage_uri(prefix.replace(NAMESPACE_PLACEHOLDER, "ns"), allow_relative=False)

    def allowed_prefixes(self, namespace: str) -> list[StorageURI]:
        """The storage prefixes of one namespace."""
        return [parse_storage_uri(p.replace(NAMESPACE_PLACEHOLDER, namespace), allow_relative=False)
                for p in self.storage_prefixes]

    def check(self, model: SAETrainingRun | ActivationCache | SAESweep, namespace: str) -> Problem | None:
        """The first rule `model` breaks, or None."""
        if isinstance(model, SAESweep):
            spec, where = model.spec.trial_template, "spec.trialTemplate"
        else:
            spec, where = model.spec, "spec"
        # Every location must be one a pod can use (never relative): the same check as `render`.
        for field, location in storage_locations(model):
            try:
                parse_storage_uri(location, allow_relative=False)
            except URIError as e:
                return Problem("InvalidSpec", f"{field}: {e}")
        parsed = parse_storage_uri(spec.output.storage_uri, allow_relative=False)
        if self.storage_prefixes:
            allowed = self.allowed_prefixes(namespace)
            if not any(parsed.is_within(p) for p in allowed):
                listed = ", ".join(str(p) for p in allowed)
                return Problem("Forbidden", f"{where}.output.storageUri: {parsed} is outside the storage "
                                            f"allowed in namespace {namespace}: {listed}")
        image = spec.resources.image
        if self.images and not any(_image_matches(image, pattern) for pattern in self.images):
            return Problem("Forbidden", f"{where}.resources.image: {image} is not allowed here; "
                                        f"allowed: {', '.join(self.images)}")
        account = spec.resources.service_account_name or DEFAULT_SERVICE_ACCOUNT
        if self.service_accounts and account not in self.service_accounts:
            return Problem("Forbidden", f"{where}.resources.serviceAccountName: {account} is not allowed here; "
                                        f"allowed: {', '.join(self.service_accounts)}")
        return None


def _image_matches(image: str, pattern: str) -> bool:
    """Exact match, or a prefix when the pattern ends in `*` (`registry.corp/ml/*`)."""
    if pattern.endswith("*"):
        return image.startswith(pattern[:-1])
    return image == pattern


__all__ = ["ANY_POD", "ClusterPolicy", "Problem"]
