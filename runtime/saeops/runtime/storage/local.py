"""`file://` storage: a directory on a local (or mounted) filesystem."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

import numpy

from saeops.runtime.storage.base import KeyNotFound, Storage, StorageError, normalize_key
from saeops.runtime.storage.buffers import BufferPool

__all__ = ["TMP_SUFFIX", "LocalStorage"]

# Temporary files carry this suffix until `os.replace` commits them; listings hide them.
TMP_SUFFIX = ".saeops-tmp"


def _reason(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on device"
    return e.strerror or str(e)


def _fsync_dir(path: Path) -> None:
    # Makes the rename durable; not every filesystem supports opening a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalStorage(Storage):
    """A directory; puts go to a temp file in the same directory, fsync, then `os.replace`."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        self._fsync = fsync

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    def url(self, key: str) -> str:
        return (self.root / normalize_key(key, allow_empty=True)).as_uri()

    def path(self, key: str) -> Path:
        """The local filesystem path of `key`."""
        return self.root / normalize_key(key)

    def child(self, prefix: str) -> LocalStorage:
        return LocalStorage(self.root / normalize_key(prefix, allow_empty=True), fsync=self._fsync)

    # -- writes --------------------------------------------------------------------------

    def _not_writable(self, key: str, e: OSError) -> StorageError:
        return StorageError(
            f"output location {self.uri} is not writable: cannot write {key!r}: {_reason(e)} "
            "(choose a writable location or fix its permissions)"
        )

    def _commit(self, key: str, write) -> None:  # write(fileobj) fills the temp file
        dest = self.path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=TMP_SUFFIX)
        except OSError as e:
            raise self._not_writable(key, e) from None
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                if self._fsync:
                    os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; match what a plain open() would give
            os.replace(tmp, dest)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._not_writable(key, e) from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self._fsync:
            _fsync_dir(dest.parent)

    def put_bytes(self, key: str, data: bytes | bytearray | memoryview) -> None:
        self._commit(key, lambda f: f.write(data))

    def put_file(self, key: str, local_path: str) -> None:
        try:
            src = open(local_path, "rb")  # noqa: SIM115 - closed below, after the commit
        except OSError as e:
            raise StorageError(f"cannot read local file {local_path}: {_reason(e)}") from None
        with src:
            self._commit(key, lambda f: shutil.copyfileobj(src, f, 16 << 20))

    # -- reads ---------------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        p = self.path(key)
        try:
            with open(p, "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyNotFound(f"{self.url(key)} does not exist") from None
        except OSError as e:
            raise StorageError(f"cannot read {self.url(key)}: {_reason(e)}") from None

    def get_buffer(self, key: str, pool: BufferPool | None = None) -> memoryview:
        p = self.path(key)
        try:
            with open(p, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                # numpy.empty skips the zero-fill a bytearray does: one memory pass fewer (~2x faster);
                # a pooled buffer also skips the page faults of a fresh mapping.
                buf = pool.take(size) if pool is not None else numpy.empty(size, dtype=numpy.uint8)
                view = memoryview(buf).cast("B")
                got = 0
                while got < size:  # readinto may return short reads
                    n = f.readinto(view[got:])
                    if not n:
                        raise StorageError(f"cannot read {self.url(key)}: file shrank while reading")
                    got += n
                return view
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyNotFound(f"{self.url(key)} does not exist") from None
        except OSError as e:
            raise StorageError(f"cannot read {self.url(key)}: {_reason(e)}") from None

    def get_file(self, key: str, local_path: str) -> None:
        data_path = self.path(key)
        if not data_path.is_file():
            raise KeyNotFound(f"{self.url(key)} does not exist")
        dest = Path(local_path)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=TMP_SUFFIX)
            os.close(fd)
            shutil.copyfile(data_path, tmp)
            os.replace(tmp, dest)
        except OSError as e:
            raise StorageError(f"cannot copy {self.url(key)} to {local_path}: {_reason(e)}") from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list_sizes(self, prefix: str = "") -> dict[str, int]:
        prefix = prefix.lstrip("/")
        # Only walk the deepest directory the prefix names, not the whole tree.
        base_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / normalize_key(base_key, allow_empty=True) if base_key else self.root
        out: dict[str, int] = {}
        if not base.is_dir():
            return out
        stack = [base]
        while stack:
            d = stack.pop()
            try:
                entries = list(os.scandir(d))
            except OSError as e:
                raise StorageError(f"cannot list {d.as_uri()}: {_reason(e)}") from None
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                    continue
                if entry.name.endswith(TMP_SUFFIX):
                    continue
                key = Path(entry.path).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    out[key] = entry.stat().st_size
        return out

    # -- deletes -------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(f"cannot delete {self.url(key)}: {_reason(e)}") from None

    def remove_temp_files(self, prefix: str = "", *, older_than: str | None = None) -> list[str]:
        """A put commits by renaming `.NAME.XXXXXXXX.saeops-tmp` (see `_commit`); a crash before the
        rename leaves that file, hidden from listings. Folders it leaves empty go too (not the root)."""
        prefix = prefix.lstrip("/")
        base_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / normalize_key(base_key, allow_empty=True) if base_key else self.root
        try:
            cutoff = os.stat(self.path(older_than)).st_mtime_ns if older_than else None
        except OSError:
            return []  # nothing to compare with: keep everything
        removed: list[str] = []
        emptied: set[Path] = set()  # folders that lost a file here: removed if that left them empty
        for dirpath, _dirs, files in os.walk(base, topdown=False):
            here = Path(dirpath)
            for name in files:
                if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
                    continue
                # mkstemp's random part holds no '.': `.{name}.{random}{TMP_SUFFIX}`
                key = (here / name[1:-len(TMP_SUFFIX)].rsplit(".", 1)[0]).relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                with contextlib.suppress(OSError):
                    if cutoff is None or os.stat(here / name).st_mtime_ns < cutoff:
                        os.unlink(here / name)
                        removed.append(key)
                        emptied.add(here)
            if here in emptied and here != self.root:
                with contextlib.suppress(OSError):  # only succeeds when empty
                    here.rmdir()
                    emptied.add(here.parent)
        return removed

    def delete_prefix(self, prefix: str) -> int:
        n = super().delete_prefix(prefix)
        # Prune directories left empty (bottom-up), never the root itself.
        base_key = prefix.strip("/").rsplit("/", 1)[0] if "/" in prefix.strip("/") else ""
        base = self.root / base_key if base_key else self.root
        if base.is_dir():
            for dirpath, _dirs, _files in os.walk(base, topdown=False):
                p = Path(dirpath)
                if p != self.root and p.relative_to(self.root).as_posix().startswith(prefix.strip("/")):
                    with contextlib.suppress(OSError):
                        p.rmdir()
        return n
