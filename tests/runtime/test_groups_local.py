"""Groups end to end: `saeops run sweep.yaml` (grouped trials, a diverging one, kill -9 and
resume) and the pod side (`entrypoint --group DIR`, its termination message, labelled metrics)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from saeops.runtime import entrypoint
from saeops.runtime.launch import MAX_TERMINATION_MESSAGE, group_message
from saeops.runtime.telemetry import RunMetrics
from tests.runtime.conftest import tiny_run_doc

TIMING = {"seconds", "tokens_per_second"}


def sweep_doc(tmp_path: Path, out: Path, parameters: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    template = tiny_run_doc(tmp_path)["spec"]
    template["output"] = {"storageUri": str(out)}
    return {"apiVersion": "saeops.io/v1alpha1", "kind": "SAESweep", "metadata": {"name": "grp"},
            "spec": {"trialTemplate": template, "parameters": parameters, "maxTrials": 8,
                     "maxFailedTrials": 2, **spec}}


def run_cli(tmp_path: Path, doc: dict[str, Any], name: str, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return subprocess.run([sys.executable, "-m", "saeops.cli", "run", str(path), "--no-progress"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})})


def untimed(final: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in final.items() if k not in TIMING}


def test_a_sweep_groups_its_trials_and_a_diverging_trial_fails_alone(tmp_path: Path) -> None:
    # float16 dictionaries on this tiny model overflow to NaN within a few steps; float32 trains.
    params = [{"name": "sae.topK", "categorical": [4, 8]}, {"name": "sae.dtype", "categorical": ["float32", "float16"]}]
    doc = sweep_doc(tmp_path, tmp_path / "grouped", params)
    res = run_cli(tmp_path, doc, "grouped")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "4 trials, 2 failed" in res.stdout
    summary = json.loads((tmp_path / "grouped" / "sweep.json").read_text())
    trials = {t["name"]: t for t in summary["trials"]}
    assert list(trials) == ["grp-0", "grp-1", "grp-2", "grp-3"]
    for name in ("grp-1", "grp-3"):  # float16
        assert trials[name]["error"].startswith("error: Diverged: the loss is "), trials[name]
        assert f"{name}: " in res.stdout and "FAILED: error: Diverged" in res.stdout
    for name in ("grp-0", "grp-2"):
        assert "error" not in trials[name] and (tmp_path / "grouped" / name / "metrics.json").exists()
    assert summary["best_trial"] in ("grp-0", "grp-2")
    assert (tmp_path / "grouped" / "pareto.png").exists()

    # grouping off: one trial after another, the same per-trial results.
    doc["spec"]["trialTemplate"]["output"] = {"storageUri": str(tmp_path / "alone")}
    doc["spec"]["grouping"] = {"enabled": False}
    res = run_cli(tmp_path, doc, "alone")
    assert res.returncode == 0, res.stderr[-3000:]
    alone = {t["name"]: t for t in json.loads((tmp_path / "alone" / "sweep.json").read_text())["trials"]}
    for name, t in trials.items():
        if "error" in t:
            assert alone[name]["error"] == t["error"]
        else:
            assert untimed(alone[name]["final"]) == untimed(t["final"])


def test_kill_9_during_a_group_then_rerun_resumes_every_member_exactly(tmp_path: Path) -> None:
    # Two trials with different checkpoint intervals: killed after step 5, one has saved step 4,
    # the other step 3; the rerun's stream starts at 3 and the first member catches up.
    params = [{"name": "sae.topK", "categorical": [4, 8]},
              {"name": "trainer.checkpointInterval", "categorical": [2, 3]}]
    def doc_for(out: Path) -> dict[str, Any]:
        d = sweep_doc(tmp_path, out, copy.deepcopy(params))
        d["spec"]["maxTrials"] = 2  # (4, 2) and (4, 3)
        return d

    killed = run_cli(tmp_path, doc_for(tmp_path / "killed"), "killed", env={"SAEOPS_FAULT": "kill@step:step=5"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    steps = [json.loads((tmp_path / "killed" / n / "checkpoints" / "latest.json").read_text())["step"]
             for n in ("grp-0", "grp-1")]
    assert steps == [4, 3]
    assert not (tmp_path / "killed" / "grp-0" / "metrics.json").exists()
    rerun = run_cli(tmp_path, doc_for(tmp_path / "killed"), "killed")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from checkpoint at step 4" in rerun.stderr and "resumed from checkpoint at step 3" in rerun.stderr

    whole = run_cli(tmp_path, doc_for(tmp_path / "whole"), "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    for name in ("grp-0", "grp-1"):
        a = load_file(str(tmp_path / "killed" / name / "sae.safetensors"))
        b = load_file(str(tmp_path / "whole" / name / "sae.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        ma = json.loads((tmp_path / "killed" / name / "metrics.json").read_text())
        mb = json.loads((tmp_path / "whole" / name / "metrics.json").read_text())
        assert untimed(ma["final"]) == untimed(mb["final"])


def test_entrypoint_group_writes_one_entry_per_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tiny_run_doc(tmp_path)
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    for i, (name, extra) in enumerate([("good", {}), ("bad", {"dtype": "float16"})]):
        doc = copy.deepcopy(base)
        doc["metadata"] = {"name": name, "namespace": "team", "uid": f"uid-{i}"}
        doc["spec"]["sae"].update(extra)
        doc["spec"]["trainer"]["lr"] = 10.0 if name == "bad" else 1e-3
        doc["spec"]["output"] = {"storageUri": str(tmp_path / "out" / name)}
        (spec_dir / f"member-{i:03d}.json").write_text(json.dumps(doc))
    log = tmp_path / "termination-log"
    monkeypatch.setenv("SAEOPS_TERMINATION_LOG", str(log))
    assert entrypoint.main(["--group", str(spec_dir), "--no-progress"]) == 0
    message = json.loads(log.read_text())
    assert set(message) == {"members"} and list(message["members"]) == ["good", "bad"]
    good = message["members"]["good"]
    assert set(good["final"]) == {"l0", "explained_variance", "mse", "dead_fraction", "dense_fraction",
                                  "tokens", "seconds"}
    assert good["lastCheckpoint"] == (tmp_path / "out" / "good" / "checkpoints" / "step-00000008" / "manifest.json").as_uri()
    assert message["members"]["bad"]["error"].startswith("error: Diverged")

    # Members of different streams are refused as bad input (exit 2, one line), nothing trained.
    doc = json.loads((spec_dir / "member-001.json").read_text())
    doc["spec"]["trainer"]["seed"] = 7
    (spec_dir / "member-001.json").write_text(json.dumps(doc))
    assert entrypoint.main(["--group", str(spec_dir), "--no-progress"]) == 2
    assert log.read_text().startswith("error: --group") and "one activation stream" in log.read_text()


def test_the_group_message_fits_kubernetes_for_eight_members() -> None:
    final = {"l0": 31.999999, "explained_variance": 0.812345678, "mse": 0.00123456789, "dead_fraction": 0.0,
             "dense_fraction": 0.015625, "tokens": 100000.0, "seconds": 1234.56789}
    uri = "s3://saeops-artifacts/sweeps/" + "x" * 120 + "/checkpoints/step-00000024/manifest.json"
    entries: dict[str, dict[str, Any]] = {}
    for i in range(8):
        name = f"{'a-very-long-sweep-name-that-uses-the-whole-dns-label-budget'[:60]}-{i}"
        entries[name] = ({"error": "error: Diverged: " + "the loss is nan " * 30} if i % 3 == 0
                         else {"final": final, "lastCheckpoint": uri})
    message = group_message(entries)
    text = json.dumps(message, separators=(",", ":"))
    assert len(text.encode()) <= MAX_TERMINATION_MESSAGE
    assert list(message["members"]) == list(entries)
    kept = message["members"][next(k for k, e in entries.items() if "final" in e)]
    assert kept["final"]["explained_variance"] == 0.812346 and kept["final"]["seconds"] == 1234.57
    # A realistic group keeps its checkpoint URIs.
    short = {f"minilm-l3-grid-{i}": {"final": final, "lastCheckpoint": "s3://b/sweeps/minilm-l3-grid/"
                                     f"minilm-l3-grid-{i}/checkpoints/step-00000024/manifest.json"} for i in range(8)}
    assert all(e["lastCheckpoint"] for e in group_message(short)["members"].values())


def test_metrics_of_a_group_carry_each_member_s_run_label() -> None:
    metrics = RunMetrics("grp-0", "team")
    for name, l0 in (("grp-0", 4.0), ("grp-1", 8.0)):
        metrics.member(name, "team").update("blocks.1.hook_resid_post", {"l0": l0, "tokens_processed": 512})
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    assert 'saeops_l0{hook_point="blocks.1.hook_resid_post",namespace="team",run="grp-0"} 4.0' in text
    assert 'saeops_l0{hook_point="blocks.1.hook_resid_post",namespace="team",run="grp-1"} 8.0' in text


def test_minilm_one_sae_per_layer_reads_all_six_layers_in_one_forward_per_batch(
        tmp_path: Path, forwards: Counter[tuple[str, ...]]) -> None:
    from saeops.api import SAETrainingRun, load_resource
    from saeops.runtime.train.job import TrainingJob

    seen = forwards
    run = load_resource(str(Path(__file__).resolve().parents[2] / "examples" / "per-layer.yaml"))
    assert isinstance(run, SAETrainingRun)
    doc = run.model_dump(by_alias=True, exclude_none=True, mode="json")
    spec = doc["spec"]
    spec["dataset"]["contextSize"] = 64
    spec["model"]["batchSize"] = 8
    spec["activations"] = {"bufferSize": 2048}
    spec["initializer"] = {"initTokens": 1024}
    spec["trainer"].update(totalTrainingTokens=4096, batchSize=1024, logFrequency=2, checkpointInterval=0,
                           progressBar=False)
    spec["output"] = {"storageUri": str(tmp_path / "layers")}
    hooks = spec["sae"]["perHookPoint"]
    assert hooks == [f"blocks.{i}.hook_resid_post" for i in range(6)]
    job = TrainingJob(SAETrainingRun.model_validate(doc), progress=False)
    members = job.run_members()
    assert list(members) == hooks and all(m.error is None for m in members.values())
    assert job.group.forwards == 4  # stream batches: one per step for all six SAEs
    assert set(seen) == {tuple(hooks)}  # every forward reads the six layers at once
    together = sum(seen.values())
    for hook in hooks:  # per-layer metrics, each in its own output
        final = json.loads((tmp_path / "layers" / hook / "metrics.json").read_text())["final"]
        assert final["tokens"] == 4096 and 0 < final["l0"] <= 32

    # One layer alone costs as many forwards as all six together.
    seen.clear()
    one = copy.deepcopy(doc)
    one["spec"]["sae"].pop("perHookPoint")
    one["spec"]["sae"]["hookPointIn"] = hooks[5]
    one["spec"]["output"] = {"storageUri": str(tmp_path / "one")}
    TrainingJob(SAETrainingRun.model_validate(one), progress=False).run_job()
    assert sum(seen.values()) == together
