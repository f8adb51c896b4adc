"""Reading an activation cache: shuffled, rank-split, read-ahead, verified, resumable batches."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from saeops.runtime.cache.format import (
    CacheCorruptError,
    CacheError,
    check_compatible,
    decode_shard,
    dtype_from_name,
    load_manifest,
    verify_shard,
)
from saeops.runtime.storage import BufferPool, KeyNotFound, Storage, open_storage

__all__ = ["CacheBatch", "CacheReader"]


@dataclass
class CacheBatch:
    """`batch_size` rows of a cache.

    `activations` is the first (or only) requested hook point; `by_hook` holds all of them,
    row-aligned. `index` is the data cursor: `CacheReader(..., start_batch=batch.index + 1)`
    continues right after this batch.
    """

    activations: torch.Tensor
    tokens: torch.Tensor
    positions: torch.Tensor
    documents: torch.Tensor
    index: int
    epoch: int
    by_hook: dict[str, torch.Tensor] = field(default_factory=dict)


def _rng(*seed: int) -> np.random.Generator:
    # numpy's SeedSequence gives the same stream on every platform and version of torch.
    return np.random.default_rng([int(s) & 0xFFFFFFFF for s in seed])


class CacheReader:
    """Iterate over a cache in batches of exactly `batch_size` rows.

    Determinism: the order depends only on (seed, rank, world_size, shuffle, batch_size). Each
    epoch permutes the shards with `seed`; rank r takes shards r, r+world_size, ... of that
    permutation; rows within each shard are permuted with a generator seeded by
    (seed, epoch, shard). Every rank yields the same number of batches per epoch (the
    smallest rank's rows // batch_size), so data-parallel steps line up; the remainder of
    an epoch is dropped. `start_batch` resumes at a batch cursor, skipping whole shards
    without reading them. `epochs=None` repeats forever.

    Read-ahead: up to `read_ahead` shards are downloaded, checksummed (`verify`: the manifest's
    `xxh3_128`, or `sha256` for caches written before it existed), parsed and
    permuted on worker threads while the caller consumes the current one. Shard buffers (reads and
    shuffled copies) come from a pool of at most `2 * read_ahead + 4` and are reused once no
    batch references them: fresh shard-sized allocations are page-faulted on every shard.
    """

    def __init__(
        self,
        storage_or_uri: Storage | str,
        hook_point: str | Sequence[str],
        *,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        read_ahead: int = 4,
        verify: bool = True,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        shuffle: bool = True,
        epochs: int | None = 1,
    ) -> None:
        self.storage = open_storage(storage_or_uri) if isinstance(storage_or_uri, str) else storage_or_uri
        self.manifest: dict[str, Any] = load_manifest(self.storage)
        self.hook_points = [hook_point] if isinstance(hook_point, str) else list(hook_point)
        if not self.hook_points:
            raise CacheError("CacheReader needs at least one hook point")
        for h in self.hook_points:
            check_compatible(self.manifest, hook_point=h)
        if batch_size <= 0:
            raise CacheError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise CacheError(f"rank {rank} is outside world_size {world_size}")
        if epochs is not None and epochs < 1:
            raise CacheError(f"epochs must be >= 1 or None, got {epochs}")
        self.shards: dict[str, list[dict[str, Any]]] = {h: self.manifest["shards"][h] for h in self.hook_points}
        self.num_shards = len(self.shards[self.hook_points[0]])
        if world_size > self.num_shards:
            raise CacheError(
                f"cache {self.storage.uri} has {self.num_shards} shards, fewer than world_size={world_size} "
                "ranks; regenerate it with a smaller spec.shardSize or use fewer ranks"
            )
        self._sizes = [int(e["num_tokens"]) for e in self.shards[self.hook_points[0]]]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.start_batch = int(start_batch)
        self.read_ahead = max(1, int(read_ahead))
        self.verify = verify
        self.device = torch.device(device)
        self.cache_dtype = dtype_from_name(self.manifest["dtype"])
        self.dtype = dtype
        self.shuffle = shuffle
        self.epochs = epochs
        # Shard-sized buffers (reads and shuffled copies) reused once their batches are gone.
        self._pool = BufferPool(max_buffers=2 * self.read_ahead + 4)
        if self.batches_per_epoch(0) == 0:
            raise CacheError(
                f"cache {self.storage.uri} gives rank {rank} fewer than batch_size={batch_size} tokens "
                f"({self.manifest['total_tokens']} tokens over {world_size} ranks); use a smaller batch size"
            )

    # -- the plan --------------------------------------------------------------------------

    def shard_order(self, epoch: int, rank: int | None = None) -> list[int]:
        """Shard indices read by `rank` (default: this reader's) in `epoch`, in order."""
        r = self.rank if rank is None else rank
        order = _rng(self.seed, epoch).permutation(self.num_shards).tolist() if self.shuffle else list(
            range(self.num_shards))
        return order[r :: self.world_size]

    def batches_per_epoch(self, epoch: int = 0) -> int:
        """Batches every rank yields in `epoch` (equal across ranks)."""
        rows = min(sum(self._sizes[i] for i in self.shard_order(epoch, r)) for r in range(self.world_size))
        return rows // self.batch_size

    def __len__(self) -> int:
        """Batches left to yield from `start_batch` (finite `epochs` only)."""
        if self.epochs is None:
            raise TypeError("an endless CacheReader (epochs=None) has no length")
        total = sum(self.batches_per_epoch(e) for e in range(self.epochs))
        return max(0, total - self.start_batch)

    # -- loading (worker threads) ----------------------------------------------------------

    def _load(self, shard: int, epoch: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        perm: torch.Tensor | None = None
        n = self._sizes[shard]
        if self.shuffle:
            perm = torch.from_numpy(_rng(self.seed, epoch, shard).permutation(n))
        for j, h in enumerate(self.hook_points):
            entry = self.shards[h][shard]
            try:
                data = self.storage.get_buffer(entry["key"], self._pool)
            except KeyNotFound:
                raise CacheCorruptError(
                    f"cache shard {self.storage.url(entry['key'])} listed in the manifest is missing; "
                    "regenerate the cache"
                ) from None
            if self.verify:
                verify_shard(entry, data, self.storage.url(entry["key"]))  # xxh3_128, else sha256
            try:
                tensors = decode_shard(data)  # views into `data`: no copy
            except Exception as e:
                raise CacheCorruptError(
                    f"cache shard {self.storage.url(entry['key'])} cannot be parsed ({type(e).__name__}); "
                    "regenerate the cache"
                ) from None
            del data
            absent = [k for k in ("activations", "tokens", "positions", "documents") if k not in tensors]
            if absent:
                raise CacheCorruptError(
                    f"cache shard {self.storage.url(entry['key'])} lacks tensors {absent}; regenerate the cache"
                )
            acts = tensors["activations"]
            d = int(self.manifest["d_model"][h])
            if tuple(acts.shape) != (n, d) or any(tensors[k].shape != (n,) for k in ("tokens", "positions", "documents")):
                raise CacheCorruptError(
                    f"cache shard {self.storage.url(entry['key'])} has activations of shape {tuple(acts.shape)} "
                    f"(or token fields of another length), manifest says ({n}, {d}); regenerate the cache"
                )
            if perm is not None:
                acts = self._permuted(acts, perm)
            if self.dtype is not None and acts.dtype != self.dtype:
                acts = acts.to(self.dtype)
            out[h] = acts
            if j == 0:
                for k in ("tokens", "positions", "documents"):
                    t = tensors[k]
                    out[k] = t.index_select(0, perm) if perm is not None else t
        if self.device.type == "cuda":
            out = {k: v.pin_memory() for k, v in out.items()}
        return out

    def _permuted(self, t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        """`t[perm]` into a pooled buffer (a fresh one would be page-faulted on every shard)."""
        buf = self._pool.take(t.numel() * t.element_size())
        out = torch.from_numpy(buf).view(t.dtype).view(t.shape)
        return torch.index_select(t, 0, perm, out=out)

    # -- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[CacheBatch]:
        """Yield batches from `start_batch` on (a fresh, deterministic pass each call)."""
        epoch, skip = 0, self.start_batch
        while self.epochs is None or epoch < self.epochs:
            bpe = self.batches_per_epoch(epoch)
            if skip < bpe:
                break
            skip -= bpe
            epoch += 1
        else:
            return
        pool = ThreadPoolExecutor(max_workers=self.read_ahead, thread_name_prefix="cache-reader")
        try:
            index = self.start_batch
            while self.epochs is None or epoch < self.epochs:
                for batch in self._epoch(pool, epoch, skip, index):
                    yield batch
                    index += 1
                epoch += 1
                skip = 0
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _epoch(self, pool: ThreadPoolExecutor, epoch: int, first_batch: int, index: int) -> Iterator[CacheBatch]:
        bs = self.batch_size
        bpe = self.batches_per_epoch(epoch)
        order = self.shard_order(epoch)
        # Find the shard holding row first_batch * bs of this rank's stream; skip the earlier ones unread.
        start_row, end_row = first_batch * bs, bpe * bs
        pos, k = 0, 0
        while pos + self._sizes[order[k]] <= start_row:
            pos += self._sizes[order[k]]
            k += 1
        offset = start_row - pos
        needed: list[int] = []
        covered = pos
        for s in order[k:]:  # shards beyond the last full batch are never read
            if covered >= end_row:
                break
            needed.append(s)
            covered += self._sizes[s]
        futures: deque[Future[dict[str, torch.Tensor]]] = deque()
        nxt = 0

        def fill() -> None:
            nonlocal nxt
            while nxt < len(needed) and len(futures) < self.read_ahead:
                futures.append(pool.submit(self._load, needed[nxt], epoch))
                nxt += 1

        keys = [*self.hook_points, "tokens", "positions", "documents"]
        pending: list[dict[str, torch.Tensor]] = []
        have = 0
        produced = first_batch
        fill()
        while produced < bpe:
            while have < bs:
                if not futures:  # cannot happen: `needed` covers bpe * bs rows
                    raise CacheError(f"cache {self.storage.uri}: ran out of rows (manifest inconsistent)")
                part = futures.popleft().result()  # StorageError/CacheCorruptError propagate as is
                fill()
                if offset:
                    part = {kk: v[offset:] for kk, v in part.items()}
                    offset = 0
                pending.append(part)
                have += int(part["tokens"].shape[0])
            if int(pending[0]["tokens"].shape[0]) >= bs:
                # Common case: the batch lies inside one shard -> a view, no copy.
                rows = {kk: pending[0][kk][:bs] for kk in keys}
                rest = {kk: pending[0][kk][bs:] for kk in keys}
                pending = ([rest] if rest["tokens"].shape[0] else []) + pending[1:]
            else:
                rows, pending = self._split(pending, keys, bs)
            have -= bs
            nb = self.device.type == "cuda"
            rows = {kk: v.to(self.device, non_blocking=nb) for kk, v in rows.items()}
            by_hook = {h: rows[h] for h in self.hook_points}
            yield CacheBatch(
                activations=by_hook[self.hook_points[0]], tokens=rows["tokens"], positions=rows["positions"],
                documents=rows["documents"], index=index, epoch=epoch, by_hook=by_hook,
            )
            index += 1
            produced += 1

    @staticmethod
    def _split(
        pending: list[dict[str, torch.Tensor]], keys: list[str], bs: int
    ) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
        """Take `bs` rows spanning several pending parts (a batch crossing a shard boundary)."""
        take: list[dict[str, torch.Tensor]] = []
        got = 0
        while got < bs:
            part = pending.pop(0)
            n = int(part["tokens"].shape[0])
            need = bs - got
            if n <= need:
                take.append(part)
                got += n
            else:
                take.append({kk: part[kk][:need] for kk in keys})
                pending.insert(0, {kk: part[kk][need:] for kk in keys})
                got += need
        return {kk: torch.cat([p[kk] for p in take]) for kk in keys}, pending
