"""Where a model or dataset lives: one parser for `model.path`, `model.tokenizer` and `dataset.path`.

Forms, checked in this order:

- `package:NAME`: a pip package shipping the files (models only);
- `builtin:NAME`: a dataset saeops makes itself (datasets only);
- `hf://ORG/NAME` (datasets also `hf://datasets/ORG/NAME`): the Hugging Face Hub, or the mirror
  `HF_ENDPOINT` names;
- `s3://bucket/prefix` (parsed by `saeops.api.uris`, the one storage-URI parser);
- `file:///abs/dir` or a path that exists on this machine (a mounted volume);
- a bare `ORG/NAME` that does not exist locally: a hub id (as `transformers` reads it).

Anything else is an error naming the field and the accepted forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from saeops.api import SpecError
from saeops.api.common import HUB_REPO_ID, HUB_REPO_PART
from saeops.api.uris import URIError, parse_storage_uri

REPO_ID = HUB_REPO_ID
BARE_REPO_ID = re.compile(rf"^{HUB_REPO_PART}/{HUB_REPO_PART}$")
"""A bare `ORG/NAME` (the organisation required: a bare `NAME` is a relative path)."""

Kind = Literal["package", "builtin", "hub", "s3", "local"]


class SourceError(SpecError):
    """A model or dataset that cannot be fetched or read: one line naming it and the fix."""


@dataclass(frozen=True)
class Location:
    """A parsed location. `ref` is the package name, builtin name, repo id, `s3://` URI or the
    local path, depending on `kind`."""

    kind: Kind
    ref: str
    raw: str

    def __str__(self) -> str:
        return self.raw


def _repo_id(rest: str, raw: str, field: str) -> str:
    if not REPO_ID.match(rest) or "--" in rest or ".." in rest:
        raise SourceError(f"{field}: {raw!r} is not a hub repo id (hf://ORG/NAME)")
    return rest


def parse_location(raw: str, field: str, *, dataset: bool = False) -> Location:
    """Parse `raw`, the value of `field` (named in errors); `dataset` allows the dataset forms."""
    if not raw or raw != raw.strip():
        raise SourceError(f"{field}: {raw!r} is empty or has surrounding whitespace")
    if raw.startswith("package:"):
        if dataset:
            raise SourceError(f"{field}: package: locations are for models; for data use a path, hf:// or s3://")
        return Location("package", raw.removeprefix("package:"), raw)
    if raw.startswith("builtin:"):
        if not dataset:
            raise SourceError(f"{field}: builtin: locations are datasets, not models")
        return Location("builtin", raw.removeprefix("builtin:"), raw)
    if raw.startswith("hf://"):
        rest = raw.removeprefix("hf://").strip("/")
        if rest.startswith("datasets/"):
            if not dataset:
                raise SourceError(f"{field}: {raw!r} names a dataset repo; a model is hf://ORG/NAME")
            rest = rest.removeprefix("datasets/")
        elif rest.startswith("models/"):
            rest = rest.removeprefix("models/")
        elif rest.startswith("spaces/"):
            raise SourceError(f"{field}: {raw!r} is a Space, not a model or dataset")
        return Location("hub", _repo_id(rest, raw, field), raw)
    if raw.startswith("s3://"):
        try:
            uri = parse_storage_uri(raw)
        except URIError as e:
            raise SourceError(f"{field}: {e}") from None
        if not uri.path:
            raise SourceError(f"{field}: {raw!r} names a whole bucket; add the prefix of the files")
        return Location("s3", str(uri), raw)
    if raw.startswith("file://"):
        try:
            uri = parse_storage_uri(raw)
        except URIError as e:
            raise SourceError(f"{field}: {e}") from None
        return Location("local", uri.path, raw)
    if "://" in raw:
        scheme = raw.split("://", 1)[0]
        raise SourceError(f"{field}: unsupported scheme {scheme!r} in {raw!r}; use a local path, "
                          "hf://ORG/NAME or s3://bucket/prefix")
    path = Path(raw).expanduser()
    if path.exists():
        return Location("local", str(path), raw)
    if BARE_REPO_ID.match(raw) and "--" not in raw and ".." not in raw:
        return Location("hub", raw, raw)
    raise SourceError(f"{field}: {raw} does not exist")


def is_remote(raw: str | None, *, dataset: bool = False) -> bool:
    """Whether `raw` is fetched from the hub or S3 (a bad location counts as not remote)."""
    if not raw:
        return False
    try:
        return parse_location(raw, "location", dataset=dataset).kind in ("hub", "s3")
    except SourceError:
        return False
