"""`saeops run` / `saeops validate` end to end on a tiny model, and every bad input the issue names:
one line naming the field or path, exit code 2, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from saeops.cli import main
from tests.runtime.conftest import tiny_run_doc


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def test_run_writes_artifacts_and_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tiny_run_doc(tmp_path)
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    code, out, _ = run_cli(capsys, "run", str(manifest), "--no-progress", "--set", "spec.sae.topK=3")
    assert code == 0
    for row in ("L0", "explained variance", "MSE", "dead latents", "tokens", "time", "artifacts:"):
        assert row in out
    outdir = tmp_path / "out"
    metrics = json.loads((outdir / "metrics.json").read_text())
    final = metrics["final"]
    for key in ("l0", "explained_variance", "mse", "dead_fraction", "tokens", "seconds"):
        assert key in final
    assert final["l0"] == 3.0 and final["tokens"] == 2048
    assert len(metrics["history"]) == 2  # logFrequency 4 over 8 steps
    config = json.loads((outdir / "config.json").read_text())
    assert config["run"]["spec"]["sae"]["topK"] == 3
    weights = load_file(str(outdir / "sae.safetensors"))
    assert weights["W_enc"].shape == (32, 128) and weights["W_dec"].shape == (128, 32)


def test_validate_ok(tiny_manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "validate", str(tiny_manifest))
    assert code == 0 and "valid SAETrainingRun tiny" in out


BAD_DOCS = {
    "unknown_kind": (lambda d: d.update(kind="SAETrainRun"), "did you mean SAETrainingRun"),
    "unknown_field": (lambda d: d["spec"]["trainer"].update(batchSzie=4), "spec.trainer.batchSzie: unknown field; did you mean spec.trainer.batchSize?"),
    "wrong_type": (lambda d: d["spec"]["trainer"].update(lr="fast"), "spec.trainer.lr"),
    "topk_gt_dsae": (lambda d: d["spec"]["sae"].update(topK=500), "spec.sae.topK=500 exceeds dSae=128"),
    "missing_hook": (lambda d: d["spec"]["sae"].update(hookPointIn="blocks.7.hook_resid_post"), "blocks.7.hook_resid_post"),
    "missing_dataset": (lambda d: d["spec"]["dataset"].update(path="/nonexistent/corpus.jsonl"), "spec.dataset.path: /nonexistent/corpus.jsonl does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mutate, needle = BAD_DOCS[case]
    doc = tiny_run_doc(tmp_path)
    mutate(doc)
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    code, _, err = run_cli(capsys, "run", str(manifest), "--no-progress")
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert files_under(tmp_path / "out") == []


def test_malformed_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "run.yaml"
    p.write_text("kind: SAETrainingRun\nspec: {model: [\n")
    code, _, err = run_cli(capsys, "run", str(p))
    assert code == 2 and "malformed yaml" in err and err.count("\n") == 1


def test_output_not_writable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    doc = tiny_run_doc(tmp_path)
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    code, _, err = run_cli(capsys, "run", str(manifest), "--output", str(blocker / "sub"))
    assert code == 2
    assert "spec.output.storageUri" in err and "a-file" in err and err.count("\n") == 1
    assert blocker.read_text() == "x"


def test_set_rejects_bad_syntax(tiny_manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "validate", str(tiny_manifest), "--set", "spec.sae.topK")
    assert code == 2 and "expected dotted.path=value" in err


def test_two_runs_with_the_same_seed_give_identical_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tiny_run_doc(tmp_path)
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    weights = []
    for name in ("a", "b"):
        assert run_cli(capsys, "run", str(manifest), "--no-progress", "--output", str(tmp_path / name))[0] == 0
        weights.append(load_file(str(tmp_path / name / "sae.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert (weights[0][key] == weights[1][key]).all(), key


def test_cache_inspect_of_a_missing_cache_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "inspect", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nothing-here" in err[0]


def test_run_with_an_infinite_weight_decay_is_refused_at_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to exit 0 with NaN weights and NaN metrics."""
    for value in (".inf", ".nan"):
        manifest = tmp_path / "run.yaml"
        manifest.write_text(yaml.safe_dump(tiny_run_doc(tmp_path)).replace("trainer:\n", f"trainer:\n    weightDecay: {value}\n"))
        for command in ("validate", "run"):
            code, out, err = run_cli(capsys, command, str(manifest))
            assert code == 2 and out == "", (command, err)
            assert err.strip() == f"error: {manifest}: spec.trainer.weightDecay: Input should be a finite number"
        assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize(("output", "needle"), [
    ("../elsewhere", "'..' segment"), ("~/runs", "'~' is not expanded"), ("file:runs", "three slashes"),
    ("s3:///x", "no bucket"), ("gs://b/x", "unsupported scheme"),
])
def test_output_is_validated_like_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str,
                                            needle: str) -> None:
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(tiny_run_doc(tmp_path)))
    for command in ("validate", "render", "run"):
        code, out, err = run_cli(capsys, command, str(manifest), "--output", output)
        assert code == 2 and out == "" and err.count("\n") == 1, (command, err)
        assert "spec.output.storageUri" in err and needle in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "run.yaml"]


