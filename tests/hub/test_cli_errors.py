"""`saeops run` with a bad hub token, a missing revision, a missing file in S3 or an offline cache
miss: one `error:` line naming the model and the fix, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from saeops.cli import main
from tests.hub.conftest import upload_dir
from tests.hub.fake_hub import FakeHub


def manifest(tmp_path: Path, model: dict[str, Any], dataset: str) -> str:
    doc = {
        "apiVersion": "saeops.io/v1alpha1", "kind": "SAETrainingRun", "metadata": {"name": "bad"},
        "spec": {"model": {"name": "tiny", **model}, "dataset": {"path": dataset, "contextSize": 32},
                 "sae": {"type": "sae", "hookPointIn": "blocks.1.hook_resid_post", "dSae": 64,
                         "actFn": "topk", "topK": 4},
                 "trainer": {"totalTrainingTokens": 1024, "batchSize": 256, "progressBar": False},
                 "output": {"storageUri": str(tmp_path / "out")}},
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(doc))
    return str(path)


def run_cli(capsys: pytest.CaptureFixture[str], path: str) -> str:
    code = main(["run", path, "--no-progress"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def test_bad_token(hub_env: FakeHub, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    line = run_cli(capsys, manifest(tmp_path, {"path": "hf://org/private-gpt2"}, str(corpus)))
    assert "spec.model.path" in line and "rejected the token" in line
    assert not (tmp_path / "out" / "sae.safetensors").exists()


def test_missing_revision(hub_env: FakeHub, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = run_cli(capsys, manifest(tmp_path, {"path": "org/tiny-gpt2", "revision": "v9"}, str(corpus)))
    assert "revision 'v9' of hf://org/tiny-gpt2 does not exist" in line


def test_missing_file_in_s3(s3_bucket: str, tiny_gpt2: Path, corpus: Path, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SAEOPS_CACHE_DIR", str(tmp_path / "cache"))
    partial = tmp_path / "partial"
    partial.mkdir()
    for p in tiny_gpt2.iterdir():
        if not p.name.startswith("tokenizer"):
            (partial / p.name).write_bytes(p.read_bytes())
    uri = upload_dir(s3_bucket, "models/no-tokenizer", partial)
    line = run_cli(capsys, manifest(tmp_path, {"path": uri}, str(corpus)))
    assert "has no tokenizer files" in line and "s3" in line
    data = run_cli(capsys, manifest(tmp_path, {"path": str(tiny_gpt2)}, f"{s3_bucket}/data/absent"))
    assert "dataset.path" in data and "holds no objects" in data


def test_offline_cache_miss(hub_env: FakeHub, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub_env.requests)
    line = run_cli(capsys, manifest(tmp_path, {"path": "hf://org/tiny-gpt2"}, str(corpus)))
    assert "is not in the hub cache" in line and "HF_HUB_OFFLINE=1" in line
    assert len(hub_env.requests) == before, "offline: no request reaches the hub"
