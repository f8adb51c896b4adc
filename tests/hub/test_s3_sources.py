"""Models and datasets in object storage (moto S3): a model directory copied once into the cache
and verified, dataset shards streamed with ranged reads in the order local files are read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saeops.api.common import DatasetSpec, ModelSpec
from saeops.runtime.data import DatasetError, load_text_dataset
from saeops.runtime.lm import load_language_model
from saeops.runtime.lm.checks import ModelLoadError
from saeops.runtime.sources import SourceError, resolve_source
from saeops.runtime.sources.s3 import MARKER
from tests.hub.conftest import upload_dir


def _texts(ds) -> list[str]:
    return [row["text"] for row in ds]


def test_s3_model_is_copied_once_verified_and_recopied_when_changed(
        s3_bucket: str, tiny_gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAEOPS_CACHE_DIR", str(tmp_path / "cache"))
    uri = upload_dir(s3_bucket, "models/tiny-gpt2", tiny_gpt2)
    first = resolve_source(uri, "spec.model.path")
    marker = json.loads((first.path / MARKER).read_text())
    assert set(marker["sizes"]) == {p.name for p in tiny_gpt2.iterdir()} and first.digest
    stamp = (first.path / "model.safetensors").stat().st_mtime_ns
    again = resolve_source(uri, "spec.model.path")
    assert again.digest == first.digest and (again.path / "model.safetensors").stat().st_mtime_ns == stamp
    lm = load_language_model(ModelSpec(name="tiny", path=uri), device="cpu")
    assert lm.identity()["source"] == "s3" and lm.identity()["sha256"] == first.digest
    # A changed object (another size) is noticed from the listing and copied again.
    from saeops.runtime.storage import open_storage

    open_storage(uri).put_bytes("config.json", (tiny_gpt2 / "config.json").read_bytes() + b"\n")
    changed = resolve_source(uri, "spec.model.path")
    assert changed.digest != first.digest
    assert (changed.path / "config.json").read_bytes() == (tiny_gpt2 / "config.json").read_bytes() + b"\n"


def test_s3_model_errors_are_one_line(s3_bucket: str, tiny_gpt2: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAEOPS_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SourceError) as e:
        resolve_source(f"{s3_bucket}/models/nothing-here", "spec.model.path")
    assert "holds no objects" in str(e.value) and "\n" not in str(e.value)
    partial = tmp_path / "partial"
    partial.mkdir()
    for p in tiny_gpt2.iterdir():
        if p.name != "config.json":
            (partial / p.name).write_bytes(p.read_bytes())
    uri = upload_dir(s3_bucket, "models/no-config", partial)
    with pytest.raises(ModelLoadError) as e:
        load_language_model(ModelSpec(name="tiny", path=uri), device="cpu")
    assert "has no config.json" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "arrow", "saved"])
def test_s3_dataset_shards_stream_in_local_order(fmt: str, s3_bucket: str, corpus: Path, tmp_path: Path) -> None:
    import datasets

    local = load_text_dataset(DatasetSpec(path=str(corpus)))
    expected = list(local["text"])
    src = tmp_path / fmt
    if fmt == "jsonl":
        src = corpus
    elif fmt == "parquet":
        src.mkdir()
        for i, part in enumerate((expected[:100], expected[100:])):
            datasets.Dataset.from_dict({"text": part}).to_parquet(str(src / f"part-{i}.parquet"))
    elif fmt == "arrow":
        datasets.Dataset.from_dict({"text": expected}).save_to_disk(str(tmp_path / "tmp-saved"))
        src.mkdir()
        for p in (tmp_path / "tmp-saved").glob("*.arrow"):
            (src / p.name).write_bytes(p.read_bytes())
    else:
        datasets.Dataset.from_dict({"text": expected}).save_to_disk(str(src), num_shards=3)
    uri = upload_dir(s3_bucket, f"data/{fmt}", src)
    streamed = load_text_dataset(DatasetSpec(path=uri))
    assert _texts(streamed) == expected
    assert _texts(streamed) == expected, "a second pass reads the same rows in the same order"
    two = load_text_dataset(DatasetSpec(path=uri, max_documents=2))
    assert _texts(two) == expected[:2]


def test_s3_dataset_errors(s3_bucket: str, corpus: Path) -> None:
    with pytest.raises(DatasetError, match="holds no objects"):
        load_text_dataset(DatasetSpec(path=f"{s3_bucket}/data/missing"))
    uri = upload_dir(s3_bucket, "data/docs", corpus)
    with pytest.raises(DatasetError, match=r"^dataset.textField: column 'body' not in \['id', 'text'\]"):
        list(load_text_dataset(DatasetSpec(path=uri, text_field="body")))
