"""Training groups: one activation stream feeds several dictionaries, each exactly as if alone."""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from saeops.api import SAETrainingRun, SpecError, parse_resource
from saeops.api.groups import expand_run, stream_key
from saeops.runtime.storage import StorageError
from saeops.runtime.train.group import GroupFailed, GroupJob
from saeops.runtime.train.job import TrainingJob
from saeops.runtime.train.member import Member
from tests.runtime.conftest import tiny_run_doc

# Wall-clock fields differ between any two runs; everything else must be equal.
TIMING = {"seconds", "tokens_per_second"}


def member_doc(base: dict[str, Any], name: str, out: Path, sae: dict[str, Any] | None = None,
               **trainer: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    doc["metadata"]["name"] = name
    doc["spec"]["sae"].update(sae or {})
    doc["spec"]["trainer"].update(trainer)
    doc["spec"]["output"] = {"storageUri": str(out)}
    return doc


def run_of(doc: dict[str, Any]) -> SAETrainingRun:
    run = parse_resource(doc, "test")
    assert isinstance(run, SAETrainingRun)
    return run


def artifacts(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    metrics = json.loads((out / "metrics.json").read_text())
    strip = [{k: v for k, v in h.items() if k not in TIMING} for h in [metrics["final"], *metrics["history"]]]
    return load_file(str(out / "sae.safetensors")), {"final": strip[0], "history": strip[1:]}


def assert_same(a: Path, b: Path) -> None:
    wa, ma = artifacts(a)
    wb, mb = artifacts(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key  # bitwise
    assert ma == mb


def test_a_group_trains_each_member_bitwise_as_alone_from_one_forward_per_batch(
        tmp_path: Path, forwards: Counter[tuple[str, ...]]) -> None:
    base = tiny_run_doc(tmp_path)
    variants: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({}, {}),
        ({"topK": 8, "expansionFactor": 2}, {"lr": 3e-3, "checkpointInterval": 3}),
        ({"hookPointIn": "blocks.0.hook_resid_post", "actFn": "relu"}, {"optimizer": "adamw", "l1Coefficient": 1e-3}),
    ]
    group = [run_of(member_doc(base, f"m{i}", tmp_path / "group" / f"m{i}", sae, **tr))
             for i, (sae, tr) in enumerate(variants)]
    assert len({stream_key(r.spec) for r in group}) == 1
    job = GroupJob(group, progress=False)
    members = job.run_group()
    assert list(members) == ["m0", "m1", "m2"] and all(m.error is None for m in members.values())
    steps = group[0].spec.trainer.total_steps
    assert job.forwards == steps  # one batch of the stream per step, for all three
    group_forwards = sum(forwards.values())
    # The forward reads both hook points (the deepest bounds it), never one per member.
    assert set(forwards) == {("blocks.1.hook_resid_post", "blocks.0.hook_resid_post")}
    forwards.clear()

    for i, (sae, tr) in enumerate(variants):
        alone = tmp_path / "alone" / f"m{i}"
        TrainingJob(run_of(member_doc(base, f"m{i}", alone, sae, **tr)), progress=False).run_job()
        assert_same(tmp_path / "group" / f"m{i}", alone)
    # Alone, each run drew as many forwards as the whole group did: the group costs one stream.
    assert sum(forwards.values()) == 3 * group_forwards


def test_a_diverging_member_fails_alone_and_the_others_finish(tmp_path: Path) -> None:
    base = tiny_run_doc(tmp_path)
    good = run_of(member_doc(base, "good", tmp_path / "good"))
    # float16 weights (with lr 10 for good measure): the loss overflows within a few steps.
    bad = run_of(member_doc(base, "bad", tmp_path / "bad", {"dtype": "float16"}, lr=10.0))
    members = GroupJob([good, bad], progress=False).run_group()
    assert members["good"].error is None and members["good"].result is not None
    err = members["bad"].error
    assert err is not None and err.startswith("error: Diverged: the loss is "), err
    assert "spec.trainer.lr=10" in err
    assert (tmp_path / "good" / "metrics.json").exists()
    assert not (tmp_path / "bad" / "metrics.json").exists()
    alone = tmp_path / "good-alone"
    TrainingJob(run_of(member_doc(base, "good", alone)), progress=False).run_job()
    assert_same(tmp_path / "good", alone)

    # Every member failing fails the group, each still with its own error.
    with pytest.raises(GroupFailed) as info:
        GroupJob([run_of(member_doc(base, "bad2", tmp_path / "bad2", {"dtype": "float16"}, lr=10.0))],
                 progress=False, alone_raises=False).run_group()
    assert info.value.members[0].error.startswith("error: Diverged")


def test_a_group_writes_its_members_checkpoints_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every save waits at a barrier for the other two: written one after another, the first would
    # wait alone until the timeout and its member fail.
    barrier = threading.Barrier(3, timeout=60)
    writers: list[str] = []
    original = Member.save_checkpoint

    def side_by_side(self: Member) -> None:
        writers.append(threading.current_thread().name)
        barrier.wait()
        original(self)

    monkeypatch.setattr(Member, "save_checkpoint", side_by_side)
    base = tiny_run_doc(tmp_path)
    runs = [run_of(member_doc(base, f"c{i}", tmp_path / f"c{i}", {"topK": 2 + i}, checkpointInterval=3))
            for i in range(3)]
    members = GroupJob(runs, progress=False).run_group()
    assert all(m.error is None for m in members.values()), {k: m.error for k, m in members.items()}
    # Steps 3 and 6 by the interval, 8 at the end: three rounds of three writes, off this thread.
    assert len(writers) == 9 and all(w.startswith("checkpoint") for w in writers)
    for m in members.values():
        assert m.checkpoint_step == 8
        assert json.loads((tmp_path / m.name / "checkpoints" / "latest.json").read_text())["step"] == 8
    monkeypatch.setattr(Member, "save_checkpoint", original)
    alone = tmp_path / "alone"
    TrainingJob(run_of(member_doc(base, "c1", alone, {"topK": 3}, checkpointInterval=3)), progress=False).run_job()
    assert_same(tmp_path / "c1", alone)


def test_a_failed_checkpoint_write_fails_its_member_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Member.save_checkpoint

    def flaky(self: Member) -> None:
        if self.name == "w1":
            raise StorageError("output location s3://bucket/w1 is not writable: AccessDenied")
        original(self)

    monkeypatch.setattr(Member, "save_checkpoint", flaky)
    base = tiny_run_doc(tmp_path)
    runs = [run_of(member_doc(base, f"w{i}", tmp_path / f"w{i}", checkpointInterval=4)) for i in range(3)]
    members = GroupJob(runs, progress=False).run_group()
    assert members["w1"].error is not None and "AccessDenied" in members["w1"].error
    assert not (tmp_path / "w1" / "metrics.json").exists()
    for name in ("w0", "w2"):
        assert members[name].error is None and (tmp_path / name / "metrics.json").exists()


def test_a_member_whose_own_spec_is_wrong_fails_alone_before_training(tmp_path: Path) -> None:
    # d_model 32 x expansion 1 = 32 latents: k 40 cannot be chosen, which only the model's width
    # tells (the spec alone cannot); a sweep over k x expansion meets it.
    base = tiny_run_doc(tmp_path)
    good = run_of(member_doc(base, "fits", tmp_path / "fits"))
    wide = run_of(member_doc(base, "too-wide", tmp_path / "too-wide", {"topK": 40, "expansionFactor": 1}))
    members = GroupJob([good, wide], progress=False, alone_raises=False).run_group()
    assert members["too-wide"].error == "error: spec.sae.topK=40 exceeds dSae=32"
    assert members["fits"].error is None and (tmp_path / "fits" / "metrics.json").exists()
    assert not (tmp_path / "too-wide" / "checkpoints").exists()
    # Alone, the run fails as a single run always did (its SpecError: exit 2, one line).
    with pytest.raises(SpecError, match="topK=40 exceeds dSae=32"):
        GroupJob([wide], progress=False).run_group()
    # Every member wrong: the group fails, each with its own error, before any training.
    with pytest.raises(GroupFailed) as info:
        GroupJob([wide, run_of(member_doc(base, "also", tmp_path / "also", {"topK": 33, "expansionFactor": 1}))],
                 progress=False, alone_raises=False).run_group()
    assert [m.error for m in info.value.members] == ["error: spec.sae.topK=40 exceeds dSae=32",
                                                     "error: spec.sae.topK=33 exceeds dSae=32"]


def test_one_sae_per_hook_point_is_one_run_with_one_forward_per_batch(
        tmp_path: Path, forwards: Counter[tuple[str, ...]]) -> None:
    doc = tiny_run_doc(tmp_path)
    hooks = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    doc["spec"]["sae"].pop("hookPointIn")
    doc["spec"]["sae"]["perHookPoint"] = hooks
    run = run_of(doc)
    assert [m.spec.sae.hook_point_in for m in expand_run(run)] == hooks
    job = TrainingJob(run, progress=False)
    members = job.run_members()
    assert list(members) == hooks
    assert job.group.forwards == run.spec.trainer.total_steps
    assert set(forwards) == {tuple(hooks)}
    out = Path(doc["spec"]["output"]["storageUri"])
    for hook, m in members.items():
        metrics = json.loads((out / hook / "metrics.json").read_text())
        assert metrics["final"] == m.result.final  # per-layer metrics, each in its own output
        config = json.loads((out / hook / "config.json").read_text())
        assert config["run"]["spec"]["sae"]["hookPointIn"] == hook
    # Each layer's SAE equals that layer's SAE trained alone.
    alone = copy.deepcopy(doc)
    alone["spec"]["sae"].pop("perHookPoint")
    alone["spec"]["sae"]["hookPointIn"] = hooks[0]
    alone["spec"]["output"] = {"storageUri": str(tmp_path / "alone")}
    TrainingJob(run_of(alone), progress=False).run_job()
    assert_same(out / hooks[0], tmp_path / "alone")


def test_per_hook_point_spec_rules() -> None:
    from pydantic import ValidationError

    from saeops.api import DictionarySpec

    assert DictionarySpec(per_hook_point=["a", "b"]).hook_points() == ["a", "b"]
    for bad, needle in [({"per_hook_point": ["a"], "hook_point_in": "a"}, "not both"),
                        ({"per_hook_point": ["a", "a"]}, "each hook point once"),
                        ({"per_hook_point": ["a"], "type": "transcoder"}, "type: sae")]:
        with pytest.raises(ValidationError, match=needle):
            DictionarySpec(**bad)


def test_a_per_hook_point_run_reports_the_mean_and_each_dictionary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a pod, the run's one termination message: `final` (what its status shows) is the mean
    over its dictionaries, and `members` has each one's metrics."""
    from saeops.runtime.launch import TERMINATION_LOG_ENV, run_resource

    doc = tiny_run_doc(tmp_path)
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    doc["spec"]["sae"].pop("hookPointIn")
    doc["spec"]["sae"]["perHookPoint"] = hooks
    log = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(log))
    assert run_resource(run_of(doc), progress=False) == 0
    message = json.loads(log.read_text())
    assert set(message["members"]) == set(hooks)
    finals = [message["members"][h]["final"] for h in hooks]
    for key in ("l0", "explained_variance", "dead_fraction"):
        assert message["final"][key] == pytest.approx(sum(f[key] for f in finals) / 2, rel=1e-5)
