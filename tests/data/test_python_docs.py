import json

from saeops.api.common import DatasetSpec
from saeops.runtime.data import extract_python_docs, load_text_dataset, python_docs_path
from saeops.runtime.data.python_docs import c_module_names, stdlib_source_files


def test_extraction_deterministic(tmp_path):
    sources = [p for p in stdlib_source_files() if p.name in ("argparse.py", "difflib.py", "textwrap.py")]
    assert len(sources) == 3
    a = extract_python_docs(tmp_path / "a.jsonl", sources=sources, c_modules=["math"], topics=False)
    b = extract_python_docs(tmp_path / "b.jsonl", sources=sources, c_modules=["math"], topics=False)
    assert a.read_bytes() == b.read_bytes()
    docs = [json.loads(line)["text"] for line in a.read_text().splitlines()]
    assert len(docs) > 50 and len(set(docs)) == len(docs)
    assert any("sequence" in d.lower() for d in docs) and all(len(d) >= 80 for d in docs)
    assert list(tmp_path.glob("*.tmp")) == []
    assert "math" in c_module_names() and "readline" not in c_module_names()
    assert not any("/test/" in p.as_posix() for p in stdlib_source_files())


def test_builtin_dataset_cached_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEOPS_DATA_DIR", str(tmp_path))
    ds = load_text_dataset(DatasetSpec(path="builtin:python-docs"))
    path = python_docs_path()
    assert path == tmp_path / "python-docs.jsonl" and path.exists()
    assert len(ds) > 2000 and sum(len(t) for t in ds["text"]) > 1_000_000  # 4771 docs, 2.2 M chars on 3.11
    mtime = path.stat().st_mtime_ns
    again = load_text_dataset(DatasetSpec(path="builtin:python-docs", max_documents=10))
    assert path.stat().st_mtime_ns == mtime and list(again["text"]) == list(ds["text"][:10])
