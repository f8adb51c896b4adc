"""Run identity through `saeops run`: a rerun into a finished output resumes only the same run;
another spec, another resource, or a planted old pickle is refused with exit 2 and one
`error:` line, and nothing under the output changes. A damaged latest checkpoint falls back."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from saeops.api import SAETrainingRun, SpecError, parse_resource
from saeops.cli import main
from saeops.runtime.storage.local import TMP_SUFFIX
from saeops.runtime.train.checkpoint_format import TENSORS
from saeops.runtime.train.identity import describe_mismatch, prepare_output, run_identity
from tests.distributed.conftest import assert_bitwise, latest_step, make_cache, manifest, weights
from tests.train.test_checkpoint import malicious_pickle

UID = "8d3c5a8e-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_cache(tmp_path_factory.mktemp("cache") / "c", shards=4)


def doc(out: Path, cache: str, uid: str | None = None) -> dict[str, Any]:
    d = manifest(out, cache, steps=16, interval=8)
    if uid is not None:
        d["metadata"].update(namespace="team-a", uid=uid)
    return d


def run(capsys: pytest.CaptureFixture[str], d: dict[str, Any], *args: str) -> tuple[int, str]:
    path = Path(d["spec"]["output"]["storageUri"]).parent / "run.json"
    path.write_text(json.dumps(d))
    code = main(["run", str(path), "--no-progress", *args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def finished_src(cache: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Finished outputs (checkpoints at 8 and 16, artifacts): a local run and a cluster run."""
    root = tmp_path_factory.mktemp("finished")
    outs = {"local": root / "local" / "out", "cluster": root / "cluster" / "out"}
    for name, out in outs.items():
        out.parent.mkdir()
        path = out.parent / "run.json"
        path.write_text(json.dumps(doc(out, cache, UID if name == "cluster" else None)))
        assert main(["run", str(path), "--no-progress"]) == 0
    return outs


@pytest.fixture
def finished(finished_src: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    outs = {}
    for name, src in finished_src.items():
        outs[name] = tmp_path / name / "out"
        shutil.copytree(src, outs[name])
    return outs


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (temp and hidden files included)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_refused(capsys: pytest.CaptureFixture[str], out: Path, d: dict[str, Any], *expected: str) -> str:
    before = snapshot(out)
    code, err = run(capsys, d)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0]
    assert "--force-new" in lines[0] and "start a new output" in lines[0]
    assert snapshot(out) == before
    return lines[0]


# -- refusals -----------------------------------------------------------------------------

