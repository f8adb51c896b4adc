"""Trials of an SAESweep: trial `index` as an SAETrainingRun manifest, and how many there are.

Shared by the operator (which creates trials as custom resources) and `saeops run sweep.yaml`
(which runs them here), so a local sweep and a cluster sweep of one manifest are comparable:
same names, parameters and output prefixes.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from saeops.api import names, search
from saeops.api.load import set_path
from saeops.api.resources import SAESweep

Obj = dict[str, Any]


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def render_trial(sweep: Obj, model: SAESweep, index: int) -> Obj:
    """Trial `index` as an SAETrainingRun manifest (deterministic name and values)."""
    sweep_name = sweep["metadata"]["name"]
    name = names.trial_name(sweep_name, index)
    spec = copy.deepcopy(_dict(sweep.get("spec")).get("trialTemplate") or model.spec.trial_template.to_manifest())
    params = search.assignment(model.spec, index)
    for path, value in params.items():
        set_path(spec, path, value)
    # Trials must not overwrite each other's artifacts and checkpoints.
    output = spec.setdefault("output", {})
    output["storageUri"] = f"{str(output.get('storageUri', '')).rstrip('/')}/{name}"
    meta: Obj = {
        "name": name,
        "labels": {
            "app.kubernetes.io/name": "saeops",
            "app.kubernetes.io/managed-by": names.MANAGED_BY,
            names.LABEL_SWEEP: sweep_name,
            names.LABEL_TRIAL_INDEX: str(index),
        },
        "annotations": {names.ANNOTATION_PARAMETERS: json.dumps(params, sort_keys=True)},
        "ownerReferences": [names.owner_reference(sweep)],
    }
    if sweep["metadata"].get("namespace"):
        meta["namespace"] = sweep["metadata"]["namespace"]
    return {"apiVersion": names.API, "kind": "SAETrainingRun", "metadata": meta, "spec": spec}


def planned_trials(model: SAESweep) -> int:
    """Trials the sweep will run in total: maxTrials, capped by the grid's size."""
    size = search.space_size(model.spec)
    return model.spec.max_trials if size is None else min(size, model.spec.max_trials)
