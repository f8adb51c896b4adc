"""Live activation generation: windows -> model forward -> special-token filter -> shuffle buffer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any

import torch

from saeops.api.common import DatasetSpec
from saeops.runtime.data.loading import DatasetError, iter_documents, load_text_dataset
from saeops.runtime.data.tokens import check_tokenized_with, document_encoder
from saeops.runtime.data.windows import Window, WindowBatch, pack_windows

Batch = dict[str, torch.Tensor]


class ActivationStream:
    """Iterator of training batches `{hook_point: [batch_size, d], "tokens": [batch_size]}`.

    All hook points are aligned row-wise (row i of every tensor is the same token), so
    transcoders and CLTs get input/output pairs. Deterministic given `seed`; rank `r` of
    `world_size` reads context windows r, r + world_size, ...; `skip_batches` resumes by
    position (the batches after it equal the tail of an uninterrupted stream).

    With `shuffle`, rows pass through an online shuffle buffer of `buffer_size` tokens: it is
    filled, permuted with a seeded generator, half of it is emitted, then it is refilled (the
    mixing buffer of SAELens / lm_saes), so consecutive rows come from different contexts.
    Without it, rows come out in generation order. A final remainder smaller than
    `batch_size` is dropped; with `repeat` the dataset is read again and again instead of ending.

    `total_batches` (counted from batch 0, skipped ones included): the consumer takes no more,
    so the stream ends there, and the shuffle buffer never reads ahead past the rows still to
    emit (a 100k-token run would otherwise put a third more tokens through the model, rows left
    in the buffer when training stops). The same `total_batches` gives the same batches.
    """

    def __init__(
        self,
        model: Any,
        dataset: DatasetSpec,
        hook_points: Sequence[str],
        batch_size: int,
        buffer_size: int = 65536,
        seed: int = 0,
        filter_special_tokens: bool = True,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        skip_batches: int = 0,
        *,
        model_batch_size: int | None = None,
        repeat: bool = False,
        documents: Any = None,
        total_batches: int | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if batch_size < 1 or skip_batches < 0 or (total_batches is not None and total_batches < 0):
            raise ValueError("batch_size must be >= 1, skip_batches and total_batches >= 0")
        model.check_hook_points(hook_points)
        if model.max_context is not None and dataset.context_size > model.max_context:
            raise DatasetError(
                f"dataset.contextSize: {dataset.context_size} exceeds the model's context of {model.max_context}"
            )
        self.model = model
        self.dataset_spec = dataset
        self.hook_points = list(dict.fromkeys(hook_points))
        self.batch_size = batch_size
        self.buffer_size = max(buffer_size, batch_size)
        self.seed = seed
        self.filter_special_tokens = filter_special_tokens
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.skip_batches = skip_batches
        self.total_batches = total_batches
        self.model_batch_size = model_batch_size or model.spec.batch_size
        self.repeat = repeat
        if dataset.token_field:
            check_tokenized_with(model, dataset)
        # `documents`: an already loaded dataset (tests, or a caller that loads once for many streams).
        self.documents = documents if documents is not None else load_text_dataset(dataset)
        self.text_field = dataset.text_field

    # ---- tokens ------------------------------------------------------------------------------
    def _texts(self) -> Iterator[tuple[int, Any]]:
        return iter_documents(self.documents, self.dataset_spec)

    def windows(self) -> Iterator[Window]:
        """This rank's context windows, in order (documents tokenised and packed, no model)."""
        prefix, suffix = self.model.window_frame(self.dataset_spec.prepend_bos)
        encode = document_encoder(self.model, self.dataset_spec)
        index = 0
        while True:
            produced = 0
            for w in pack_windows(self._texts(), encode, self.dataset_spec.context_size,
                                  prefix, suffix, self.model.separator_token_id, first_index=index):
                produced += 1
                index = w.index + 1
                if w.index % self.world_size == self.rank:
                    yield w
            if produced == 0:
                raise DatasetError(
                    f"dataset.path: {self.dataset_spec.path} has too little text for one context window "
                    f"of {self.dataset_spec.context_size} tokens"
                )
            if not self.repeat:
                return

    def window_batches(self) -> Iterator[WindowBatch]:
        """This rank's windows stacked `model_batch_size` at a time (the last batch may be smaller)."""
        special = self.model.special_token_ids
        it = self.windows()
        while chunk := list(islice(it, self.model_batch_size)):
            yield WindowBatch.stack(chunk, special, self.filter_special_tokens)

    # ---- activations -------------------------------------------------------------------------
    def iter_windows(self) -> Iterator[dict[str, torch.Tensor]]:
        """Unshuffled whole windows with activations, one dict per model forward:
        `{hook: [B, T, d], "tokens", "mask", "positions", "documents": [B, T], "windows": [B]}`.

        `mask` is True on tokens kept for training. For sequence dictionaries (Lorsa) and the
        cache writer, which needs ordered tokens with positions and document ids.
        """
        for wb in self.window_batches():
            acts = self.model.activations(wb.tokens, self.hook_points)
            out: dict[str, torch.Tensor] = dict(acts)
            dev = next(iter(acts.values())).device
            out.update(tokens=wb.tokens.to(dev), mask=wb.mask.to(dev), positions=wb.positions.to(dev),
                       documents=wb.documents.to(dev), windows=wb.windows.to(dev))
            yield out

    def _rows(self, wb: WindowBatch, drop: int = 0) -> Batch:
        """Kept token rows of one window batch (the first `drop` kept rows left out)."""
        acts = self.model.activations(wb.tokens, self.hook_points)
        dev = next(iter(acts.values())).device
        mask = wb.mask.to(dev)
        rows = {hp: a[mask][drop:] for hp, a in acts.items()}
        rows["tokens"] = wb.tokens.to(dev)[mask][drop:]
        return rows

    def row_chunks(self, skip_rows: int = 0) -> Iterator[Batch]:
        """Filtered rows in generation order, one chunk per model forward.

        The first `skip_rows` rows are skipped without running the model on windows that
        contribute only skipped rows (the special-token mask depends on token ids alone).
        """
        for wb in self.window_batches():
            kept = int(wb.mask.sum())
            if skip_rows >= kept:
                skip_rows -= kept
                continue
            rows = self._rows(wb, drop=skip_rows)
            skip_rows = 0
            if len(rows["tokens"]):
                yield rows

    def __iter__(self) -> Iterator[Batch]:
        if self.shuffle:
            # Resuming a shuffled stream replays it: the buffer's content at the resume point
            # depends on every earlier forward. Correct by construction; costs the skipped work.
            return islice(self._shuffled(self.row_chunks()), self.skip_batches, None)  # it stops at total_batches
        ordered = self._ordered(self.row_chunks(skip_rows=self.skip_batches * self.batch_size))
        if self.total_batches is None:
            return ordered
        return islice(ordered, max(self.total_batches - self.skip_batches, 0))

    def _ordered(self, chunks: Iterator[Batch]) -> Iterator[Batch]:
        carry: Batch | None = None
        for chunk in chunks:
            data = chunk if carry is None else {k: torch.cat([carry[k], chunk[k]]) for k in chunk}
            n = len(data["tokens"])
            full = n - n % self.batch_size
            for i in range(0, full, self.batch_size):
                yield {k: v[i:i + self.batch_size] for k, v in data.items()}
            carry = {k: v[full:] for k, v in data.items()}

    def _shuffled(self, chunks: Iterator[Batch]) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.seed)
        store: Batch | None = None
        exhausted = False
        emitted = 0
        while True:
            # Rows still to emit: the buffer fills to that at most, and emits them all at once.
            wanted = None if self.total_batches is None else (self.total_batches - emitted) * self.batch_size
            if wanted is not None and wanted <= 0:
                return
            fill = self.buffer_size if wanted is None else min(self.buffer_size, wanted)
            parts = [] if store is None else [store]
            n = 0 if store is None else len(store["tokens"])
            while n < fill and not exhausted:
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                    break
                parts.append(chunk)
                n += len(chunk["tokens"])
            if n < self.batch_size:
                return
            store = parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            perm = torch.randperm(n, generator=gen).to(store["tokens"].device)
            store = {k: v[perm] for k, v in store.items()}
            # Emit half the buffer (all of it at the end) so every row waits a random number of
            # rounds and mixes with later contexts; at least one batch so small buffers progress.
            take = n if exhausted or (wanted is not None and n >= wanted) else n // 2
            take = max(take - take % self.batch_size, self.batch_size)
            if wanted is not None:
                take = min(take, wanted)
            for i in range(0, take, self.batch_size):
                yield {k: v[i:i + self.batch_size] for k, v in store.items()}
                emitted += 1
            store = {k: v[take:] for k, v in store.items()}


def sample_activations(stream: Iterator[Batch] | ActivationStream, n_tokens: int) -> Batch:
    """Concatenate batches from `stream` until `n_tokens` rows (fewer if it ends first)."""
    got: list[Batch] = []
    n = 0
    for batch in stream:
        got.append(batch)
        n += len(next(iter(batch.values())))
        if n >= n_tokens:
            break
    if not got:
        raise DatasetError("dataset: the activation stream produced no tokens")
    return {k: torch.cat([b[k] for b in got])[:n_tokens] for k in got[0]}