def test_render_output_sets_the_storage_of_runs_and_sweep_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tiny_run_doc(tmp_path)
    doc["spec"]["output"]["storageUri"] = "runs/tiny"  # fine for `saeops run`, not for a pod
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    assert run_cli(capsys, "validate", str(manifest))[0] == 0
    code, _, err = run_cli(capsys, "render", str(manifest))
    assert code == 2 and "spec.output.storageUri: 'runs/tiny' is a relative path" in err and "s3://" in err
    code, out, _ = run_cli(capsys, "render", str(manifest), "--output", "s3://team-bucket/runs/tiny")
    assert code == 0
    spec_json = next(o for o in yaml.safe_load_all(out) if o["kind"] == "ConfigMap")["data"]["spec.json"]
    assert json.loads(spec_json)["spec"]["output"]["storageUri"] == "s3://team-bucket/runs/tiny"
    sweep = {"apiVersion": "saeops.io/v1alpha1", "kind": "SAESweep", "metadata": {"name": "sw"},
             "spec": {"trialTemplate": doc["spec"], "parameters": [{"name": "sae.topK", "categorical": [2, 4]}]}}
    manifest.write_text(yaml.safe_dump(sweep))
    code, out, _ = run_cli(capsys, "render", str(manifest), "--output", "/mnt/shared/sweeps")
    assert code == 0
    trials = [o for o in yaml.safe_load_all(out) if o["kind"] == "SAETrainingRun"]  # then the group's children
    assert [t["spec"]["output"]["storageUri"] for t in trials] == ["/mnt/shared/sweeps/sw-0", "/mnt/shared/sweeps/sw-1"]


def test_two_nodes_without_parallelism_run_two_data_parallel_processes_here(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #16's seam: `numNodes: 2` alone used to mean data=1, and every pod failed at start.
    Now data defaults to numNodes x numProcPerNode / tensor, in the cluster and under `saeops run`
    (which starts that many processes under torchrun on this machine)."""
    import saeops.runtime.distributed.launcher as launcher

    launched: list[int] = []
    monkeypatch.setattr(launcher, "launch_torchrun", lambda res, procs, **kw: launched.append(procs) or 0)
    doc = tiny_run_doc(tmp_path)
    doc["spec"]["resources"] = {"numNodes": 2}
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    assert run_cli(capsys, "run", str(manifest), "--no-progress")[0] == 0
    assert launched == [2]
    doc["spec"]["parallelism"] = {"data": 1}
    manifest.write_text(yaml.safe_dump(doc))
    code, _, err = run_cli(capsys, "run", str(manifest))
    assert code == 2 and "resources.numNodes x resources.numProcPerNode = 2 x 1 = 2 processes" in err
