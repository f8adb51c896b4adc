"""Object storage as a source: a model directory copied once per node, and ranged reads of
dataset shards (nothing copied).

Credentials and endpoint are the output's: in pods the operator sets `AWS_*` from
`output.secretRef`/`output.endpointUrl`; locally boto3's usual chain and `AWS_ENDPOINT_URL`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from saeops.runtime.sources.cache import download_lock, s3_cache_dir
from saeops.runtime.sources.location import SourceError

log = logging.getLogger("saeops.sources")
MARKER = ".saeops-source.json"
"""Written last into a copied directory: the listing it was made from and each file's sha256."""


def open_prefix(uri: str, field: str) -> Any:
    """The storage rooted at `uri` (errors become SourceError naming `field`)."""
    from saeops.runtime.storage import StorageError, open_storage

    try:
        return open_storage(uri)
    except StorageError as e:
        raise SourceError(f"{field}: {e}") from None


def list_objects(storage: Any, uri: str, field: str) -> dict[str, int]:
    """Keys below the prefix (folder markers and saeops' own files left out) and their sizes."""
    from saeops.runtime.storage import StorageError

    try:
        listing = storage.list_sizes("")
    except StorageError as e:
        raise SourceError(f"{field}: {e}") from None
    return {k: n for k, n in sorted(listing.items()) if k and not k.endswith("/") and not k.startswith(".saeops")}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _intact(target: Path, listing: dict[str, int]) -> dict[str, Any] | None:
    """The marker of a complete earlier copy of exactly `listing`, else None."""
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("sizes") != listing:
        return None
    if any(not (target / k).is_file() or (target / k).stat().st_size != n for k, n in listing.items()):
        return None
    return marker


def fetch_s3_prefix(uri: str, cache_dir: str | None, field: str) -> tuple[Path, str]:
    """Copy every object under `uri` into `<cache>/s3/<bucket>/<prefix>`; returns (folder, digest).

    Reused when the listing (keys and sizes) still matches the marker of an earlier copy; sizes
    are verified after each download and a sha256 per file is recorded. The digest (a sha256
    over the files' hashes) identifies the content in caches and artifacts.
    """
    from saeops.runtime.storage import StorageError

    storage = open_prefix(uri, field)
    listing = list_objects(storage, uri, field)
    if not listing:
        raise SourceError(f"{field}: {uri} holds no objects (a missing or empty prefix); upload the saved "
                          "model directory there (config.json, weights, tokenizer files)")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    target = s3_cache_dir(cache_dir) / bucket / prefix
    with download_lock(target, uri):
        marker = _intact(target, listing)
        if marker is None:
            log.info("copying %s (%d files, %.1f MB) to %s", uri, len(listing), sum(listing.values()) / 1e6, target)
            hashes: dict[str, str] = {}
            (target / MARKER).unlink(missing_ok=True)
            for key, size in listing.items():
                dest = target / key
                tmp = dest.with_name(dest.name + ".saeops-partial")
                try:
                    storage.get_file(key, str(tmp))
                except StorageError as e:
                    raise SourceError(f"{field}: {e}") from None
                got = tmp.stat().st_size
                if got != size:
                    tmp.unlink(missing_ok=True)
                    raise SourceError(f"{field}: {storage.url(key)} changed while it was copied "
                                      f"({got} of {size} bytes); retry")
                os.replace(tmp, dest)
                hashes[key] = _sha256(dest)
            for stale in (p for p in target.rglob("*") if p.is_file() and p.name != MARKER):
                if stale.relative_to(target).as_posix() not in listing and not stale.name.endswith(".lock"):
                    stale.unlink()
            marker = {"uri": uri, "sizes": listing, "sha256": hashes}
            tmp_marker = target / (MARKER + ".tmp")
            tmp_marker.write_text(json.dumps(marker, indent=1))
            os.replace(tmp_marker, target / MARKER)
    digest = hashlib.sha256(json.dumps(sorted(marker["sha256"].items())).encode()).hexdigest()
    return target, digest


class RangeReader(io.RawIOBase):
    """A seekable read-only file over one object, read with ranged GETs (wrap it in
    `io.BufferedReader` for line reading; pyarrow reads parquet footers and row groups with it)."""

    def __init__(self, storage: Any, key: str, size: int) -> None:
        super().__init__()
        self.storage, self.key, self.size = storage, key, size
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self.pos)
        if n <= 0:
            return 0
        data = read_range(self.storage, self.key, self.pos, n)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def read_range(storage: Any, key: str, start: int, length: int) -> bytes:
    """Bytes [start, start + length) of `key`: `Storage.get_range` where the backend has it, a
    ranged GET on S3, a seek on local files."""
    from saeops.runtime.storage import S3Storage, StorageError, join_key

    get_range = getattr(storage, "get_range", None)
    if callable(get_range):
        return get_range(key, start, length)
    if isinstance(storage, S3Storage):
        try:
            resp = storage.client.get_object(Bucket=storage.bucket, Key=join_key(storage.prefix, key),
                                             Range=f"bytes={start}-{start + length - 1}")
            return resp["Body"].read()
        except Exception as e:
            translate = getattr(storage, "_not_found", None)
            if translate is None:
                raise StorageError(f"{storage.url(key)}: S3 read failed: {type(e).__name__}") from None
            raise translate(e, key, "read") from None
    with open(storage.path(key), "rb") as f:
        f.seek(start)
        return f.read(length)
