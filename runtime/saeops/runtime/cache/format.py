"""The activation cache format: layout, errors, manifest loading and compatibility checks.

Layout under the cache root (any `Storage`):

    {hook_point}/shard-{i:05d}.safetensors   tensors: activations (N, d_model) in the cache dtype,
                                              tokens (N,) int32, positions (N,) int32,
                                              documents (N,) int64
    _progress.json                            completed shards + checksums while generating
    manifest.json                             written LAST; its presence means "complete"

Each shard entry in the manifest (and in `_progress.json`) records two checksums of the shard's
bytes: `sha256` (content identity) and `xxh3_128` (a fast non-cryptographic checksum: sha256
caps read throughput on CPUs without SHA extensions). Readers verify `xxh3_128`, and `sha256`
for entries without it (caches written before it was added); see `verify_shard`. The field is
additive, so `FORMAT_VERSION` stays 1: older saeops versions read such caches via `sha256`.

All hook points are written in lockstep: shard i of every hook point holds the same tokens.
Every shard except the last one of each hook point holds exactly `tokens_per_shard` rows.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import torch
import xxhash

from saeops.runtime.storage import KeyNotFound, Storage

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "PROGRESS",
    "CacheCorruptError",
    "CacheError",
    "CacheMismatchError",
    "IncompleteCacheError",
    "check_compatible",
    "decode_shard",
    "dtype_from_name",
    "dtype_name",
    "load_manifest",
    "sha256_hex",
    "shard_key",
    "verify_shard",
    "xxh3_hex",
]

FORMAT = "saeops-activation-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "_progress.json"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class CacheError(Exception):
    """An activation cache cannot be used; the message is one line naming the cache and the fix."""


class IncompleteCacheError(CacheError):
    """The cache has no manifest: generation did not finish."""


class CacheCorruptError(CacheError):
    """A shard does not match the checksum or shape recorded in the manifest."""


class CacheMismatchError(CacheError):
    """The cache does not fit what the caller needs (hook point, d_model, dtype, settings)."""


def shard_key(hook_point: str, index: int) -> str:
    """Key of shard `index` of `hook_point`, relative to the cache root."""
    return f"{hook_point}/shard-{index:05d}.safetensors"


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """Hex SHA-256 of `data` (hashlib releases the GIL, so this parallelises across threads)."""
    return hashlib.sha256(data).hexdigest()


def xxh3_hex(data: bytes | bytearray | memoryview) -> str:
    """Hex XXH3-128 of `data`: a fast non-cryptographic checksum (xxhash releases the GIL too)."""
    return xxhash.xxh3_128(data).hexdigest()


# Checksums a shard entry may carry, fastest first: `verify_shard` checks the first one present.
_CHECKSUMS = (("xxh3_128", xxh3_hex), ("sha256", sha256_hex))


def verify_shard(entry: Mapping[str, Any], data: bytes | bytearray | memoryview, url: str) -> None:
    """Check `data` against the checksum a manifest/progress shard `entry` records.

    Uses `xxh3_128` when the entry has it, else `sha256` (entries written before `xxh3_128`
    existed). Raises `CacheCorruptError` naming `url` (the shard) on a mismatch, or when the
    entry records no checksum at all.
    """
    for algo, digest in _CHECKSUMS:
        expected = entry.get(algo)
        if expected is None:
            continue
        actual = digest(data)
        if actual != expected:
            raise CacheCorruptError(
                f"cache shard {url} is corrupt: {algo} {actual} but the manifest says {expected}; "
                "regenerate the cache"
            )
        return
    raise CacheCorruptError(
        f"cache shard {url} has no checksum in the manifest (expected {' or '.join(a for a, _ in _CHECKSUMS)}); "
        "regenerate the cache"
    )


_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def decode_shard(buf: bytearray | memoryview) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors blob as views into `buf` (no copy; the tensors keep `buf` alive).

    The format is an 8-byte little-endian header length, a JSON header with dtype, shape and
    byte offsets per tensor, then the data (8-byte aligned). Raises `ValueError` on anything
    malformed.
    """
    mv = memoryview(buf)
    if len(mv) < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(mv[:8], "little")
    if n <= 0 or 8 + n > len(mv):
        raise ValueError(f"bad header length {n}")
    header = json.loads(bytes(mv[8 : 8 + n]))
    base = 8 + n
    out: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES[info["dtype"]]
        begin, end = (int(x) for x in info["data_offsets"])
        shape = [int(x) for x in info["shape"]]
        count = math.prod(shape)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - begin != count * itemsize or base + end > len(mv):
            raise ValueError(f"tensor {name!r}: offsets {begin}..{end} do not fit shape {shape}")
        if count == 0:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        out[name] = torch.frombuffer(mv, dtype=dtype, count=count, offset=base + begin).view(shape)
    return out


def dtype_name(dtype: torch.dtype | str) -> str:
    """Canonical name of a cache dtype (`float32`, `float16`, `bfloat16`)."""
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if name not in _DTYPES:
            raise CacheMismatchError(f"unsupported cache dtype {dtype!r}: use one of {sorted(_DTYPES)}")
        return name
    for name, dt in _DTYPES.items():
        if dt == dtype:
            return name
    raise CacheMismatchError(f"unsupported cache dtype {dtype}: use one of {sorted(_DTYPES)}")


def dtype_from_name(name: str | torch.dtype) -> torch.dtype:
    """The torch dtype for a cache dtype name (or dtype)."""
    return _DTYPES[dtype_name(name)]


def load_manifest(storage: Storage) -> dict[str, Any]:
    """Read and validate `manifest.json`; a cache without one is incomplete and never read."""
    try:
        manifest = storage.get_json(MANIFEST)
    except KeyNotFound:
        if storage.list_sizes():
            raise IncompleteCacheError(
                f"cache {storage.uri} is incomplete (no manifest.json): generation did not finish; "
                "rerun the ActivationCache to resume"
            ) from None
        raise CacheError(f"no activation cache at {storage.uri} (nothing there): check the cache URI "
                         "(activations.cacheUri/cacheRef)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CacheError(f"{storage.url(MANIFEST)} is not a saeops activation cache manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CacheError(f"cache {storage.uri} has format_version {version}; this saeops reads "
                         f"{FORMAT_VERSION} (use a matching saeops version or regenerate the cache)")
    return manifest


def check_compatible(
    manifest: Mapping[str, Any],
    *,
    hook_point: str,
    d_model: int | None = None,
    dtype: torch.dtype | str | None = None,
    what: str = "spec.sae.dModel",
) -> None:
    """Raise `CacheMismatchError` naming both values when the cache does not fit the run.

    `what` names the caller's setting in the message (e.g. `spec.sae.dModel`).
    """
    hooks = list(manifest.get("hook_points", []))
    if hook_point not in hooks:
        raise CacheMismatchError(f"hook point {hook_point!r} is not in the cache (it has: {', '.join(hooks)})")
    cached = int(manifest["d_model"][hook_point])
    if d_model is not None and int(d_model) != cached:
        raise CacheMismatchError(f"{what}={d_model} but cache manifest d_model={cached} for hook {hook_point}")
    if dtype is not None and dtype_name(dtype) != manifest.get("dtype"):
        raise CacheMismatchError(
            f"requested dtype {dtype_name(dtype)} but cache manifest dtype={manifest.get('dtype')} for hook {hook_point}"
        )
