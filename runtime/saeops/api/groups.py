"""Which training runs share one activation stream, and so can train as one group.

A group is N dictionaries fed the same batches in the same order by one model forward (or one
cache reader): trials of a sweep that differ only in the dictionary and the optimiser, or the
dictionaries of one run that names several hook points. `stream_key` says what decides that
stream; `plan_groups` packs a sweep's trials into groups. Used by `saeops run sweep.yaml` and
by the operator's sweep reconciler, so both plan the same groups.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from saeops.api.resources import GroupingSpec, SAETrainingRun, SAETrainingRunSpec


def stream_fields(spec: SAETrainingRunSpec) -> dict[str, Any]:
    """Everything that decides a run's activation stream and its order, in manifest form.

    The runtime's stream is a function of these alone: the model and its forward settings, the
    text (or the cache) and how it is windowed and filtered, the shuffle (buffer, seed), the
    batch size and its split over data-parallel ranks, and how many batches are drawn. Hook
    points are not in it: the stream's rows do not depend on which hooks are read (a group
    reads the union of its members'). Whole context windows (Lorsa) are a different stream
    from shuffled tokens.
    """
    acts = spec.activations
    return {
        "model": spec.model.to_manifest(),
        "dataset": spec.dataset.to_manifest() if spec.dataset is not None else None,
        "activations": acts.to_manifest(),
        "windows": spec.sae.type == "lorsa",
        "batchSize": spec.trainer.batch_size,
        "totalTrainingTokens": spec.trainer.total_training_tokens,
        "seed": spec.trainer.seed,
        "parallelism": spec.parallelism.to_manifest(),
    }


def stream_key(spec: SAETrainingRunSpec) -> str:
    """A stable hash of `stream_fields`: runs with equal keys read the same batches in the
    same order."""
    text = json.dumps(stream_fields(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_groups(runs: Sequence[tuple[int, SAETrainingRunSpec]], grouping: GroupingSpec,
                budget: int) -> list[list[int]]:
    """Trial indices packed into groups, deterministically.

    Runs are taken in the order given; each joins the first open group with its stream key
    until that group holds min(maxTrials, budget) trials. Groups come out in the order of their
    first trial, members in the order given. With grouping disabled every trial is alone.
    """
    cap = max(1, min(grouping.max_trials, budget))
    if not grouping.enabled or cap == 1:
        return [[index] for index, _ in runs]
    groups: list[list[int]] = []
    open_group: dict[str, list[int]] = {}
    for index, spec in runs:
        key = stream_key(spec)
        group = open_group.get(key)
        if group is None or len(group) >= cap:
            group = []
            groups.append(group)
            open_group[key] = group
        group.append(index)
    return groups


def expand_run(run: SAETrainingRun) -> list[SAETrainingRun]:
    """The dictionaries a run trains: itself, or one run per hook point of `sae.perHookPoint`
    (hookPointIn set to it, output under `<output.storageUri>/<hook point>`), in the order given.
    They share the run's stream, so they train as one group."""
    hooks = run.spec.sae.per_hook_point
    if not hooks:
        return [run]
    doc = run.model_dump(by_alias=True, exclude_none=True, mode="json")
    doc.pop("status", None)
    members = []
    for hook in hooks:
        member = json.loads(json.dumps(doc))
        sae = member["spec"]["sae"]
        sae.pop("perHookPoint", None)
        sae["hookPointIn"] = hook
        out = member["spec"]["output"]
        out["storageUri"] = f"{str(out['storageUri']).rstrip('/')}/{hook}"
        members.append(SAETrainingRun.model_validate(member))
    return members
