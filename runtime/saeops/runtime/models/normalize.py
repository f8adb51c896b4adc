"""Activation normalisation to an average norm of sqrt(d).

Training in a normalised space lets hyperparameters (lr, sparsity coefficients, init norms)
transfer across models whose activations have very different scales.

Modes (`DictionarySpec.norm_activation`):

- `token-wise`:   every token is scaled to norm sqrt(d) (factor per token).
- `batch-wise`:   the batch is scaled so its *average* token norm is sqrt(d).
- `dataset-wise`: a fixed factor sqrt(d) / E||x||, estimated once from a sample by the trainer
  (`compute_dataset_norm_factor`) and kept in the buffers `norm_factor_in` / `norm_factor_out`.
  Being a constant, it keeps the dictionary affine in its input, which is what makes folding
  possible.
- `inference`:    no normalisation; produced by `SparseDictionary.fold_dataset_norm`, which
  folds the dataset-wise factors into the weights so the dictionary reads raw activations.

A cross-layer transcoder normalises each layer on its own: its activations are `(B, L, d)`
and its factors `(L,)` (`per_layer`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

NormMode = Literal["token-wise", "batch-wise", "dataset-wise", "inference"]
_EPS = 1e-8


def compute_dataset_norm_factor(sample: Tensor) -> float:
    """`sqrt(d) / mean_token ||x||` over a sample `(N, d)` of raw activations."""
    sample = sample.reshape(-1, sample.shape[-1]).to(torch.float64)
    mean_norm = sample.norm(dim=-1).mean().item()
    if not math.isfinite(mean_norm) or mean_norm <= 0:
        raise ValueError(f"cannot normalise activations with mean norm {mean_norm}")
    return math.sqrt(sample.shape[-1]) / mean_norm


def norm_factor(x: Tensor, mode: NormMode, dataset_factor: Tensor | float = 1.0, *, per_layer: bool = False) -> Tensor:
    """Multiplier taking raw `x` (..., d) to the normalised space, broadcastable against `x`;
    with `per_layer`, `x` is `(B, L, d)` and batch- and dataset-wise factors are per layer.

    Computed without gradient: the factor is a data statistic, not part of the model.
    """
    d = x.shape[-1]
    with torch.no_grad():
        if mode == "token-wise":
            return math.sqrt(d) / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        if mode == "batch-wise":
            if per_layer:
                return (math.sqrt(d) / x.norm(dim=-1).mean(0).clamp_min(_EPS))[:, None]
            mean_norm = x.reshape(-1, d).norm(dim=-1).mean().clamp_min(_EPS)
            return (math.sqrt(d) / mean_norm).reshape((1,) * x.ndim)
        if mode == "dataset-wise":
            factor = torch.as_tensor(dataset_factor, dtype=x.dtype, device=x.device)
            return factor[:, None] if per_layer else factor
        if mode == "inference":
            return torch.ones((), dtype=x.dtype, device=x.device)
    raise ValueError(f"unknown norm_activation {mode!r}")


__all__ = ["NormMode", "compute_dataset_norm_factor", "norm_factor"]
