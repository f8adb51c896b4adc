"""Writing an activation cache: buffered shards, atomic puts, resumable, manifest last."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import safetensors.torch
import torch

from saeops.runtime.cache.format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PROGRESS,
    CacheCorruptError,
    CacheError,
    CacheMismatchError,
    dtype_from_name,
    dtype_name,
    sha256_hex,
    shard_key,
    verify_shard,
    xxh3_hex,
)
from saeops.runtime.storage import KeyNotFound, Storage, open_storage

__all__ = ["CacheWriter"]

_VERIFY_THREADS = 4
_SETTINGS = ("format_version", "hook_points", "d_model", "dtype", "tokens_per_shard", "context_size", "seed",
             "identity")


def _check_hook_name(h: str) -> None:
    if not h or "/" in h or h.startswith(".") or h.startswith("_"):
        raise CacheError(f"invalid hook point name {h!r} for a cache folder (no '/', not starting with '.' or '_')")


class CacheWriter:
    """Writes activations for several hook points into a sharded cache.

    Usage (the generator owns the language model; this class only sees tensors)::

        w = CacheWriter(storage, ["blocks.3.hook_resid_post"], {"blocks.3.hook_resid_post": 512},
                        torch.float16, tokens_per_shard=65536, identity={"model": {...}, "dataset": {...}})
        skip = w.resume_point()          # tokens already stored and verified: skip them
        for acts, tokens, positions, documents in generate(skip_tokens=skip):
            w.write(acts, tokens, positions, documents)
        w.finalize()                     # last shard, then manifest.json

    Each shard is a single atomic put; `_progress.json` (also atomic) records the completed shard
    indices and their checksums after every shard, so a rerun after a crash resumes at the last
    complete shard and never exposes a half-written one. Serialisation, hashing and uploads run
    on one background thread (in order) so generation overlaps with I/O; their errors surface
    on the next `write`/`finalize`.
    """

    def __init__(
        self,
        storage: Storage | str,
        hook_points: Sequence[str],
        d_model: Mapping[str, int] | int,
        dtype: torch.dtype | str,
        tokens_per_shard: int,
        identity: Mapping[str, Any] | None = None,
        *,
        context_size: int | None = None,
        seed: int | None = None,
        verify_resume: Literal["none", "last", "all"] = "all",
        background: bool = True,
        max_pending: int = 2,
    ) -> None:
        self.storage = open_storage(storage) if isinstance(storage, str) else storage
        self.hook_points = list(hook_points)
        if not self.hook_points or len(set(self.hook_points)) != len(self.hook_points):
            raise CacheError(f"hook_points must be a non-empty list of distinct names, got {self.hook_points}")
        for h in self.hook_points:
            _check_hook_name(h)
        dm = {h: int(d_model) for h in self.hook_points} if isinstance(d_model, int) else dict(d_model)
        missing = [h for h in self.hook_points if h not in dm]
        if missing:
            raise CacheError(f"d_model is missing for hook points {missing}")
        self.d_model = {h: int(dm[h]) for h in self.hook_points}
        self.dtype = dtype_from_name(dtype)
        if tokens_per_shard <= 0:
            raise CacheError(f"tokens_per_shard must be positive, got {tokens_per_shard}")
        self.tokens_per_shard = int(tokens_per_shard)
        ident = dict(identity or {})
        self.settings: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "hook_points": self.hook_points,
            "d_model": self.d_model,
            "dtype": dtype_name(self.dtype),
            "tokens_per_shard": self.tokens_per_shard,
            "context_size": context_size if context_size is not None else ident.get("context_size"),
            "seed": seed if seed is not None else ident.get("seed"),
            "identity": ident,
        }
        self.verify_resume = verify_resume
        self._max_pending = max(1, max_pending)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-writer") if background else None
        self._pending: deque[Future[None]] = deque()
        self._buffers: dict[str, list[torch.Tensor]] = {k: [] for k in (*self.hook_points, "tokens", "positions",
                                                                         "documents")}
        self._buffered = 0
        self._shards: dict[str, list[dict[str, Any]]] = {h: [] for h in self.hook_points}
        self._resumed: int | None = None
        self._next_index = 0  # next shard index; owned by the calling thread
        self._written_since_resume = 0
        self.complete = False
        self.manifest: dict[str, Any] | None = None
        self._closed = False

    # -- resume ----------------------------------------------------------------------------

    def _mismatch(self, recorded: Mapping[str, Any], what: str) -> CacheMismatchError:
        diffs = [f"{k}: {recorded.get(k)!r} there vs {self.settings[k]!r} now" for k in _SETTINGS
                 if recorded.get(k) != self.settings[k]]
        return CacheMismatchError(
            f"{what} at {self.storage.uri} was made with different settings ({'; '.join(diffs)}); "
            "delete it or choose another storage URI"
        )

    def resume_point(self) -> int:
        """Tokens already stored and verified (whole shards); the generator skips this many.

        Reads `_progress.json`, checks every recorded shard exists with the recorded size (one
        listing) and, per `verify_resume`, re-hashes every (`"all"`, the default: bit rot in any
        shard would otherwise end up in the finished cache's manifest) or only the last
        (`"last"`) recorded shard (`verify_shard`: `xxh3_128`, or `sha256` for shards recorded
        without it). Shards from the first bad one on are rewritten. A complete cache (manifest present, same
        settings) returns its total and makes `write` an error.
        """
        if self._resumed is not None:
            return self._resumed
        try:
            manifest = self.storage.get_json(MANIFEST)
        except KeyNotFound:
            manifest = None
        if manifest is not None:
            if manifest.get("format") != FORMAT or any(manifest.get(k) != self.settings[k] for k in _SETTINGS):
                raise self._mismatch(manifest, "a complete cache")
            self.complete = True
            self.manifest = manifest
            self._resumed = int(manifest["total_tokens"])
            return self._resumed
        try:
            progress = self.storage.get_json(PROGRESS)
        except KeyNotFound:
            progress = None
        done = 0
        if progress is not None:
            if any(progress.get(k) != self.settings[k] for k in _SETTINGS):
                raise self._mismatch(progress, "an unfinished cache")
            recorded = progress.get("shards", {})
            n = min(len(recorded.get(h, [])) for h in self.hook_points)
            sizes = self.storage.list_sizes()
            while done < n and all(sizes.get(recorded[h][done]["key"]) == recorded[h][done]["bytes"]
                                   for h in self.hook_points):
                done += 1
            if done and self.verify_resume != "none":
                done = self._first_corrupt(recorded, 0 if self.verify_resume == "all" else done - 1, done)
            self._shards = {h: list(recorded[h][:done]) for h in self.hook_points}
        self._next_index = done
        self._resumed = done * self.tokens_per_shard
        return self._resumed

    def _first_corrupt(self, recorded: Mapping[str, list[dict[str, Any]]], first: int, end: int) -> int:
        """Index of the first shard in [first, end) whose bytes fail their recorded checksum (any
        hook point), else `end`. Shards are read and hashed on a few threads (xxhash and file
        reads release the GIL), in order, so at most `_VERIFY_THREADS` shards are in memory."""

        def ok(i: int) -> bool:
            try:
                for h in self.hook_points:
                    e = recorded[h][i]
                    verify_shard(e, self.storage.get_buffer(e["key"]), self.storage.url(e["key"]))
            except (CacheCorruptError, KeyNotFound):
                return False
            return True

        pending: deque[tuple[int, Future[bool]]] = deque()
        nxt = first
        with ThreadPoolExecutor(max_workers=_VERIFY_THREADS, thread_name_prefix="cache-verify") as pool:
            while pending or nxt < end:
                while nxt < end and len(pending) < _VERIFY_THREADS:
                    pending.append((nxt, pool.submit(ok, nxt)))
                    nxt += 1
                i, verdict = pending.popleft()
                if not verdict.result():
                    for _, later in pending:
                        later.cancel()
                    return i
        return end

    @property
    def tokens_written(self) -> int:
        """Tokens handed to `write` so far, including the resumed ones (buffered rows too)."""
        return self.resume_point() + self._written_since_resume

    # -- writing ---------------------------------------------------------------------------

    def write(
        self,
        activations: Mapping[str, torch.Tensor],
        tokens: torch.Tensor,
        positions: torch.Tensor,
        documents: torch.Tensor,
    ) -> None:
        """Buffer N rows (`activations[h]` of shape (N, d_model[h]); the others (N,)); flush full shards."""
        if self._closed:
            raise CacheError("CacheWriter is closed")
        self.resume_point()
        if self.complete:
            raise CacheError(f"cache {self.storage.uri} is already complete; nothing more can be written")
        self._raise_failed()
        if set(activations) != set(self.hook_points):
            raise CacheError(f"write() needs activations for exactly {self.hook_points}, got {sorted(activations)}")
        n = int(tokens.shape[0])
        for name, t in (("tokens", tokens), ("positions", positions), ("documents", documents)):
            if t.dim() != 1 or t.shape[0] != n:
                raise CacheError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
        for h in self.hook_points:
            a = activations[h]
            if a.dim() != 2 or a.shape[0] != n or a.shape[1] != self.d_model[h]:
                raise CacheMismatchError(
                    f"activations for {h} have shape {tuple(a.shape)}, expected ({n}, {self.d_model[h]}) "
                    f"(cache d_model={self.d_model[h]})"
                )
        if n == 0:
            return
        for h in self.hook_points:
            self._buffers[h].append(activations[h].detach().to("cpu", self.dtype))
        self._buffers["tokens"].append(tokens.detach().to("cpu", torch.int32))
        self._buffers["positions"].append(positions.detach().to("cpu", torch.int32))
        self._buffers["documents"].append(documents.detach().to("cpu", torch.int64))
        self._buffered += n
        self._written_since_resume += n
        while self._buffered >= self.tokens_per_shard:
            self._emit(self._take(self.tokens_per_shard), record_progress=True)

    def _take(self, rows: int) -> dict[str, torch.Tensor]:
        """Remove the first `rows` buffered rows and return them as contiguous tensors."""
        out: dict[str, torch.Tensor] = {}
        for k, parts in self._buffers.items():
            full = parts[0] if len(parts) == 1 else torch.cat(parts)
            out[k] = full[:rows].contiguous()
            rest = full[rows:]
            self._buffers[k] = [rest] if rest.shape[0] else []
        self._buffered -= rows
        return out

    def _emit(self, rows: dict[str, torch.Tensor], *, record_progress: bool) -> None:
        index = self._next_index
        self._next_index += 1
        if self._pool is None:
            self._write_shard(index, rows, record_progress)
            return
        while len(self._pending) >= self._max_pending:  # bound memory held by queued shards
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write_shard, index, rows, record_progress))

    def _write_shard(self, index: int, rows: dict[str, torch.Tensor], record_progress: bool) -> None:
        entries: dict[str, dict[str, Any]] = {}
        for h in self.hook_points:
            data = safetensors.torch.save(
                {"activations": rows[h], "tokens": rows["tokens"], "positions": rows["positions"],
                 "documents": rows["documents"]},
                # One metadata key: safetensors writes a multi-key map in random order, and shard
                # bytes (hence checksums) must be reproducible.
                metadata={FORMAT: json.dumps({"hook_point": h, "shard": index}, sort_keys=True)},
            )
            key = shard_key(h, index)
            self.storage.put_bytes(key, data)
            # sha256: content identity; xxh3_128: what readers verify (fast).
            entries[h] = {"key": key, "num_tokens": int(rows["tokens"].shape[0]), "sha256": sha256_hex(data),
                          "xxh3_128": xxh3_hex(data), "bytes": len(data)}
        for h in self.hook_points:
            self._shards[h].append(entries[h])
        if record_progress:
            self.storage.put_json(PROGRESS, {**self.settings, "shards": self._shards})

    def _raise_failed(self) -> None:
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def sync(self) -> None:
        """Block until every full shard handed to `write` so far is stored (errors propagate)."""
        self._drain()

    def finalize(self) -> dict[str, Any]:
        """Write the last (possibly short) shard, then `manifest.json`; returns the manifest.

        Leftovers of interrupted runs (shards beyond the final count, `_progress.json`) are
        removed after the manifest is in place.
        """
        self.resume_point()
        if self.complete:
            assert self.manifest is not None
            return self.manifest
        try:
            if self._buffered:
                # Not recorded in _progress.json: after a crash here the short shard is redone,
                # so every recorded shard is full and resume_point() stays a multiple of tokens_per_shard.
                self._emit(self._take(self._buffered), record_progress=False)
            self._drain()
        except BaseException:
            self.close(flush_pending=False)
            raise
        total = sum(e["num_tokens"] for e in self._shards[self.hook_points[0]])
        if total == 0:
            raise CacheError(f"no tokens were written to cache {self.storage.uri}")
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "model": self.settings["identity"].get("model", {}),
            "dataset": self.settings["identity"].get("dataset", {}),
            **{k: self.settings[k] for k in _SETTINGS if k != "format_version"},
            "total_tokens": total,
            "num_shards": len(self._shards[self.hook_points[0]]),
            "shards": self._shards,
        }
        self.storage.put_json(MANIFEST, manifest)
        keep = {e["key"] for h in self.hook_points for e in self._shards[h]}
        for h in self.hook_points:
            for key in self.storage.list(f"{h}/"):
                if key not in keep:
                    self.storage.delete(key)
        self.storage.delete(PROGRESS)
        self.complete = True
        self.manifest = manifest
        self.close()
        return manifest

    def close(self, *, flush_pending: bool = True) -> None:
        """Stop without finalizing (a later run resumes from the completed shards).

        With `flush_pending`, shards already queued for upload are finished first (their
        errors propagate); buffered rows that do not fill a shard are dropped either way.
        """
        if self._pool is None:
            self._closed = True
            return
        try:
            if flush_pending:
                self._drain()
        finally:
            self._closed = True
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._pending.clear()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # keep what is queued, but never mask the original error
            self.close()
