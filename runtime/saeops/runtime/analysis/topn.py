"""Streaming per-feature top-K with payloads: exact top-N contexts and uniform reservoirs.

One primitive serves both needs. Every feature owns a fixed-size buffer of `k` slots holding a
*score* and payload tensors (window, position, context tokens, ...). Each batch contributes at
most `k` candidates per feature; `merge` keeps the `k` highest scores of buffer ∪ candidates
with one `torch.topk`. Memory is `n_features * k * payload` whatever the dataset length.

- Top-N activations: score = activation value. The top-`k` of a union equals the top-`k` of
  (top-`k` of each part), so the result is exact (up to the order of tied scores).
- Uniform sample: score = an independent U(0, 1) key per activation. Keeping the `k` largest
  keys is a bottom-k sketch, i.e. a uniform sample without replacement (reservoir sampling,
  vectorised), with exactly the same merge.

Empty slots and inactive candidates carry score `-inf` and are reported as invalid.
"""

from __future__ import annotations

import torch
from torch import Tensor


class StreamingTopK:
    """Per-feature buffers of the `k` highest scores seen so far, with payloads.

    `payload_shapes` maps a name to the trailing shape of that payload per slot (e.g.
    `{"window": (), "tokens": (2r + 1,)}`) and its dtype.
    """

    def __init__(self, n_features: int, k: int, payload_shapes: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 device: torch.device | str = "cpu") -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        self.n_features = n_features
        self.k = k
        self.scores = torch.full((n_features, k), float("-inf"), device=device)
        self.payload = {
            name: torch.zeros((n_features, k, *shape), dtype=dtype, device=device)
            for name, (shape, dtype) in payload_shapes.items()
        }

    @property
    def valid(self) -> Tensor:
        """`(n_features, k)` bool: slots holding a real entry."""
        return torch.isfinite(self.scores)

    def nbytes(self) -> int:
        """Bytes held by the buffers (constant for the buffer's lifetime)."""
        return self.scores.numel() * self.scores.element_size() + sum(
            t.numel() * t.element_size() for t in self.payload.values())

    @torch.no_grad()
    def merge(self, scores: Tensor, payload: dict[str, Tensor]) -> None:
        """Fold candidates in: `scores (n_features, c)` (-inf = no candidate) with payloads
        `(n_features, c, ...)`. Keeps the `k` best of buffer ∪ candidates, sorted descending."""
        if scores.shape[0] != self.n_features:
            raise ValueError(f"scores have {scores.shape[0]} features, the buffer {self.n_features}")
        both = torch.cat([self.scores, scores.to(self.scores)], dim=1)
        top, idx = torch.topk(both, self.k, dim=1)
        self.scores = top
        for name, buf in self.payload.items():
            cand = payload[name].to(buf)
            cat = torch.cat([buf, cand], dim=1)
            gather_idx = idx.reshape(*idx.shape, *([1] * (cat.dim() - 2))).expand(-1, -1, *cat.shape[2:])
            self.payload[name] = torch.gather(cat, 1, gather_idx)


def sparse_candidates(rows: Tensor, features: Tensor, scores: Tensor, n_features: int, k: int
                      ) -> tuple[Tensor, Tensor]:
    """Per-feature top-`k` of a batch given as sparse entries `(row, feature, score)` (each
    `(E,)`): returns `(scores, rows)`, each `(n_features, k)`, sorted descending, `-inf` padded.

    Only these entries can enter a top-`k` buffer from this batch. Working on the E nonzero
    entries instead of a dense `(rows, n_features)` top-k is what keeps the analysis of a wide
    TopK dictionary cheap (E = rows * top_k, not rows * d_sae).
    """
    out_scores = torch.full((n_features, k), float("-inf"), device=scores.device)
    out_rows = torch.zeros((n_features, k), dtype=torch.int64, device=scores.device)
    if scores.numel() == 0:
        return out_scores, out_rows
    # Sort by score, then (stably) by feature: each feature's entries become a run, best first.
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(features[order], stable=True)]
    f = features[order]
    counts = torch.bincount(f, minlength=n_features)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(f), device=f.device) - starts[f]
    keep = rank < k
    out_scores[f[keep], rank[keep]] = scores[order][keep].to(out_scores.dtype)
    out_rows[f[keep], rank[keep]] = rows[order][keep]
    return out_scores, out_rows


__all__ = ["StreamingTopK", "sparse_candidates"]
