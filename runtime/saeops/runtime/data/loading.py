"""Read a text dataset from local disk (files, `save_to_disk` directories, builtin names)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from saeops.api.common import DatasetSpec

EXTENSIONS = {
    ".json": "json", ".jsonl": "json", ".txt": "text", ".text": "text",
    ".parquet": "parquet", ".arrow": "arrow",
}
BUILTINS = ("python-docs",)


class DatasetError(ValueError):
    """The dataset spec points at something that cannot be read (one-line message naming the field)."""


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


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


def load_text_dataset(spec: DatasetSpec) -> Any:
    """The spec's dataset as a `datasets.Dataset` holding `spec.text_field`, cut to `max_documents`.

    Raises DatasetError for a missing path, an unknown format or split, or a missing text column.
    """
    _offline()
    import datasets

    datasets.disable_progress_bars()
    if spec.path.startswith("builtin:"):
        ds = _load_builtin(spec.path.removeprefix("builtin:"))
    else:
        path = Path(spec.path).expanduser()
        if not path.exists():
            raise DatasetError(f"dataset.path: {spec.path} does not exist")
        fmt = _format_of(path, spec)
        try:
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
    if spec.text_field not in ds.column_names:
        raise DatasetError(f"dataset.textField: column {spec.text_field!r} not in {ds.column_names}")
    if spec.max_documents is not None and spec.max_documents < len(ds):
        ds = ds.select(range(spec.max_documents))
    return ds


def dataset_identity(spec: DatasetSpec) -> dict[str, Any]:
    """What identifies the text (recorded in artifacts and caches)."""
    return {
        "name": spec.name or spec.path,
        "path": spec.path,
        "split": spec.split,
        "textField": spec.text_field,
        "contextSize": spec.context_size,
        "prependBos": spec.prepend_bos,
        "maxDocuments": spec.max_documents,
    }
