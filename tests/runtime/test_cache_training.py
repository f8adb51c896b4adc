"""Generate an ActivationCache with `saeops run`, train from it (file:// and s3://), and compare
with training on the fly over the same tokens in the same order."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file

from saeops.cli import main
from tests.fixtures_s3 import s3_bucket, s3_server  # noqa: F401
from tests.runtime.conftest import tiny_run_doc

HOOK = "blocks.1.hook_resid_post"


def cache_doc(run: dict[str, Any], uri: str, tokens: int = 3072) -> dict[str, Any]:
    spec = run["spec"]
    return {
        "apiVersion": "saeops.io/v1alpha1",
        "kind": "ActivationCache",
        "metadata": {"name": "tiny-cache"},
        "spec": {"model": spec["model"], "dataset": spec["dataset"], "hookPoints": [HOOK],
                 "totalTokens": tokens, "dtype": "float32", "shardSize": 512, "output": {"storageUri": uri}},
    }


def run_manifest(tmp_path: Path, doc: dict[str, Any], name: str, *extra: str) -> int:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return main(["run", str(p), "--no-progress", *extra])


def ordered(doc: dict[str, Any], cache_uri: str | None, out: Path) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    d["spec"]["activations"] = {"shuffle": False, **({"cacheUri": cache_uri} if cache_uri else {})}
    d["spec"]["output"] = {"storageUri": str(out)}
    return d


def test_cache_then_train_equals_on_the_fly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tiny_run_doc(tmp_path)
    uri = str(tmp_path / "cache")
    assert run_manifest(tmp_path, cache_doc(run, uri), "cache") == 0
    assert "tokens" in capsys.readouterr().out
    assert (tmp_path / "cache" / "manifest.json").exists()
    # Rerunning a finished cache does no work and changes nothing.
    before = sorted(p.name for p in (tmp_path / "cache").rglob("*"))
    assert run_manifest(tmp_path, cache_doc(run, uri), "cache") == 0
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*")) == before

    assert run_manifest(tmp_path, ordered(run, uri, tmp_path / "from-cache"), "a") == 0
    assert run_manifest(tmp_path, ordered(run, None, tmp_path / "live"), "b") == 0
    a = load_file(str(tmp_path / "from-cache" / "sae.safetensors"))
    b = load_file(str(tmp_path / "live" / "sae.safetensors"))
    for key in a:
        assert (a[key] == b[key]).all(), key


def test_manifest_mismatch_names_both_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tiny_run_doc(tmp_path)
    uri = str(tmp_path / "cache")
    assert run_manifest(tmp_path, cache_doc(run, uri, tokens=1024), "cache") == 0
    doc = ordered(run, uri, tmp_path / "out")
    doc["spec"]["sae"]["dModel"] = 48
    assert run_manifest(tmp_path, doc, "bad") == 2
    err = capsys.readouterr().err
    assert "48" in err and "32" in err and "dModel" in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_missing_manifest_is_an_incomplete_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tiny_run_doc(tmp_path)
    uri = tmp_path / "cache"
    assert run_manifest(tmp_path, cache_doc(run, str(uri), tokens=1024), "cache") == 0
    (uri / "manifest.json").unlink()
    assert run_manifest(tmp_path, ordered(run, str(uri), tmp_path / "out"), "bad") == 2
    assert "incomplete" in capsys.readouterr().err


def test_s3_cache_trains_the_same_sae_as_file_cache(
    tmp_path: Path, s3_bucket: str, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    run = tiny_run_doc(tmp_path)
    s3_uri = f"{s3_bucket}/caches/tiny"
    assert run_manifest(tmp_path, cache_doc(run, s3_uri), "cache-s3") == 0
    assert run_manifest(tmp_path, cache_doc(run, str(tmp_path / "cache")), "cache-file") == 0
    train = copy.deepcopy(run)
    train["spec"]["activations"] = {"cacheUri": s3_uri}
    train["spec"]["output"] = {"storageUri": f"{s3_bucket}/runs/tiny"}
    assert run_manifest(tmp_path, train, "train-s3") == 0
    train["spec"]["activations"] = {"cacheUri": str(tmp_path / "cache")}
    train["spec"]["output"] = {"storageUri": str(tmp_path / "run-file")}
    assert run_manifest(tmp_path, train, "train-file") == 0
    from saeops.runtime.storage import open_storage

    s3_weights = tmp_path / "s3.safetensors"
    open_storage(f"{s3_bucket}/runs/tiny").get_file("sae.safetensors", str(s3_weights))
    a, b = load_file(str(s3_weights)), load_file(str(tmp_path / "run-file" / "sae.safetensors"))
    for key in a:
        assert (a[key] == b[key]).all(), key
