"""Sweep trials that share one activation stream are planned into groups (api.groups)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from saeops.api import GroupingSpec, SAESweep, SAETrainingRun, load_resource, parse_resource
from saeops.api.groups import plan_groups, stream_key
from saeops.api.load import set_path
from saeops.api.trials import planned_trials, render_trial

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _sweep(**overrides: object) -> SAESweep:
    sweep = load_resource(str(EXAMPLES / "sweep.yaml"))
    assert isinstance(sweep, SAESweep)
    doc = sweep.to_manifest()
    for path, value in overrides.items():
        set_path(doc, path.replace("__", "."), value)
    parsed = parse_resource(doc, "sweep")
    assert isinstance(parsed, SAESweep)
    return parsed


def _trials(sweep: SAESweep) -> list[tuple[int, object]]:
    doc = sweep.to_manifest()
    out = []
    for i in range(planned_trials(sweep)):
        run = parse_resource(render_trial(doc, sweep, i), f"trial {i}")
        assert isinstance(run, SAETrainingRun)
        out.append((i, run.spec))
    return out


def test_trials_differing_in_the_dictionary_and_optimiser_share_a_stream() -> None:
    trials = _trials(_sweep())  # k x lr, 9 trials, each with its own output prefix
    keys = {stream_key(spec) for _, spec in trials}
    assert len(keys) == 1
    assert plan_groups(trials, GroupingSpec(), budget=3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert plan_groups(trials, GroupingSpec(max_trials=4), budget=100) == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert plan_groups(trials, GroupingSpec(enabled=False), budget=9) == [[i] for i in range(9)]
    assert plan_groups(trials, GroupingSpec(), budget=1) == [[i] for i in range(9)]


def test_hook_point_expansion_activation_function_and_resources_do_not_split_a_stream() -> None:
    base = _sweep().spec.trial_template
    for path, value in [("sae.hookPointIn", "blocks.5.hook_resid_post"), ("sae.expansionFactor", 4.0),
                        ("sae.actFn", "relu"), ("trainer.lr", 1e-2), ("trainer.optimizer", "adamw"),
                        ("output.storageUri", "file:///elsewhere"), ("resources.numProcPerNode", 1)]:
        doc = base.to_manifest()
        set_path(doc, path, value)
        other = type(base).model_validate(doc)
        assert stream_key(other) == stream_key(base), path


def test_what_decides_the_stream_splits_groups() -> None:
    base = _sweep().spec.trial_template
    for path, value in [("trainer.seed", 7), ("trainer.batchSize", 2048), ("trainer.totalTrainingTokens", 100000),
                        ("dataset.contextSize", 64), ("activations.bufferSize", 1024),
                        ("activations.shuffle", False), ("model.name", "other"), ("model.dtype", "bfloat16"),
                        ("activations.cacheUri", "file:///cache")]:
        doc = base.to_manifest()
        set_path(doc, path, value)
        other = type(base).model_validate(doc)
        assert stream_key(other) != stream_key(base), path


def test_groups_keep_order_and_never_mix_streams() -> None:
    base = _sweep().spec.trial_template
    specs = []
    for i, seed in enumerate([1, 2, 1, 1, 2, 3, 1]):
        doc = base.to_manifest()
        set_path(doc, "trainer.seed", seed)
        specs.append((10 + i, type(base).model_validate(doc)))
    assert plan_groups(specs, GroupingSpec(max_trials=2), budget=8) == [[10, 12], [11, 14], [13, 16], [15]]
    for group in plan_groups(specs, GroupingSpec(), budget=8):
        assert len({stream_key(s) for i, s in specs if i in group}) == 1


def test_the_key_is_stable_across_processes() -> None:
    # A hash of the manifest form (sorted keys), not of Python object ids or dict order.
    spec = _sweep().spec.trial_template
    assert stream_key(spec) == stream_key(type(spec).model_validate(spec.to_manifest()))
    assert len(stream_key(spec)) == 16


def test_grouping_defaults_and_bounds() -> None:
    sweep = _sweep()
    assert sweep.spec.grouping.enabled is True
    assert sweep.spec.grouping.max_trials == 8
    off = _sweep(spec__grouping={"enabled": False, "maxTrials": 2}).spec.grouping
    assert (off.enabled, off.max_trials) == (False, 2)
    for bad in (0, 65):
        with pytest.raises(ValidationError):
            GroupingSpec(max_trials=bad)
