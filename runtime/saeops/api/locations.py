"""Every storage location a resource writes or reads, and whether a cluster pod can use it.

The spec models accept relative paths (they are fine for `saeops run` on this machine); a pod
would write them into the image's read-only working directory and lose them with the pod, so
`saeops render` and the operator refuse them with `check_cluster_locations`.
"""

from __future__ import annotations

from saeops.api.load import SpecError, one_line
from saeops.api.resources import ActivationCache, AnyResource, SAESweep, SAETrainingRun
from saeops.api.uris import URIError, parse_storage_uri


def storage_locations(res: AnyResource) -> list[tuple[str, str]]:
    """(manifest path, URI) of every storage location in `res`; a sweep's are its template's."""
    if isinstance(res, SAESweep):
        run, base = res.spec.trial_template, "spec.trialTemplate"
    elif isinstance(res, SAETrainingRun | ActivationCache):
        run, base = res.spec, "spec"
    else:  # pragma: no cover - the three kinds are all there is
        return []
    found = [(f"{base}.output.storageUri", run.output.storage_uri)]
    activations = getattr(run, "activations", None)
    if activations is not None and activations.cache_uri is not None:
        found.append((f"{base}.activations.cacheUri", activations.cache_uri))
    return found


def check_cluster_locations(res: AnyResource, source: str = "") -> None:
    """Raise `SpecError` (one line naming the field) for a location a pod cannot use."""
    prefix = f"{source}: " if source else ""
    for field, uri in storage_locations(res):
        try:
            parse_storage_uri(uri, allow_relative=False)
        except URIError as e:
            raise SpecError(one_line(f"{prefix}{field}: {e}")) from None


__all__ = ["check_cluster_locations", "storage_locations"]
