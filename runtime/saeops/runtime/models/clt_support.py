"""CLT helpers kept out of the module file: hook-point checks, per-layer normalisation,
sparse splitting, per-layer metrics and initialisation from a sample."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from saeops.api.training import DictionarySpec
from saeops.runtime.models.base import FeatureActs, LossContext, LossOutput
from saeops.runtime.models.hooks import layer_of
from saeops.runtime.models.normalize import compute_dataset_norm_factor

if TYPE_CHECKING:
    from saeops.runtime.models.clt import CrossLayerTranscoder

_EPS = 1e-8


def check_layers(spec: DictionarySpec) -> list[int]:
    """Layer indices of `hookPointsOut` (== those of `hookPointsIn`); both lists must name
    `blocks.N.` hook points with strictly increasing N, or the triangular (s <= t) structure
    would let a feature write to an earlier layer."""
    out: list[int] = []
    for field, hooks in (("hookPointsIn", spec.hook_points_in), ("hookPointsOut", spec.hook_points_out)):
        layers = [layer_of(h) for h in hooks]
        if any(n is None for n in layers):
            bad = hooks[layers.index(None)]
            raise ValueError(f"spec.sae.{field}: {bad!r} names no layer (expected blocks.N.<hook>)")
        ints = [int(n) for n in layers]  # type: ignore[arg-type]
        if any(b <= a for a, b in itertools.pairwise(ints)):
            raise ValueError(f"spec.sae.{field}: layers must be strictly increasing, got {ints}")
        out = ints
    return out


def clt_norm_factor(x: Tensor, mode: str, dataset_factor: Tensor) -> Tensor:
    """Per-layer multiplier `(B, L, 1)` / `(L, 1)` taking raw `x (B, L, d)` to norm sqrt(d)."""
    d = x.shape[-1]
    with torch.no_grad():
        if mode == "token-wise":
            return math.sqrt(d) / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        if mode == "batch-wise":
            return (math.sqrt(d) / x.norm(dim=-1).mean(0).clamp_min(_EPS))[:, None]
        if mode == "dataset-wise":
            return dataset_factor.to(x)[:, None]
        if mode == "inference":
            return torch.ones((), dtype=x.dtype, device=x.device)
    raise ValueError(f"unknown norm_activation {mode!r}")


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


@torch.no_grad()
def initialize_clt(model: CrossLayerTranscoder, initializer: Any, sample_in: Tensor, sample_out: Tensor | None,
                   *, k: int | None = None) -> None:
    """Per-layer dataset norm factors; decoder rows (Kaiming or active subspace of each target
    layer's sample) at the default norm; encoder columns random at the same norm (or the
    own-layer decoder block transposed when widths agree); b_dec zeros or geometric median per
    layer; JumpReLU thresholds; search of one decoder norm for all rows (encoder held, so the
    reconstruction is linear in it: closed-form for TopK/ReLU, see `init_search`)."""
    from saeops.runtime.models.init import SEARCH_MAX_TOKENS, _unit_rows
    from saeops.runtime.models.init_search import search_decoder_norm

    if sample_out is None:
        raise ValueError("a clt needs output activations to initialise (spec.sae.hookPointsOut)")
    L = model.n_layers
    if sample_in.ndim != 3 or sample_in.shape[1] != L or sample_out.ndim != 3 or sample_out.shape[1] != L:
        raise ValueError(f"a clt initialises from per-layer samples stacked to (N, {L}, d); got "
                         f"{tuple(sample_in.shape)} / {tuple(sample_out.shape)} (see models.init_inputs)")
    spec = initializer.spec
    gen = initializer._generator()
    dev, dt = model.W_enc.device, model.W_enc.dtype
    x_in = sample_in.reshape(-1, L, model.d_in).to(dev, dt)
    x_out = sample_out.reshape(-1, L, model.d_out).to(dev, dt)
    if model.spec.norm_activation == "dataset-wise":
        model.set_dataset_norm_factors(
            [compute_dataset_norm_factor(x_in[:, s]) for s in range(L)],
            [compute_dataset_norm_factor(x_out[:, t]) for t in range(L)],
        )
    y_n = x_out * model.output_factor(x_out)
    norm = spec.init_decoder_norm or 0.1 * math.sqrt(model.d_out) / math.sqrt(model.d_layer)
    for t, w in enumerate(model.W_dec):
        rows = initializer.decoder_rows((t + 1) * model.d_layer, y_n[:, t], gen)
        w.copy_((_unit_rows(rows) * norm).reshape(t + 1, model.d_layer, model.d_out).to(dev, dt))
    for s in range(L):
        if spec.init_encoder_with_decoder_transpose and model.d_in == model.d_out:
            model.W_enc[s].copy_(model.W_dec[s][s].T)
        else:
            enc = (torch.rand(model.d_in, model.d_layer, generator=gen, dtype=torch.float64) * 2 - 1)
            model.W_enc[s].copy_((enc / enc.norm(dim=0, keepdim=True) * norm).to(dev, dt))
    model.b_enc.zero_()
    if spec.bias_init_method == "geometric_median":
        model.b_dec.copy_(torch.stack([initializer.median(y_n[:, t]) for t in range(L)]))
    else:
        model.b_dec.zero_()
    jump = model.jumprelu
    if jump is not None:
        log_t = spec.init_log_jumprelu_threshold_value
        jump.log_jumprelu_threshold.fill_(math.log(0.1) if log_t is None else log_t)
    if initializer.searches_norm:
        ctx = LossContext(k=k, sparsity_loss_type="none")
        xs, ys = x_in[:SEARCH_MAX_TOKENS], x_out[:SEARCH_MAX_TOKENS]

        def reconstruct(rows: int | None) -> tuple[Tensor, Tensor]:
            out = model.compute_loss(xs[:rows], ys[:rows], ctx)
            return out.x_hat, out.target

        initializer.last_search = search_decoder_norm(model.set_decoder_norm, reconstruct, norm)
    if spec.init_encoder_bias_with_mean_hidden_pre:
        x_n = x_in * model.input_factor(x_in)
        model.b_enc.copy_(-torch.einsum("bld,lds->bls", x_n, model.W_enc).mean(0))


__all__ = ["check_layers", "clt_norm_factor", "initialize_clt", "per_layer_metrics", "split_sparse_by_layer"]
