"""Read a dataset: local files, `save_to_disk` directories and builtins here; hub datasets and
`s3://` shards are streamed (`remote.py`). Every form iterates in one fixed order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from saeops.api.common import DatasetSpec
from saeops.runtime.sources import SourceError, hub_disabled, parse_location

EXTENSIONS = {
    ".json": "json", ".jsonl": "json", ".txt": "text", ".text": "text",
    ".parquet": "parquet", ".arrow": "arrow",
}
BUILTINS = ("python-docs",)


class DatasetError(ValueError):
    """The dataset spec points at something that cannot be read (one-line message naming the field)."""


def _is_saved(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_dict.json").exists()
        or ((path / "dataset_info.json").exists() and (path / "state.json").exists())
    )


def _format_of(path: Path, spec: DatasetSpec) -> str:
    if spec.format != "auto":
        return spec.format
    if _is_saved(path):
        return "saved"
    if path.is_file():
        fmt = EXTENSIONS.get(path.suffix.lower())
        if fmt is None:
            raise DatasetError(f"dataset.format: cannot infer the format of {path} "
                               f"(extension not in {sorted(EXTENSIONS)}); set format")
        return fmt
    found = sorted({EXTENSIONS[p.suffix.lower()] for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS})
    if len(found) != 1:
        what = "no json/jsonl/text/parquet/arrow files" if not found else f"mixed formats {found}"
        raise DatasetError(f"dataset.format: {path} holds {what}; set format")
    return found[0]


def _files(path: Path, fmt: str) -> list[str]:
    if path.is_file():
        return [str(path)]
    exts = [e for e, f in EXTENSIONS.items() if f == fmt]
    files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in exts)
    if not files:
        raise DatasetError(f"dataset.path: {path} holds no {fmt} files")
    return files


def _load_builtin(name: str) -> Any:
    if name != "python-docs":
        raise DatasetError(f"dataset.path: unknown builtin {name!r} (available: {list(BUILTINS)})")
    from datasets import Dataset

    from saeops.runtime.data.python_docs import ensure_python_docs

    # Read by hand instead of load_dataset("json"): instant, and no copy in the HF cache dir.
    with open(ensure_python_docs(), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    return Dataset.from_dict({"text": texts})


def _load_local(spec: DatasetSpec, path: Path) -> Any:
    import datasets

    fmt = _format_of(path, spec)
    try:
        with hub_disabled():
            if fmt == "saved":
                if not _is_saved(path):
                    raise DatasetError(f"dataset.path: {path} is not a directory written by save_to_disk")
                ds = datasets.load_from_disk(str(path))
            else:
                ds = datasets.load_dataset(fmt, data_files={"train": _files(path, fmt)})
    except DatasetError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"dataset.path: cannot read {spec.path} as {fmt}: {first}") from None
    if isinstance(ds, datasets.DatasetDict):
        if spec.split not in ds:
            raise DatasetError(f"dataset.split: {spec.split!r} not in {sorted(ds)}")
        ds = ds[spec.split]
    return ds


def load_text_dataset(spec: DatasetSpec) -> Any:
    """The spec's documents, cut to `max_documents`: a `datasets.Dataset` for local data and
    builtins, a `StreamedDocuments` (rows in a fixed order) for hub datasets and `s3://` shards.

    Raises DatasetError for a missing path, an unknown format or split, or a missing column
    (for streamed data, the column is checked on the first row, when reading starts).
    """
    import datasets

    datasets.disable_progress_bars()
    try:
        loc = parse_location(spec.path, "dataset.path", dataset=True)
    except SourceError as e:
        raise DatasetError(str(e)) from None
    if loc.kind == "builtin":
        ds = _load_builtin(loc.ref)
    elif loc.kind == "hub":
        from saeops.runtime.data.remote import open_hub_dataset

        return _limited(open_hub_dataset(loc.ref, spec, DatasetError), spec)
    elif loc.kind == "s3":
        from saeops.runtime.data.remote import open_s3_dataset

        return _limited(open_s3_dataset(loc.ref, spec, DatasetError), spec)
    else:
        ds = _load_local(spec, Path(loc.ref))
    field = spec.token_field or spec.text_field
    if field not in ds.column_names:
        which = "tokenField" if spec.token_field else "textField"
        raise DatasetError(f"dataset.{which}: column {field!r} not in {ds.column_names}")
    if spec.max_documents is not None and spec.max_documents < len(ds):
        ds = ds.select(range(spec.max_documents))
    return ds


def _limited(docs: Any, spec: DatasetSpec) -> Any:
    """Streamed rows cut to `max_documents`, each checked for the column (named in the error)."""
    from saeops.runtime.data.remote import StreamedDocuments

    field = spec.token_field or spec.text_field
    which = "tokenField" if spec.token_field else "textField"
    def rows() -> Iterator[dict[str, Any]]:
        it = iter(docs)
        if spec.max_documents is not None:
            it = islice(it, spec.max_documents)
        for row in it:
            if field not in row:
                raise DatasetError(f"dataset.{which}: column {field!r} not in {sorted(row)} ({docs.where})")
            yield row

    return StreamedDocuments(rows, docs.where, docs.identity)


def iter_documents(documents: Any, spec: DatasetSpec) -> Iterator[tuple[int, Any]]:
    """(index, text or token ids) of each document, in dataset order, from any loaded form."""
    field = spec.token_field or spec.text_field
    import datasets

    if isinstance(documents, datasets.Dataset):
        step = 1024
        for start in range(0, len(documents), step):
            for i, value in enumerate(documents[start:start + step][field]):
                yield start + i, value
        return
    for i, row in enumerate(documents):
        yield i, row[field]


def dataset_identity(spec: DatasetSpec) -> dict[str, Any]:
    """What identifies the text (recorded in artifacts and caches); a hub dataset's commit once read."""
    from saeops.runtime.data.remote import hub_commit

    ident: dict[str, Any] = {
        "name": spec.name or spec.path,
        "path": spec.path,
        "split": spec.split,
        "textField": spec.text_field,
        "contextSize": spec.context_size,
        "prependBos": spec.prepend_bos,
        "maxDocuments": spec.max_documents,
    }
    for key, value in (("config", spec.config), ("revision", spec.revision), ("tokenField", spec.token_field),
                       ("tokenizedWith", spec.tokenized_with)):
        if value is not None:
            ident[key] = value
    try:
        loc = parse_location(spec.path, "dataset.path", dataset=True)
    except SourceError:  # reported when the data is opened
        return ident
    if loc.kind == "hub":  # the commit read (resolved once per process, before reading)
        ident["commit"] = hub_commit(loc.ref, spec, DatasetError)
    return ident
