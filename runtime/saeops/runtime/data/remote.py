"""Streamed datasets: a hub dataset through `datasets` streaming, or shards under an `s3://` prefix
read with ranged GETs. Nothing is copied to local disk; every pass reads the rows in the same
order, so ranks that keep every world_size-th window read disjoint data, and a resumed run
that skips what it already consumed continues at the same place.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from saeops.api.common import DatasetSpec

log = logging.getLogger("saeops.data")
SHARD_EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow",
                    ".txt": "text", ".text": "text"}
READ_BLOCK = 8 << 20
"""Bytes per ranged GET of a line-oriented or arrow stream shard."""

_PINNED: dict[tuple[str, str, str | None], str] = {}
"""(endpoint, repo, requested revision) -> the commit a hub dataset is read at in this process."""


class StreamedDocuments:
    """Rows of a remote dataset, read in a fixed order on every iteration."""

    def __init__(self, rows: Callable[[], Iterable[dict[str, Any]]], where: str, identity: dict[str, Any]) -> None:
        self._rows = rows
        self.where = where
        self.identity = identity

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._rows())

    def __repr__(self) -> str:
        return f"StreamedDocuments({self.where})"


# ---- the hub ---------------------------------------------------------------------------------


def hub_commit(repo_id: str, spec: DatasetSpec, error: type[Exception]) -> str:
    """The commit `spec.revision` of the dataset repo resolves to, asked once per process (the
    identity recorded before reading and the rows read then name the same commit)."""
    from saeops.runtime.sources.hub import HubSettings, hub_error

    settings = HubSettings.from_env()
    key = (settings.endpoint, repo_id, spec.revision)
    if key in _PINNED:
        return _PINNED[key]
    what = f"hf://datasets/{repo_id}"
    if settings.offline:
        raise error(f"dataset.path: {what} is streamed from the hub, and HF_HUB_OFFLINE=1; put the files on a "
                    "volume (a local path) or in object storage (s3://) instead")
    from huggingface_hub import HfApi

    try:
        commit = HfApi(endpoint=settings.endpoint, token=settings.token).dataset_info(
            repo_id, revision=spec.revision).sha
    except Exception as e:
        raise hub_error(e, what, "spec.dataset.path", settings, spec.revision) from None
    assert commit is not None
    _PINNED[key] = commit
    return commit


def open_hub_dataset(repo_id: str, spec: DatasetSpec, error: type[Exception]) -> StreamedDocuments:
    """`datasets.load_dataset(..., streaming=True)` at a commit resolved once, up front, so every
    pass (and every rank started together) reads the same files."""
    from saeops.runtime.sources.hub import HubSettings, hub_error, sync_libraries

    field = "dataset.path"
    what = f"hf://datasets/{repo_id}"
    commit = hub_commit(repo_id, spec, error)
    settings = HubSettings.from_env()
    sync_libraries(settings)
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, name=spec.config, split=spec.split, revision=commit,
                                   streaming=True, token=settings.token)
    except ValueError as e:  # an unknown split or config
        raise error(f"dataset: {what}: {_first_line(e)}") from None
    except datasets.exceptions.DatasetNotFoundError as e:
        raise error(f"{field}: {what}: {_first_line(e)}") from None
    except Exception as e:
        raise hub_error(e, what, field, settings, spec.revision) from None
    log.info("streaming %s (config %s, split %s) at commit %s", what, spec.config, spec.split, commit)
    return StreamedDocuments(lambda: ds, what, {"revision": commit})


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---- object storage --------------------------------------------------------------------------


def _shard_format(keys: list[str], spec: DatasetSpec, uri: str, error: type[Exception]) -> str:
    if spec.format not in ("auto", "saved"):
        return spec.format
    found = sorted({SHARD_EXTENSIONS[k[k.rfind("."):].lower()] for k in keys if k[k.rfind("."):].lower() in SHARD_EXTENSIONS})
    if len(found) != 1:
        what = "no jsonl/json/parquet/arrow/text shards" if not found else f"mixed formats {found}"
        raise error(f"dataset.path: {uri} holds {what}; set dataset.format or fix the prefix")
    return found[0]


def _saved_shards(storage: Any, keys: list[str], split: str) -> list[str] | None:
    """A `save_to_disk` directory: its arrow files in `state.json`'s order (a DatasetDict: the
    split's sub-directory)."""
    for base in ("", f"{split}/"):
        if f"{base}state.json" in keys and (base or "dataset_info.json" in keys):
            state = json.loads(storage.get_bytes(f"{base}state.json"))
            return [base + f["filename"] for f in state.get("_data_files", [])]
    return None


