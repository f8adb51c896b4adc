"""CLT helpers kept out of the module file: hook-point checks, sparse splitting and per-layer
metrics."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from saeops.api.training import DictionarySpec
from saeops.runtime.models.acts import FeatureActs
from saeops.runtime.models.hooks import layer_of
from saeops.runtime.models.losses import LossOutput


def check_layers(spec: DictionarySpec) -> list[int]:
    """Layer indices of `hookPointsOut` (== those of `hookPointsIn`); both lists must name
    `blocks.N.` hook points with strictly increasing N, or the triangular (s <= t) structure
    would let a feature write to an earlier layer."""
    out: list[int] = []
    for field, hooks in (("hookPointsIn", spec.hook_points_in), ("hookPointsOut", spec.hook_points_out)):
        layers = [layer_of(h) for h in hooks]
        ints = [n for n in layers if n is not None]
        if len(ints) != len(layers):
            bad = hooks[layers.index(None)]
            raise ValueError(f"spec.sae.{field}: {bad!r} names no layer (expected blocks.N.<hook>)")
        if any(b <= a for a, b in itertools.pairwise(ints)):
            raise ValueError(f"spec.sae.{field}: layers must be strictly increasing, got {ints}")
        out = ints
    return out


def split_sparse_by_layer(acts: FeatureActs, d_layer: int, n_layers: int) -> list[tuple[Tensor, Tensor]]:
    """For each target layer t: (values, indices) of the latents of source layers <= t, as
    indices into `W_dec[t].reshape(-1, d_out)` (later-layer latents zeroed out)."""
    values, indices = acts.values, acts.indices
    out = []
    for t in range(n_layers):
        keep = indices < (t + 1) * d_layer
        out.append((values * keep, torch.where(keep, indices, torch.zeros_like(indices))))
    return out


@torch.no_grad()
def per_layer_metrics(out: LossOutput, layers: list[int], d_layer: int) -> dict[int, dict[str, float]]:
    """`{layer: {explained_variance, mse, l0}}` of one batch; x_hat/target are `(B, L, d)`."""
    x_hat, target = out.x_hat.float(), out.target.float()
    l0 = (out.acts.dense() != 0).reshape(x_hat.shape[0], len(layers), d_layer).sum(-1).float().mean(0)
    res: dict[int, dict[str, float]] = {}
    for i, layer in enumerate(layers):
        err = (x_hat[:, i] - target[:, i]).pow(2)
        sst = (target[:, i] - target[:, i].mean(0)).pow(2).sum().clamp_min(1e-30)
        res[layer] = {
            "explained_variance": float(1 - err.sum() / sst),
            "mse": float(err.mean()),
            "l0": float(l0[i]),
        }
    return res


__all__ = ["check_layers", "per_layer_metrics", "split_sparse_by_layer"]