CHANGES = {
    "topK": (lambda s: s["sae"].update(topK=8), "spec.sae.topK: 8 != 4"),
    "lr": (lambda s: s["trainer"].update(lr=1e-3), "spec.trainer.lr: 0.001 != 0.003"),
    "seed": (lambda s: s["trainer"].update(seed=7), "spec.trainer.seed: 7 != 42"),
    "cache": (lambda s: s["activations"].update(cacheUri="/elsewhere"), "spec.activations.cacheUri: /elsewhere != "),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_spec_is_refused_and_nothing_changes(change: str, finished: dict[str, Path], cache: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = finished["local"]
    d = doc(out, cache)
    edit, text = CHANGES[change]
    edit(d["spec"])
    line = assert_refused(capsys, out, d, text, f"{(out / 'checkpoints' / 'latest.json').as_uri()} holds another "
                                                "run's training")
    assert line.count("!=") == 2  # the one field, and the legend


def test_config_json_alone_identifies_a_finished_run(finished: dict[str, Path], cache: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = finished["local"]
    shutil.rmtree(out / "checkpoints")
    d = doc(out, cache)
    d["spec"]["sae"]["topK"] = 8
    assert_refused(capsys, out, d, f"{(out / 'config.json').as_uri()} holds another run's training",
                   "spec.sae.topK: 8 != 4")


def test_another_resource_output_is_refused(finished: dict[str, Path], cache: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = finished["cluster"]
    other = "8d3c5a8e-0000-4000-8000-000000000002"
    assert_refused(capsys, out, doc(out, cache, other),
                   f"it belongs to team-a/dist-test (uid {UID}), not team-a/dist-test (uid {other})")
    assert_refused(capsys, out, doc(out, cache), "not a run outside a cluster")
    # And a cluster resource never adopts a local run's output.
    assert_refused(capsys, finished["local"], doc(finished["local"], cache, UID),
                   "it belongs to a run outside a cluster")


def test_a_planted_pickle_is_refused_and_never_run(finished: dict[str, Path], cache: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = finished["local"]
    marker = tmp_path / "pwned"
    (out / "checkpoints" / "step-00000016" / "state.pt").write_bytes(malicious_pickle(marker))
    (out / "checkpoints" / "latest.json").write_text(json.dumps({"step": 16, "key": "step-00000016/state.pt"}))
    assert_refused(capsys, out, doc(out, cache), "step-00000016/state.pt, a checkpoint format this saeops does not read")
    assert not marker.exists()


# -- what resumes -------------------------------------------------------------------------


def test_the_same_spec_resumes(finished: dict[str, Path], cache: str,
                               capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    out = finished["cluster"]
    d = doc(out, cache, UID)
    # Scheduling and budget fields are not identity: a longer run continues the finished one.
    d["spec"]["trainer"].update(totalTrainingTokens=24 * 64, checkpointInterval=4, keepCheckpoints=3, logFrequency=2)
    d["spec"]["resources"] = {"numProcPerNode": 1, "image": "other:1"}
    d["spec"]["suspend"] = False
    d["spec"]["metrics"] = {"enabled": False}
    with caplog.at_level(logging.INFO):
        code, err = run(capsys, d)
    assert code == 0, err
    assert "resumed from checkpoint at step 16" in caplog.text
    assert latest_step(out) == 24
    pointer = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert pointer["identity"] == run_identity(parse_resource(d, "test"))  # type: ignore[arg-type]
    assert pointer["identity"]["owner"] == {"namespace": "team-a", "name": "dist-test", "uid": UID}


def test_a_truncated_latest_checkpoint_falls_back(finished: dict[str, Path], finished_src: dict[str, Path],
                                                  cache: str, capsys: pytest.CaptureFixture[str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    out = finished["local"]
    ckpt = out / "checkpoints"
    tensors = ckpt / "step-00000016" / TENSORS
    with tensors.open("r+b") as f:
        f.truncate(tensors.stat().st_size - 100)
    with caplog.at_level(logging.INFO):
        code, err = run(capsys, doc(out, cache))
    assert code == 0, err
    warning = next(r.getMessage() for r in caplog.records if "falling back" in r.getMessage())
    assert f"{(ckpt / 'step-00000016').as_uri()} ({TENSORS} is truncated or padded" in warning
    assert warning.endswith(f"falling back to {(ckpt / 'step-00000008').as_uri()}")
    assert "resumed from checkpoint at step 8" in caplog.text
    assert latest_step(out) == 16
    assert_bitwise(weights(out), weights(finished_src["local"]))  # steps 8..16 retrained exactly


# -- starting over ------------------------------------------------------------------------


def test_force_new_deletes_the_previous_run_then_the_new_spec_trains(
        finished: dict[str, Path], cache: str, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    out = finished["local"]
    (out / "notes.txt").write_text("mine")  # not saeops': kept
    (out / "analysis").mkdir()
    (out / "analysis" / "report.html").write_text("<html>")
    (out / "checkpoints" / f".latest.json.x{TMP_SUFFIX}").write_text("left by a crash")
    d = doc(out, cache)
    d["spec"]["sae"]["topK"] = 8
    with caplog.at_level(logging.INFO):
        code, err = run(capsys, d, "--force-new")
    assert code == 0, err
    deleted = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("--force-new: deleted"))
    assert deleted.startswith("--force-new: deleted metrics.json, checkpoints/latest.json, config.json, "
                              "sae.safetensors, analysis/ (1 files), checkpoints/ (")
    assert "1 temp files of interrupted writes" in deleted
    assert "resumed from checkpoint" not in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.json", "metrics.json", "notes.txt",
                                                     "sae.safetensors"]
    assert json.loads((out / "config.json").read_text())["run"]["spec"]["sae"]["topK"] == 8
    assert json.loads((out / "metrics.json").read_text())["final"]["l0"] == 8.0
    # The output is the new run's now: the old spec is the one refused.
    assert_refused(capsys, out, doc(out, cache), "spec.sae.topK: 4 != 8")


def test_force_new_is_for_training_runs_and_checks_the_output_first(tmp_path: Path, cache: str) -> None:
    cache_doc = {"apiVersion": "saeops.io/v1alpha1", "kind": "ActivationCache", "metadata": {"name": "c"},
                 "spec": {"model": {"name": "m", "native": {}}, "dataset": {"path": "builtin:python-docs"},
                          "hookPoints": ["blocks.0.hook_resid_post"], "totalTokens": 1000,
                          "output": {"storageUri": str(tmp_path / "c")}}}
    with pytest.raises(SpecError, match="--force-new applies to SAETrainingRun, not ActivationCache"):
        prepare_output(parse_resource(cache_doc, "test"), force_new=True)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpecError, match=r"spec\.output\.storageUri"):
        prepare_output(parse_resource(doc(blocker / "out", cache), "test"), force_new=True)
    assert blocker.read_text() == "x"


# -- the identity itself ------------------------------------------------------------------


def _run(**spec: Any) -> SAETrainingRun:
    d = copy.deepcopy(manifest("/tmp/x", "/tmp/c"))
    for section, values in spec.items():
        d["spec"].setdefault(section, {}).update(values)
    return parse_resource(d, "test")  # type: ignore[return-value]


def test_identity_leaves_out_scheduling_and_defaults() -> None:
    base = run_identity(_run())
    same = [
        {"parallelism": {"data": 1}, "resources": {"numNodes": 1, "image": "x:2"}, "suspend": True,
         "metrics": {"port": 9999}, "eval": {"enabled": True}, "analysis": {"enabled": True}},
        {"output": {"storageUri": "s3://bucket/elsewhere", "endpointUrl": "http://127.0.0.1:9000"}},
        {"trainer": {"checkpointInterval": 3, "keepCheckpoints": 5, "logFrequency": 1, "totalTrainingTokens": 10**6,
                     "wandb": {"project": "p"}}},
        {"model": {"device": "cpu", "batchSize": 3}, "sae": {"useTritonKernel": True}},
        {"trainer": {"seed": 42, "optimizer": "adam"}},  # defaults written out
    ]
    for extra in same:
        d = copy.deepcopy(manifest("/tmp/x", "/tmp/c"))
        for k, v in extra.items():
            if isinstance(v, dict):
                d["spec"].setdefault(k, {}).update(v)
            else:
                d["spec"][k] = v
        assert run_identity(parse_resource(d, "t")) == base, extra  # type: ignore[arg-type]
    assert "seed" not in base["fields"]["trainer"] and base["fields"]["sae"]["topK"] == 4


@pytest.mark.parametrize(("spec", "text"), [
    ({"sae": {"topK": 8}}, "spec.sae.topK: 8 != 4"),
    ({"sae": {"actFn": "batchtopk"}}, "spec.sae.actFn: batchtopk != topk"),
    ({"trainer": {"betas": [0.8, 0.9]}}, "spec.trainer.betas: [0.8,0.9] != [0.9,0.999]"),
    ({"initializer": {"initTokens": 1024}}, "spec.initializer.initTokens: 1024 != 512"),
    ({"model": {"dtype": "bfloat16"}}, "spec.model.dtype: bfloat16 != float32"),
    ({"activations": {"shuffle": False}}, "spec.activations.shuffle: false != true"),
    ({"trainer": {"batchSize": 32}}, "spec.trainer.batchSize: 32 != 64"),
])
def test_mismatch_names_each_field(spec: dict[str, Any], text: str) -> None:
    recorded = run_identity(_run())
    assert describe_mismatch(recorded, _run()) is None
    why = describe_mismatch(recorded, _run(**spec))
    assert why is not None and text in why


def test_identity_survives_json() -> None:
    ident = run_identity(_run(trainer={"betas": [0.8, 0.9]}))
    assert describe_mismatch(json.loads(json.dumps(ident)), _run(trainer={"betas": [0.8, 0.9]})) is None


def test_a_refused_distributed_run_exits_2_before_torchrun(finished: dict[str, Path], cache: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = finished["local"]
    d = doc(out, cache)
    d["spec"]["parallelism"] = {"data": 2}
    d["spec"]["resources"] = {"numProcPerNode": 2}
    assert prepare_output(parse_resource(d, "test")) == []  # the same run: fine (parallelism is not identity)
    d["spec"]["trainer"]["lr"] = 1e-3
    assert_refused(capsys, out, d, "spec.trainer.lr: 0.001 != 0.003")  # in-process: no torchrun was started
