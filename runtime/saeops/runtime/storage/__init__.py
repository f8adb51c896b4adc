"""Object storage for artifacts, checkpoints and activation caches: `file://` and `s3://`.

    storage = open_storage("s3://bucket/runs/run1")      # or file:///data/run1, or /data/run1
    storage.check_writable()                               # fail before doing any work
    storage.put_json("config.json", {...})                 # every put is atomic
    ckpt = storage.child("checkpoints/step-100")
"""

from __future__ import annotations

from saeops.api.uris import URIError, check_endpoint_url, parse_storage_uri
from saeops.runtime.storage.base import KeyNotFound, Storage, StorageError, join_key, normalize_key
from saeops.runtime.storage.buffers import BufferPool
from saeops.runtime.storage.local import LocalStorage
from saeops.runtime.storage.s3 import S3Storage

__all__ = [
    "BufferPool",
    "KeyNotFound",
    "LocalStorage",
    "S3Storage",
    "Storage",
    "StorageError",
    "join_key",
    "normalize_key",
    "open_storage",
]


def open_storage(
    uri: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    path_style: bool | None = None,
    max_attempts: int = 5,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    multipart_threshold: int | None = None,
    multipart_chunksize: int | None = None,
    max_concurrency: int = 8,
) -> Storage:
    """Open `file:///abs/dir`, a plain local path, or `s3://bucket/prefix` (parsed by
    `saeops.api.uris.parse_storage_uri`; a URI it refuses raises `StorageError`).

    For S3, unset arguments come from the environment: `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`,
    `AWS_REGION`/`AWS_DEFAULT_REGION`, and credentials through boto3's usual chain
    (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...). The S3-only
    options (retries, timeouts, multipart sizes) are ignored for local storage.
    """
    # One parser for the spec, the operator and here: what `saeops validate` accepts opens, and
    # what it refuses (`~`, `..`, `file:relative`, `s3://` without a bucket) never does.
    try:
        loc = parse_storage_uri(uri)
        if endpoint_url is not None:
            check_endpoint_url(endpoint_url)
    except URIError as e:
        raise StorageError(str(e)) from None
    if loc.scheme == "s3":
        extra = {}
        if multipart_threshold is not None:
            extra["multipart_threshold"] = multipart_threshold
        if multipart_chunksize is not None:
            extra["multipart_chunksize"] = multipart_chunksize
        return S3Storage(
            loc.bucket, loc.path, endpoint_url=endpoint_url, region=region, path_style=path_style,
            max_attempts=max_attempts, connect_timeout=connect_timeout, read_timeout=read_timeout,
            max_concurrency=max_concurrency, **extra,
        )
    return LocalStorage(loc.path)
