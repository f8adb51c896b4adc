"""The storage interface shared by artifacts, checkpoints and activation caches.

Keys are `/`-separated paths relative to the storage root (like S3 keys). Every single
put is atomic: a reader sees either the old object or the whole new one, never a prefix.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saeops.runtime.storage.buffers import BufferPool

__all__ = ["KeyNotFound", "Storage", "StorageError", "join_key", "normalize_key"]


class StorageError(Exception):
    """A storage operation failed; the message is one line naming the URI and the fix."""


class KeyNotFound(StorageError):
    """The requested key does not exist."""


def normalize_key(key: str, *, allow_empty: bool = False) -> str:
    """Return `key` without leading/trailing slashes; reject `..` and empty components."""
    k = key.strip("/")
    if not k:
        if allow_empty:
            return ""
        raise StorageError(f"invalid storage key {key!r}: it must not be empty")
    parts = k.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid storage key {key!r}: empty, '.' or '..' path components are not allowed")
    return k


def join_key(prefix: str, key: str) -> str:
    """Join a (possibly empty) prefix and a key with exactly one `/`."""
    prefix = prefix.strip("/")
    key = key.strip("/")
    if not prefix:
        return key
    if not key:
        return prefix
    return posixpath.join(prefix, key)


class Storage(ABC):
    """A place to put and get objects by key: `file://` directories or `s3://` prefixes."""

    @property
    @abstractmethod
    def uri(self) -> str:
        """The root URI, e.g. `file:///data/run1` or `s3://bucket/runs/run1`."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Atomically write `data` at `key` (replacing any previous object)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read the whole object at `key`; raises `KeyNotFound` when absent."""

    def get_buffer(self, key: str, pool: BufferPool | None = None) -> bytearray | memoryview:
        """Like `get_bytes`, but a writable buffer that backends fill without an extra copy.

        Readers wrap it with `torch.frombuffer` instead of copying large objects again. With a
        `pool`, backends that know the size up front read into a reused buffer from it.
        """
        return bytearray(self.get_bytes(key))

    @abstractmethod
    def put_file(self, key: str, local_path: str) -> None:
        """Atomically upload the local file `local_path` to `key`."""

    @abstractmethod
    def get_file(self, key: str, local_path: str) -> None:
        """Download `key` into the local file `local_path` (written atomically)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists at `key`."""

    @abstractmethod
    def list_sizes(self, prefix: str = "") -> dict[str, int]:
        """Keys starting with `prefix` (relative to the root) mapped to their sizes in bytes."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete `key`; deleting a missing key is not an error."""

    @abstractmethod
    def child(self, prefix: str) -> Storage:
        """A storage rooted at `prefix` below this one (shares clients/connections)."""

    @abstractmethod
    def url(self, key: str) -> str:
        """The full URI of `key`, e.g. `s3://bucket/prefix/key`."""

    # -- helpers built on the primitives -------------------------------------------------

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys (relative to the root) that start with `prefix` (a string prefix, like S3)."""
        return sorted(self.list_sizes(prefix))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with `prefix`; returns how many were deleted."""
        keys = self.list(prefix)
        for k in keys:
            self.delete(k)
        return len(keys)

    def remove_temp_files(self, prefix: str = "", *, older_than: str | None = None) -> list[str]:
        """Delete what interrupted puts left behind for keys starting with `prefix`; returns the
        keys they were writing. `older_than`: only leftovers older than that key's object (a put
        in flight is newer). Backends whose puts leave nothing behind have none (S3: a put is
        whole or absent)."""
        return []

    def put_json(self, key: str, obj: Any) -> None:
        """Atomically write `obj` as indented JSON."""
        self.put_bytes(key, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())

    def get_json(self, key: str) -> Any:
        """Read a JSON object written by `put_json`."""
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except ValueError as e:
            raise StorageError(f"{self.url(key)} is not valid JSON ({e}); delete or rewrite it") from None

    def check_writable(self) -> None:
        """Probe the location (write then delete a small marker) so a run fails before doing work.

        Raises `StorageError` with one line naming the URI and the likely fix.
        """
        marker = f".saeops-write-probe-{uuid.uuid4().hex}"
        # The backends' errors already name the location and the fix (not writable, access
        # denied, missing bucket, endpoint unreachable), so they propagate unchanged.
        self.put_bytes(marker, b"ok")
        self.delete(marker)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"
