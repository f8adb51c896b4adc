"""Every storage location a resource writes or reads, and whether a cluster pod can use it.

The spec models accept relative paths (they are fine for `saeops run` on this machine); a pod
would write them into the image's read-only working directory and lose them with the pod, so
the operator's policy (and so `saeops render`) refuses them.
"""

from __future__ import annotations

from saeops.api.resources import ActivationCache, AnyResource, SAESweep, SAETrainingRun


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


__all__ = ["storage_locations"]
