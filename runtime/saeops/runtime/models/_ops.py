"""One function per sparse operation the dictionaries need.

`saeops.kernels` (Triton on CUDA, torch elsewhere) provides the fast versions. Until it
is importable (or when it lacks a given op), the small torch implementations below are
used, so model code calls exactly one function per operation either way.

Sparse format, shared with the kernels: `values[B, k]` and `indices[B, k]` (int64);
padding entries carry value 0 (and any valid index, 0 here), so they decode to nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def _kernel(name: str) -> Callable[..., Any] | None:
    try:
        import saeops.kernels as kernels  # type: ignore[import-not-found]
    except ImportError:
        return None
    return getattr(kernels, name, None)


_K_SPARSE_DECODE = _kernel("sparse_decode")
_K_TOPK_ENCODE = _kernel("topk_encode")
_K_BATCHTOPK_ENCODE = _kernel("batchtopk_encode")
_K_DENSE_TO_SPARSE = _kernel("dense_to_sparse")


# ---------------------------------------------------------------- torch fallbacks


def _torch_sparse_decode(indices: Tensor, values: Tensor, W_dec: Tensor, b_dec: Tensor | None) -> Tensor:
    # embedding_bag with per-sample weights is the memory-light sparse matmul (no B x k x d
    # intermediate); it is differentiable w.r.t. both the weights and the values.
    out = F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")
    return out if b_dec is None else out + b_dec


def _select_topk(pre: Tensor, k: int, score_scale: Tensor | None) -> tuple[Tensor, Tensor]:
    scores = pre if score_scale is None else pre * score_scale
    k = min(k, pre.shape[-1])
    with torch.no_grad():
        indices = scores.topk(k, dim=-1, sorted=False).indices
    # Values are the ReLU of the (unscaled) pre-activations at the chosen latents; the gather
    # keeps the backward sparse (only the k chosen columns receive gradient).
    return pre.gather(-1, indices).relu(), indices


def _select_batchtopk(pre: Tensor, k: int, score_scale: Tensor | None) -> tuple[Tensor, Tensor]:
    B, d_sae = pre.shape
    scores = pre if score_scale is None else pre * score_scale
    with torch.no_grad():
        n = min(k * B, B * d_sae)
        flat = scores.reshape(-1).topk(n, sorted=False).indices
        mask = torch.zeros(B * d_sae, dtype=torch.bool, device=pre.device)
        mask[flat] = True
        mask = mask.view(B, d_sae) & (pre > 0)
        width = max(int(mask.sum(-1).max().item()), 1)
        # Chosen latents first in each row (a stable sort on the mask), padding after.
        order = torch.sort(mask.to(torch.int8), dim=-1, descending=True, stable=True).indices[:, :width]
        keep = mask.gather(-1, order)
        indices = torch.where(keep, order, torch.zeros_like(order))
    values = pre.gather(-1, indices) * keep
    return values.relu(), indices


def _torch_dense_to_sparse(acts: Tensor) -> tuple[Tensor, Tensor]:
    nz = acts != 0
    width = max(int(nz.sum(-1).max().item()) if acts.numel() else 0, 1)
    with torch.no_grad():
        order = torch.sort(nz.to(torch.int8), dim=-1, descending=True, stable=True).indices[:, :width]
        keep = nz.gather(-1, order)
        indices = torch.where(keep, order, torch.zeros_like(order))
    return acts.gather(-1, indices) * keep, indices


# ---------------------------------------------------------------- public ops


def sparse_decode(indices: Tensor, values: Tensor, W_dec: Tensor, b_dec: Tensor | None) -> Tensor:
    """`sum_j values[b, j] * W_dec[indices[b, j]] (+ b_dec)` -> `[B, d_out]`."""
    if _K_SPARSE_DECODE is not None:
        return _K_SPARSE_DECODE(indices, values, W_dec, b_dec)
    return _torch_sparse_decode(indices, values, W_dec, b_dec)


def topk_encode(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, score_scale: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per-token TopK of `x @ W_enc + b_enc` selected on `pre * score_scale`; values are `relu(pre)`."""
    if _K_TOPK_ENCODE is not None:
        return _K_TOPK_ENCODE(x, W_enc, b_enc, k, score_scale=score_scale)
    return _select_topk(x @ W_enc + b_enc, k, score_scale)


def batchtopk_encode(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, score_scale: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Top `k * B` pre-activations over the whole batch, padded per row; values are `relu(pre)`."""
    if _K_BATCHTOPK_ENCODE is not None:
        return _K_BATCHTOPK_ENCODE(x, W_enc, b_enc, k, score_scale=score_scale)
    return _select_batchtopk(x @ W_enc + b_enc, k, score_scale)


def topk_select(pre: Tensor, k: int, score_scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """TopK on already computed pre-activations (GLU encoders, Aux-K)."""
    return _select_topk(pre, k, score_scale)


def batchtopk_select(pre: Tensor, k: int, score_scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """BatchTopK on already computed pre-activations."""
    return _select_batchtopk(pre, k, score_scale)


def dense_to_sparse(acts: Tensor) -> tuple[Tensor, Tensor]:
    """Dense `[B, d_sae]` activations -> padded `(values, indices)` of the nonzero entries."""
    if _K_DENSE_TO_SPARSE is not None:
        return _K_DENSE_TO_SPARSE(acts)
    return _torch_dense_to_sparse(acts)


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
