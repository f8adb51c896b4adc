"""Where models and data come from: the Hugging Face Hub (or a mirror), object storage, a local
directory (a mounted volume) or a pip package.

- `parse_location(raw, field)`: one parser for `model.path`, `model.tokenizer`, `dataset.path`;
- `resolve_source(raw, field, revision=, cache_dir=)`: a local directory with the files, fetched
  once per node into the cache (file lock; the others wait) and recorded by commit or sha256;
- `HubSettings.from_env()`: `HF_ENDPOINT`, `HF_HUB_OFFLINE`, `HF_TOKEN`, read when a run starts.

Errors are `SourceError` (a `SpecError`): one line naming the field, the location and the fix.
"""

from __future__ import annotations

from saeops.runtime.sources.location import Location, SourceError, is_remote, parse_location
from saeops.runtime.sources.resolve import ResolvedSource, hub_disabled, resolve_source

__all__ = [
    "Location",
    "ResolvedSource",
    "SourceError",
    "hub_disabled",
    "is_remote",
    "parse_location",
    "resolve_source",
]
