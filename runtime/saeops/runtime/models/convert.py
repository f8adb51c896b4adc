"""BatchTopK -> JumpReLU conversion.

BatchTopK needs the whole batch to decide which latents fire, so its activations of one token
depend on the other tokens; at inference one wants a per-token rule. Bussmann et al. (2024)
replace it by a threshold: the average, over batches of a sample, of the smallest activation
BatchTopK kept -- per feature, or one global value. Thresholds are measured in the space the
gate compares (score = pre * ||W_dec_i|| with `sparsity_include_decoder_norm`, else pre), which
is the space JumpReLU gates in, so the result is a plain JumpReLU dictionary of the same kind.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from saeops.runtime.models.base import SparseDictionary
from saeops.runtime.models.registry import build_dictionary


def _scores(model: SparseDictionary, x: Tensor) -> Tensor:
    """Dense `(B, d_sae)` gate scores of the latents BatchTopK kept (0 elsewhere)."""
    acts = model.encode(x).dense()
    if model.spec.sparsity_include_decoder_norm:
        acts = acts * model.decoder_norms().detach()
    return acts


@torch.no_grad()
def estimate_thresholds(model: SparseDictionary, sample: Tensor, *, batch_size: int, per_feature: bool = True) -> Tensor:
    """`(d_sae,)` thresholds: per batch of `batch_size` tokens, the minimum positive score of each
    feature (or of all features), averaged over the batches where it fired. Features that never
    fired get the largest threshold seen (they stay off)."""
    total = torch.zeros(model.d_sae, dtype=torch.float64)
    count = torch.zeros(model.d_sae, dtype=torch.float64)
    glob: list[float] = []
    for start in range(0, sample.shape[0] - batch_size + 1, batch_size):
        s = _scores(model, sample[start:start + batch_size]).double().cpu()
        pos = torch.where(s > 0, s, torch.full_like(s, math.inf))
        if per_feature:
            mins = pos.min(0).values
            fired = torch.isfinite(mins)
            total[fired] += mins[fired]
            count[fired] += 1
        elif torch.isfinite(pos.min()):
            glob.append(float(pos.min()))
    if not per_feature:
        if not glob:
            raise ValueError("no latent fired on the sample")
        return torch.full((model.d_sae,), sum(glob) / len(glob), dtype=torch.float64)
    if not bool((count > 0).any()):
        raise ValueError("no latent fired on the sample")
    theta = total / count.clamp_min(1)
    theta[count == 0] = theta[count > 0].max()
    return theta


@torch.no_grad()
def _l0_ev(model: SparseDictionary, x_in: Tensor, x_out: Tensor, batch_size: int) -> tuple[float, float]:
    l0, sse, n = 0.0, 0.0, 0
    for start in range(0, x_in.shape[0], batch_size):
        xb, yb = x_in[start:start + batch_size], x_out[start:start + batch_size]
        l0 += float((model.encode(xb).dense() != 0).sum())
        sse += float((model(xb) - yb).pow(2).sum())
        n += xb.shape[0]
    sst = float((x_out - x_out.mean(0)).pow(2).sum())
    return l0 / n, 1.0 - sse / max(sst, 1e-30)


@torch.no_grad()
def convert_batchtopk_to_jumprelu(
    model: SparseDictionary,
    sample: Tensor,
    per_feature: bool = True,
    *,
    held_out: tuple[Tensor, Tensor | None] | None = None,
    batch_size: int = 4096,
) -> tuple[SparseDictionary, dict[str, Any]]:
    """A JumpReLU copy of a BatchTopK SAE/transcoder, and a report of L0/EV before and after.

    `sample (N, d_in)`: raw activations the thresholds are estimated on, in batches of
    `batch_size` (use the training batch size: BatchTopK's cut depends on it). `held_out`:
    `(x_in, x_out)` raw activations for the report (x_out None for an SAE); by default the last
    fifth of the sample is held out."""
    if model.spec.act_fn != "batchtopk" or model.spec.type not in ("sae", "transcoder"):
        raise ValueError(f"spec.sae.actFn: conversion needs a batchtopk sae or transcoder, got "
                         f"{model.spec.act_fn} {model.spec.type}")
    sample = sample.reshape(-1, model.d_in)
    if held_out is None:
        cut = sample.shape[0] * 4 // 5
        sample, held_out = sample[:cut], (sample[cut:], None)
    x_in, x_out = held_out
    x_out = x_in if x_out is None else x_out
    batch_size = min(batch_size, sample.shape[0])
    theta = estimate_thresholds(model, sample, batch_size=batch_size, per_feature=per_feature)

    spec = model.spec.model_copy(update={"act_fn": "jumprelu"})
    new = build_dictionary(spec, model.d_in, model.d_out).to(next(model.parameters()).device)
    weights = {k: v for k, v in model.weights_dict().items()}
    weights["log_jumprelu_threshold"] = theta.clamp_min(1e-12).log().to(weights["W_dec"])
    new.load_weights(weights)
    new.norm_factor_in.copy_(model.norm_factor_in)
    new.norm_factor_out.copy_(model.norm_factor_out)
    new.eval()

    l0_b, ev_b = _l0_ev(model, x_in, x_out, batch_size)
    l0_a, ev_a = _l0_ev(new, x_in, x_out, batch_size)
    report = {
        "k": model.spec.top_k,
        "per_feature": per_feature,
        "l0_before": l0_b,
        "l0_after": l0_a,
        "explained_variance_before": ev_b,
        "explained_variance_after": ev_a,
        "threshold_mean": float(theta.mean()),
        "tokens_sampled": int(sample.shape[0]),
        "tokens_held_out": int(x_in.shape[0]),
    }
    return new, report


__all__ = ["convert_batchtopk_to_jumprelu", "estimate_thresholds"]
