"""One function per sparse operation the dictionaries need, all backed by `saeops.kernels`
(Triton on CUDA when enabled, fast torch paths elsewhere).

Sparse format, shared with the kernels: `values[B, k]` and `indices[B, k]` (int64);
padding entries carry value 0 (and any valid index, 0 here), so they decode to nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saeops import kernels
from saeops.kernels.select import batchtopk_indices, topk_indices


def _select_topk(pre: Tensor, k: int, score_scale: Tensor | None) -> tuple[Tensor, Tensor]:
    scores = pre if score_scale is None else pre * score_scale
    with torch.no_grad():
        indices = topk_indices(scores, min(k, pre.shape[-1]))
    # Values are the ReLU of the (unscaled) pre-activations at the chosen latents; the gather
    # keeps the backward sparse (only the k chosen columns receive gradient).
    return pre.gather(-1, indices).relu(), indices


def _select_batchtopk(pre: Tensor, k: int, score_scale: Tensor | None) -> tuple[Tensor, Tensor]:
    scores = pre if score_scale is None else pre * score_scale
    with torch.no_grad():
        indices, keep = batchtopk_indices(scores, pre, k)
    return (pre.gather(-1, indices) * keep).relu(), indices


# ---------------------------------------------------------------- public ops


def sparse_decode(indices: Tensor, values: Tensor, W_dec: Tensor, b_dec: Tensor | None) -> Tensor:
    """`sum_j values[b, j] * W_dec[indices[b, j]] (+ b_dec)` -> `[B, d_out]`."""
    return kernels.sparse_decode(indices, values, W_dec, b_dec)


def topk_encode(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, score_scale: Tensor | None = None,
    input_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token TopK of `(x - input_bias) @ W_enc + b_enc` selected on `pre * score_scale`;
    values are `relu(pre)`. Passing the centring bias here (rather than centring x first)
    lets the kernel give its gradient as one mat-vec instead of a per-row pass."""
    return kernels.topk_encode(x, W_enc, b_enc, k, score_scale=score_scale, input_bias=input_bias)


def batchtopk_encode(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, score_scale: Tensor | None = None,
    input_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Top `k * B` pre-activations over the whole batch, padded per row; values are `relu(pre)`."""
    return kernels.batchtopk_encode(x, W_enc, b_enc, k, score_scale=score_scale, input_bias=input_bias)


def topk_select(pre: Tensor, k: int, score_scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """TopK on already computed pre-activations (GLU encoders, Aux-K)."""
    return _select_topk(pre, k, score_scale)


def batchtopk_select(pre: Tensor, k: int, score_scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """BatchTopK on already computed pre-activations."""
    return _select_batchtopk(pre, k, score_scale)


def dense_to_sparse(acts: Tensor) -> tuple[Tensor, Tensor]:
    """Dense `[B, d_sae]` activations -> padded `(values, indices)` of the nonzero entries."""
    return kernels.dense_to_sparse(acts)


def sparse_to_dense(values: Tensor, indices: Tensor, d_sae: int) -> Tensor:
    """Padded `(values, indices)` -> dense `[B, d_sae]` (differentiable w.r.t. values)."""
    out = values.new_zeros(values.shape[0], d_sae)
    return out.scatter_add(-1, indices, values)


__all__ = [
    "batchtopk_encode",
    "batchtopk_select",
    "dense_to_sparse",
    "sparse_decode",
    "sparse_to_dense",
    "topk_encode",
    "topk_select",
]
