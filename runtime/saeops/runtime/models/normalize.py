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
- `inference`:    no normalisation; produced by `fold_dataset_norm`, which folds the
  dataset-wise factors into the weights so the dictionary reads raw activations.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from saeops.runtime.models.base import SparseDictionary

NormMode = Literal["token-wise", "batch-wise", "dataset-wise", "inference"]
_EPS = 1e-8


def compute_dataset_norm_factor(sample: Tensor) -> float:
    """`sqrt(d) / mean_token ||x||` over a sample `(N, d)` of raw activations."""
    sample = sample.reshape(-1, sample.shape[-1]).to(torch.float64)
    mean_norm = sample.norm(dim=-1).mean().item()
    if not math.isfinite(mean_norm) or mean_norm <= 0:
        raise ValueError(f"cannot normalise activations with mean norm {mean_norm}")
    return math.sqrt(sample.shape[-1]) / mean_norm


def norm_factor(x: Tensor, mode: NormMode, dataset_factor: Tensor | float = 1.0) -> Tensor:
    """Multiplier taking raw `x` (..., d) to the normalised space, broadcastable against `x`.

    Computed without gradient: the factor is a data statistic, not part of the model.
    """
    d = x.shape[-1]
    with torch.no_grad():
        if mode == "token-wise":
            return math.sqrt(d) / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        if mode == "batch-wise":
            mean_norm = x.reshape(-1, d).norm(dim=-1).mean().clamp_min(_EPS)
            return (math.sqrt(d) / mean_norm).reshape((1,) * x.ndim)
        if mode == "dataset-wise":
            return torch.as_tensor(dataset_factor, dtype=x.dtype, device=x.device)
        if mode == "inference":
            return torch.ones((), dtype=x.dtype, device=x.device)
    raise ValueError(f"unknown norm_activation {mode!r}")


@torch.no_grad()
def fold_dataset_norm(model: SparseDictionary) -> SparseDictionary:
    """Fold the dataset-wise factors into the weights, in place; returns the model.

    Afterwards `norm_activation == "inference"`, the factors are 1, and `model(x_raw)` equals
    the dataset-wise model's de-normalised reconstruction. Feature activations of the folded
    model are the dataset-wise ones divided by the input factor (they now live in raw units).
    """
    if model.spec.norm_activation != "dataset-wise":
        raise ValueError(f"fold_dataset_norm needs norm_activation dataset-wise, not {model.spec.norm_activation}")
    # Scalars for one-hook kinds; per-layer kinds (CLT) keep one factor per layer.
    fin, fout = model.norm_factor_in, model.norm_factor_out
    a = float(fin) if fin.numel() == 1 else fin.clone()
    c = float(fout) if fout.numel() == 1 else fout.clone()
    model._fold_norm_factors(a, c)  # type: ignore[arg-type]
    model.norm_factor_in.fill_(1.0)
    model.norm_factor_out.fill_(1.0)
    model.spec = model.spec.model_copy(update={"norm_activation": "inference"})
    return model


__all__ = ["NormMode", "compute_dataset_norm_factor", "fold_dataset_norm", "norm_factor"]
