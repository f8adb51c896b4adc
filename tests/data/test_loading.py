import json

import pytest

from saeops.api.common import DatasetSpec
from saeops.runtime.data import DatasetError, load_text_dataset
from tests.data.conftest import make_docs

DOCS = make_docs(6)


def write_formats(tmp_path):
    import datasets

    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    (tmp_path / "a.json").write_text(json.dumps([{"text": t} for t in DOCS]))
    (tmp_path / "a.txt").write_text("\n".join(DOCS) + "\n")
    ds = datasets.Dataset.from_dict({"text": DOCS})
    ds.to_parquet(str(tmp_path / "a.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "validation": ds.select([0, 1])}).save_to_disk(str(tmp_path / "dict"))
    arrow_dir = tmp_path / "arrowdir"
    arrow_dir.mkdir()
    next((tmp_path / "saved").glob("*.arrow")).rename(arrow_dir / "data.arrow")
    jsonl_dir = tmp_path / "jsonldir"
    jsonl_dir.mkdir()
    (jsonl_dir / "part-0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS[:3]))
    (jsonl_dir / "part-1.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS[3:]))


def test_every_format_loads(tmp_path):
    write_formats(tmp_path)
    import datasets

    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "saved"))  # the arrow file moved out
    for name, fmt in [("a.jsonl", "auto"), ("a.json", "auto"), ("a.txt", "auto"), ("a.parquet", "auto"),
                      ("saved", "auto"), ("saved", "saved"), ("arrowdir", "auto"), ("jsonldir", "auto"),
                      ("a.jsonl", "json")]:
        ds = load_text_dataset(DatasetSpec(path=str(tmp_path / name), format=fmt))
        assert list(ds["text"]) == DOCS, name
    val = load_text_dataset(DatasetSpec(path=str(tmp_path / "dict"), split="validation"))
    assert list(val["text"]) == DOCS[:2]
    two = load_text_dataset(DatasetSpec(path=str(tmp_path / "a.jsonl"), max_documents=2))
    assert len(two) == 2


def test_errors(tmp_path):
    write_formats(tmp_path)
    with pytest.raises(DatasetError, match=r"^dataset.path: /no/such/file.jsonl does not exist$"):
        load_text_dataset(DatasetSpec(path="/no/such/file.jsonl"))
    with pytest.raises(DatasetError, match=r"^dataset.textField: column 'body' not in \['text'\]$"):
        load_text_dataset(DatasetSpec(path=str(tmp_path / "a.jsonl"), text_field="body"))
    (tmp_path / "x.csvx").write_text("a,b\n")
    with pytest.raises(DatasetError, match=r"^dataset.format: cannot infer"):
        load_text_dataset(DatasetSpec(path=str(tmp_path / "x.csvx")))
    with pytest.raises(DatasetError, match=r"^dataset.split: 'test' not in \['train', 'validation'\]$"):
        load_text_dataset(DatasetSpec(path=str(tmp_path / "dict"), split="test"))
    with pytest.raises(DatasetError, match=r"^dataset.path: unknown builtin"):
        load_text_dataset(DatasetSpec(path="builtin:nope"))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(DatasetError, match=r"^dataset.path: cannot read .* as json") as e:
        load_text_dataset(DatasetSpec(path=str(tmp_path / "bad.jsonl")))
    assert "\n" not in str(e.value)
