"""Tokenise documents and pack them into fixed-size context windows."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

Encoder = Callable[[list[str]], list[list[int]]]


@dataclass
class Window:
    """One context window: token ids and, per token, the index of the document it came from."""

    index: int
    """Global window number (counted over all ranks), used for the data-parallel split."""
    tokens: np.ndarray
    documents: np.ndarray


@dataclass
class WindowBatch:
    """Several windows stacked: what one model forward consumes."""

    windows: torch.Tensor
    """[B] global window numbers."""
    tokens: torch.Tensor
    """[B, T] token ids."""
    documents: torch.Tensor
    """[B, T] document index (in the dataset) of every token; framing tokens take their neighbour's."""
    positions: torch.Tensor
    """[B, T] position of every token inside its window."""
    mask: torch.Tensor
    """[B, T] True where the token is kept for training (not a special token)."""

    @staticmethod
    def stack(windows: list[Window], special_ids: set[int], filter_special: bool) -> WindowBatch:
        """Batch `windows`; `mask` is False on special tokens when `filter_special` is set."""
        tokens = torch.from_numpy(np.stack([w.tokens for w in windows]))
        documents = torch.from_numpy(np.stack([w.documents for w in windows]))
        b, t = tokens.shape
        if filter_special and special_ids:
            mask = ~torch.isin(tokens, torch.tensor(sorted(special_ids), dtype=torch.long))
        else:
            mask = torch.ones(b, t, dtype=torch.bool)
        return WindowBatch(
            windows=torch.tensor([w.index for w in windows], dtype=torch.long),
            tokens=tokens,
            documents=documents,
            positions=torch.arange(t).expand(b, t).clone(),
            mask=mask,
        )


def pack_windows(
    texts: Iterable[tuple[int, str]],
    encode: Encoder,
    context_size: int,
    prefix: list[int],
    suffix: list[int],
    separator: int | None,
    doc_batch: int = 256,
    first_index: int = 0,
) -> Iterator[Window]:
    """Concatenate documents (with `separator` after each) and cut the stream into windows.

    Every window is `prefix + body + suffix` with `context_size` tokens in all; a document
    longer than a body spills into the next window (packing, as SAELens and lm_saes do); the
    final partial body is dropped. `texts` yields (document index, text) pairs; tokenisation is
    batched so fast tokenizers can work on many documents at once.
    """
    body = context_size - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"context_size {context_size} leaves no room for text after the framing tokens")
    pre = np.asarray(prefix, dtype=np.int64)
    suf = np.asarray(suffix, dtype=np.int64)
    sep = [] if separator is None else [separator]
    tok_parts: list[np.ndarray] = []
    doc_parts: list[np.ndarray] = []
    pending = 0
    index = first_index

    def batches() -> Iterator[list[tuple[int, str]]]:
        chunk: list[tuple[int, str]] = []
        for item in texts:
            chunk.append(item)
            if len(chunk) == doc_batch:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    for chunk in batches():
        ids = encode([t or "" for _, t in chunk])
        for (doc, _), doc_ids in zip(chunk, ids, strict=True):
            if not doc_ids:
                continue
            arr = np.asarray(list(doc_ids) + sep, dtype=np.int64)
            tok_parts.append(arr)
            doc_parts.append(np.full(len(arr), doc, dtype=np.int64))
            pending += len(arr)
        if pending < body:
            continue
        toks = np.concatenate(tok_parts)
        docs = np.concatenate(doc_parts)
        n_full = len(toks) // body
        for i in range(n_full):
            bt = toks[i * body:(i + 1) * body]
            bd = docs[i * body:(i + 1) * body]
            yield Window(
                index=index,
                tokens=np.concatenate([pre, bt, suf]),
                documents=np.concatenate([np.full(len(pre), bd[0]), bd, np.full(len(suf), bd[-1])]),
            )
            index += 1
        rest = n_full * body
        tok_parts, doc_parts = [toks[rest:]], [docs[rest:]]
        pending = len(toks) - rest
