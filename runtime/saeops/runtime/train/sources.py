"""Activation sources for training: the live model (ActivationStream) or an ActivationCache.

Both are a `Source`: widths per hook point, a sample for initialisation, and a resumable
stream of row-aligned batches `{hook: Tensor[B, d]}` for this data-parallel rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch

from saeops.api import SAETrainingRunSpec, SpecError
from saeops.runtime.cache import CacheReader, check_compatible, load_manifest
from saeops.runtime.data import ActivationStream, load_text_dataset, sample_activations
from saeops.runtime.lm import LanguageModel, load_language_model
from saeops.runtime.storage import open_storage

Batch = dict[str, torch.Tensor]


class Source(Protocol):
    """Where a training job's activations come from."""

    @property
    def lm(self) -> LanguageModel | None:
        """The language model producing them (live sources), or None (a cache)."""
        ...

    def dims(self) -> dict[str, int]:
        """Width of each hook point."""
        ...

    def sample(self, n_tokens: int, seed: int) -> Batch:
        """`n_tokens` rows of the whole stream (every rank the same), for initialisation."""
        ...

    def stream(self, seed: int, skip_batches: int = 0) -> Iterator[Batch]:
        """This rank's batches from batch `skip_batches` on (a resumed run skips those done)."""
        ...


class SourceFactory(Protocol):
    """Builds the source of rank `rank` of `world_size` data ranks (`TrainingJob(source=...)`)."""

    def __call__(self, spec: SAETrainingRunSpec, hooks: list[str], *, rank: int, world_size: int) -> Source: ...


class LiveSource:
    """Activations generated on the fly by the language model."""

    def __init__(self, spec: SAETrainingRunSpec, hooks: list[str], device: torch.device,
                 rank: int = 0, world_size: int = 1) -> None:
        assert spec.dataset is not None  # the spec validator requires it for live runs
        self.spec, self.hooks = spec, hooks
        self.rank, self.world_size = rank, world_size
        self.lm: LanguageModel = load_language_model(spec.model, device=str(device))
        self.documents = load_text_dataset(spec.dataset)  # loaded once, shared by every stream

    def dims(self) -> dict[str, int]:
        return {h: self.lm.d_model(h) for h in self.hooks}

    def _stream(self, seed: int, batch_size: int, skip_batches: int = 0, *, whole: bool = False,
                buffer_size: int | None = None, total_batches: int | None = None) -> ActivationStream:
        acts = self.spec.activations
        return ActivationStream(
            self.lm, self.spec.dataset, self.hooks, batch_size=batch_size,
            buffer_size=buffer_size or acts.buffer_size,
            seed=seed, filter_special_tokens=acts.filter_special_tokens, shuffle=acts.shuffle,
            rank=0 if whole else self.rank, world_size=1 if whole else self.world_size,
            skip_batches=skip_batches, repeat=True, total_batches=total_batches,
            documents=self.documents,
        )

    @property
    def sequences(self) -> bool:
        """Attention dictionaries (Lorsa) train on whole context windows, not shuffled tokens."""
        return self.spec.sae.type == "lorsa"

    def _windows(self, seed: int, n_seq: int, skip_batches: int, *, whole: bool) -> Iterator[Batch]:
        """Batches of `n_seq` whole windows `{hook: [n, T, d], "mask": [n, T], "tokens": [n, T]}`
        in dataset order (sequence dictionaries need positions intact; there is nothing to mix)."""
        keys = [*self.hooks, "mask", "tokens"]
        carry: dict[str, torch.Tensor] | None = None
        index = 0
        for chunk in self._stream(seed, 1, whole=whole).iter_windows():
            part = {k: chunk[k] for k in keys}
            data = part if carry is None else {k: torch.cat([carry[k], part[k]]) for k in keys}
            while len(data["mask"]) >= n_seq:
                if index >= skip_batches:
                    yield {k: v[:n_seq] for k, v in data.items()}
                index += 1
                data = {k: v[n_seq:] for k, v in data.items()}
            carry = data

    def sample(self, n_tokens: int, seed: int) -> Batch:
        # The whole stream, not this rank's part: every rank initialises from the same sample.
        if self.sequences:
            n_seq = -(-n_tokens // self.spec.dataset.context_size)
            return next(self._windows(seed, n_seq, 0, whole=True))
        # A buffer as large as the sample: init needs no more mixing than one pass gives, and a
        # training-size buffer would run the model over far more tokens than the sample holds.
        n = min(n_tokens, 4096)
        stream = self._stream(seed, n, whole=True, buffer_size=n_tokens, total_batches=-(-n_tokens // n))
        return sample_activations(stream, n_tokens)

    def stream(self, seed: int, skip_batches: int = 0) -> Iterator[Batch]:
        local = self.spec.trainer.batch_size // self.world_size
        if self.sequences:
            return self._windows(seed, max(1, local // self.spec.dataset.context_size), skip_batches, whole=False)
        # The run takes total_steps batches: the shuffle buffer reads no further ahead.
        return iter(self._stream(seed, local, skip_batches, total_batches=self.spec.trainer.total_steps))


class CacheSource:
    """Activations read from an ActivationCache (local `cacheUri`, or resolved by the operator)."""

    lm: LanguageModel | None = None

    def __init__(self, spec: SAETrainingRunSpec, hooks: list[str], rank: int = 0, world_size: int = 1) -> None:
        acts = spec.activations
        if acts.cache_uri is None:
            raise SpecError(
                f"spec.activations.cacheRef={acts.cache_ref!r} names a cluster resource; "
                "locally set spec.activations.cacheUri to the cache's storage URI"
            )
        self.spec, self.hooks = spec, hooks
        self.rank, self.world_size = rank, world_size
        out = spec.output
        self.storage = open_storage(acts.cache_uri, endpoint_url=out.endpoint_url, region=out.region)
        self.manifest = load_manifest(self.storage)
        missing = [h for h in hooks if h not in self.manifest["hook_points"]]
        if missing:
            raise SpecError(
                f"spec.sae: hook point {missing[0]!r} is not in cache {acts.cache_uri} "
                f"(it has {', '.join(self.manifest['hook_points'])})"
            )
        for h in hooks:
            check_compatible(self.manifest, hook_point=h, d_model=spec.sae.d_model)

    def dims(self) -> dict[str, int]:
        d = self.manifest["d_model"]
        return {h: int(d[h] if isinstance(d, dict) else d) for h in self.hooks}

    def _reader(self, seed: int, batch_size: int, start_batch: int, epochs: int | None, *,
                whole: bool = False) -> Iterator[Batch]:
        # One reader over every hook point: rows stay aligned (transcoder input/label pairs).
        reader = CacheReader(self.storage, self.hooks, batch_size=batch_size, seed=seed,
                             rank=0 if whole else self.rank, world_size=1 if whole else self.world_size,
                             start_batch=start_batch,
                             shuffle=self.spec.activations.shuffle, epochs=epochs)
        for b in reader:
            yield {**b.by_hook, "tokens": b.tokens}

    def sample(self, n_tokens: int, seed: int) -> Batch:
        # The whole cache, not this rank's part: every rank initialises from the same sample.
        return sample_activations(self._reader(seed, min(n_tokens, 4096), 0, None, whole=True), n_tokens)

    def stream(self, seed: int, skip_batches: int = 0) -> Iterator[Batch]:
        local = self.spec.trainer.batch_size // self.world_size
        # Epochs repeat (each reshuffled) when the run wants more tokens than the cache holds.
        return self._reader(seed, local, skip_batches, None)
