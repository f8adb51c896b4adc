"""The download cache: where fetched models live, and the lock that makes one process per node
download while the others wait.

The lock is a file lock (`flock`) next to the files: the kernel drops it when its holder dies,
so a killed download never leaves the others waiting on a stale lock. On a volume shared by
several pods it also serialises the pods, where the filesystem supports locks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from saeops.runtime.sources.location import SourceError

log = logging.getLogger("saeops.sources")
WAIT_ENV = "SAEOPS_DOWNLOAD_WAIT_S"
DEFAULT_WAIT_S = 6 * 3600.0


def explicit_root(spec_dir: str | None) -> Path | None:
    """`model.cacheDir`, else `$SAEOPS_CACHE_DIR` (the operator's cache volume), else None."""
    root = spec_dir or os.environ.get("SAEOPS_CACHE_DIR")
    return Path(root).expanduser() if root else None


def s3_cache_dir(spec_dir: str | None) -> Path:
    """Where `s3://` models are copied: `<root>/s3`, default `~/.cache/saeops/s3`."""
    root = explicit_root(spec_dir) or Path.home() / ".cache" / "saeops"
    return root / "s3"


def hub_cache_dir(spec_dir: str | None) -> Path:
    """The Hugging Face cache for hub models: `<root>/hub` when a root is set, else the library's
    own default (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`)."""
    root = explicit_root(spec_dir)
    if root is not None:
        return root / "hub"
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


@contextmanager
def download_lock(target: Path, what: str) -> Iterator[None]:
    """Hold `<target>.lock` while fetching `what` into `target`; others wait (logged once)."""
    from filelock import FileLock, Timeout

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SourceError(f"cannot create the cache directory {target.parent} for {what}: "
                          f"{e.strerror or e}; set model.cacheDir to a writable directory") from None
    lock = FileLock(str(target) + ".lock")
    wait = float(os.environ.get(WAIT_ENV) or DEFAULT_WAIT_S)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another process is fetching %s into %s; waiting for it", what, target)
        t0 = time.monotonic()
        try:
            lock.acquire(timeout=wait)
        except Timeout:
            raise SourceError(f"waited {wait:.0f} s for another process fetching {what} into {target}; "
                              f"raise {WAIT_ENV} for very large models") from None
        log.info("%s is in place after %.1f s", what, time.monotonic() - t0)
    try:
        yield
    finally:
        lock.release()
