"""Activation sources for training: the live model (ActivationStream) or an ActivationCache.

Both give the same interface: widths per hook point, a sample for initialisation, and a
resumable stream of row-aligned batches `{hook: Tensor[B, d]}` for this data-parallel rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from saeops.runtime.spec import SAETrainingRunSpec, SpecError

Batch = dict[str, torch.Tensor]


class LiveSource:
    """Activations generated on the fly by the language model."""

    def __init__(self, spec: SAETrainingRunSpec, hooks: list[str], device: torch.device,
                 rank: int = 0, world_size: int = 1) -> None:
        from saeops.runtime.data import load_text_dataset
        from saeops.runtime.lm import load_language_model

        assert spec.dataset is not None  # the spec validator requires it for live runs
        self.spec, self.hooks = spec, hooks
        self.rank, self.world_size = rank, world_size
        self.lm = load_language_model(spec.model, device=str(device))
        self.documents = load_text_dataset(spec.dataset)  # loaded once, shared by every stream

    def dims(self) -> dict[str, int]:
        return {h: self.lm.d_model(h) for h in self.hooks}

    def _stream(self, seed: int, batch_size: int, skip_batches: int = 0) -> Any:
        from saeops.runtime.data import ActivationStream

        acts = self.spec.activations
        return ActivationStream(
            self.lm, self.spec.dataset, self.hooks, batch_size=batch_size, buffer_size=acts.buffer_size,
            seed=seed, filter_special_tokens=acts.filter_special_tokens, shuffle=acts.shuffle,
            rank=self.rank, world_size=self.world_size, skip_batches=skip_batches, repeat=True,
            documents=self.documents,
        )

    def sample(self, n_tokens: int, seed: int) -> Batch:
        from saeops.runtime.data import sample_activations

        return sample_activations(self._stream(seed, min(n_tokens, 4096)), n_tokens)

    def stream(self, seed: int, skip_batches: int = 0) -> Iterator[Batch]:
        local = self.spec.trainer.batch_size // self.world_size
        return iter(self._stream(seed, local, skip_batches))


class CacheSource:
    """Activations read from an ActivationCache (local `cacheUri`, or resolved by the operator)."""

    def __init__(self, spec: SAETrainingRunSpec, hooks: list[str], rank: int = 0, world_size: int = 1) -> None:
        from saeops.runtime.cache import open_manifest

        acts = spec.activations
        if acts.cache_uri is None:
            raise SpecError(
                f"spec.activations.cacheRef={acts.cache_ref!r} names a cluster resource; "
                "locally set spec.activations.cacheUri to the cache's storage URI"
            )
        self.spec, self.hooks, self.uri = spec, hooks, acts.cache_uri
        self.rank, self.world_size = rank, world_size
        self.manifest = open_manifest(self.uri, endpoint_url=spec.output.endpoint_url,
                                      region=spec.output.region)
        missing = [h for h in hooks if h not in self.manifest["hook_points"]]
        if missing:
            raise SpecError(
                f"spec.sae hook point {missing[0]!r} is not in cache {self.uri} "
                f"(it has {', '.join(self.manifest['hook_points'])})"
            )
        from saeops.runtime.cache import check_compatible

        for h in hooks:
            check_compatible(self.manifest, hook_point=h, d_model=spec.sae.d_model)

    def dims(self) -> dict[str, int]:
        return {h: int(self.manifest["d_model"][h]) for h in self.hooks}

    def _readers(self, seed: int, batch_size: int, start_batch: int) -> Iterator[Batch]:
        from saeops.runtime.cache import CacheReader

        out = self.spec.output
        # One reader per hook point with the same seed: shards were written together, so the
        # same permutation keeps rows aligned across hook points (transcoder input/label pairs).
        readers = [
            iter(CacheReader(self.uri, h, batch_size=batch_size, seed=seed, rank=self.rank,
                             world_size=self.world_size, start_batch=start_batch,
                             shuffle=self.spec.activations.shuffle, endpoint_url=out.endpoint_url,
                             region=out.region))
            for h in self.hooks
        ]
        for parts in zip(*readers, strict=False):
            batch: Batch = {}
            for h, part in zip(self.hooks, parts, strict=True):
                batch[h] = part[h] if isinstance(part, dict) else part
            yield batch

    def sample(self, n_tokens: int, seed: int) -> Batch:
        rows: dict[str, list[torch.Tensor]] = {h: [] for h in self.hooks}
        got = 0
        for batch in self._readers(seed, min(n_tokens, 4096), 0):
            for h in self.hooks:
                rows[h].append(batch[h])
            got += batch[self.hooks[0]].shape[0]
            if got >= n_tokens:
                break
        return {h: torch.cat(v)[:n_tokens] for h, v in rows.items()}

    def stream(self, seed: int, skip_batches: int = 0) -> Iterator[Batch]:
        local = self.spec.trainer.batch_size // self.world_size
        return self._readers(seed, local, skip_batches)
