"""Activation caches: sharded safetensors + a manifest written last (model-agnostic: tensors in, tensors out).

    w = CacheWriter(storage, hooks, d_model, torch.float16, tokens_per_shard=65536, identity={...})
    skip = w.resume_point(); ...; w.write(acts, tokens, positions, documents); w.finalize()
    for batch in CacheReader(uri, hook, batch_size=4096, seed=0, rank=r, world_size=w): ...
"""

from saeops.runtime.cache.format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PROGRESS,
    CacheCorruptError,
    CacheError,
    CacheMismatchError,
    IncompleteCacheError,
    check_compatible,
    load_manifest,
    shard_key,
)
from saeops.runtime.cache.inspect import format_inspection, inspect_cache
from saeops.runtime.cache.reader import CacheBatch, CacheReader
from saeops.runtime.cache.writer import CacheWriter

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "PROGRESS",
    "CacheBatch",
    "CacheCorruptError",
    "CacheError",
    "CacheMismatchError",
    "CacheReader",
    "CacheWriter",
    "IncompleteCacheError",
    "check_compatible",
    "format_inspection",
    "inspect_cache",
    "load_manifest",
    "shard_key",
]