def _json_rows(stream: io.BufferedReader) -> Iterator[dict[str, Any]]:
    for line in stream:
        if line.strip():
            yield json.loads(line)


def _text_rows(stream: io.BufferedReader) -> Iterator[dict[str, Any]]:
    for line in stream:
        yield {"text": line.decode("utf-8").rstrip("\n")}


def _parquet_rows(reader: Any, columns: list[str]) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(reader)
    present = [c for c in columns if c in pf.schema_arrow.names] or None
    for i in range(pf.num_row_groups):
        yield from pf.read_row_group(i, columns=present).to_pylist()


def _arrow_rows(stream: io.BufferedReader, columns: list[str]) -> Iterator[dict[str, Any]]:
    import pyarrow as pa

    try:
        reader = pa.ipc.open_stream(stream)
    except pa.ArrowInvalid:  # the random-access file format
        stream.seek(0)
        reader = pa.ipc.open_file(stream)
        batches: Iterable[Any] = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        batches = reader
    for batch in batches:
        names = [c for c in columns if c in batch.schema.names]
        yield from (batch.select(names) if names else batch).to_pylist()


def open_s3_dataset(uri: str, spec: DatasetSpec, error: type[Exception]) -> StreamedDocuments:
    """Shards below `uri` in key order (a `save_to_disk` directory: its own order), streamed."""
    from saeops.runtime.sources import SourceError
    from saeops.runtime.sources.s3 import RangeReader, list_objects, open_prefix
    from saeops.runtime.storage import StorageError

    field = "dataset.path"
    storage = open_prefix(uri, field)
    sizes = list_objects(storage, uri, field)
    if not sizes:
        raise error(f"{field}: {uri} holds no objects (a missing or empty prefix); upload the shards there")
    keys = sorted(sizes)
    saved = _saved_shards(storage, keys, spec.split)
    if saved is not None:
        fmt, shards = "arrow", saved
        missing = [k for k in shards if k not in sizes]
        if missing:
            raise error(f"{field}: {uri}/state.json lists {missing[0]}, which is not in the bucket")
    else:
        fmt = _shard_format(keys, spec, uri, error)
        exts = [e for e, f in SHARD_EXTENSIONS.items() if f == fmt]
        shards = [k for k in keys if k[k.rfind("."):].lower() in exts]
    columns = [spec.token_field or spec.text_field]

    def rows() -> Iterator[dict[str, Any]]:
        for key in shards:
            raw = RangeReader(storage, key, sizes[key])
            try:
                if fmt == "parquet":
                    yield from _parquet_rows(raw, columns)
                    continue
                stream = io.BufferedReader(raw, buffer_size=READ_BLOCK)
                if fmt == "json":
                    yield from _json_rows(stream)
                elif fmt == "text":
                    yield from _text_rows(stream)
                else:
                    yield from _arrow_rows(stream, columns)
            except SourceError:
                raise
            except StorageError as e:
                raise error(f"{field}: {e}") from None
            except (ValueError, OSError) as e:
                raise error(f"{field}: cannot read {storage.url(key)} as {fmt}: {_first_line(e)}") from None

    log.info("streaming %d %s shard(s) from %s", len(shards), fmt, uri)
    return StreamedDocuments(rows, uri, {"shards": len(shards)})
