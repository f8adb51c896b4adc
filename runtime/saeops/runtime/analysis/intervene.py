"""Interventions with a trained dictionary: steer along a feature, ablate a feature.

Both return the model's output (`lm.logits` semantics: next-token logits, or the last hidden
state for encoders without an LM head) with the activation at a hook point changed, through
`lm.forward_with_replacement`, so they work for the TransformerLens and Hugging Face backends.

Spaces: dictionaries encode raw activations but decode into their normalised space;
`_raw_scale` gives the divisor back to raw units (the norm factor, constant for dataset-wise
and inference, per token for token-/batch-wise), exactly as `SparseDictionary.forward` does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saeops.runtime.analysis.analyze import AnalysisError, check_model
from saeops.runtime.models import SparseAutoEncoder, SparseDictionary


def _check(model: SparseDictionary, feature: int) -> SparseAutoEncoder:
    sae = check_model(model)
    if not 0 <= feature < sae.d_sae:
        raise AnalysisError(f"feature {feature} is outside 0..{sae.d_sae - 1}")
    return sae


def _raw_scale(model: SparseDictionary, x_in: Tensor) -> Tensor:
    """Divisor taking the dictionary's normalised output space to raw activations (per token)."""
    if model.spec.norm_activation in ("dataset-wise", "inference"):
        return model.norm_factor_out.to(x_in.dtype)
    return model.input_factor(x_in).to(x_in.dtype)


def feature_direction(model: SparseDictionary, feature: int, x: Tensor) -> Tensor:
    """`W_dec[feature]` in raw units for the activations `x (rows, d)`: `(rows or 1, d)`."""
    sae = _check(model, feature)
    row = sae.W_dec[feature].to(x.device, x.dtype)
    return row / _raw_scale(sae, x)


@torch.no_grad()
def steer(lm: Any, model: SparseDictionary, tokens: Tensor, feature: int, strength: float, hook_point: str | None = None,
          attention_mask: Tensor | None = None) -> Tensor:
    """Output with `strength * W_dec[feature]` (in raw units) added at every position of
    `hook_point` (default: the dictionary's output hook). Strength 0 changes nothing."""
    _check(model, feature)
    hook = hook_point or model.spec.out_hook
    if strength == 0:
        # Adding a zero vector is the identity; still go through the hook so the output is
        # computed the same way as every other strength.
        return lm.forward_with_replacement(tokens, hook, lambda x: x, attention_mask)

    def add(x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        return (flat + strength * feature_direction(model, feature, flat)).reshape(x.shape)

    return lm.forward_with_replacement(tokens, hook, add, attention_mask)


def _ablation_delta(model: SparseDictionary, x_in: Tensor, feature: int) -> Tensor:
    """Raw change of the reconstruction when `feature` is zeroed: `decode(f') - decode(f)`.

    Splicing `x_out + delta` equals `reconstruction(f') + (x_out - reconstruction(f))`, i.e.
    the ablated reconstruction plus the dictionary's error term, but is exact: when the feature
    is inactive both decodes are bitwise equal, delta is 0, and the activation is unchanged
    (adding and subtracting the reconstruction would round).
    """
    flat = x_in.reshape(-1, x_in.shape[-1]).to(model.dtype)
    acts = model.encode(flat)
    before = model.decode(acts)
    if acts.is_sparse:
        values = acts.values.masked_fill(acts.indices == feature, 0)
        ablated = type(acts).from_sparse(values, acts.indices, acts.d_sae)
    else:
        dense = acts.dense().clone()
        dense[:, feature] = 0
        ablated = type(acts).from_dense(dense)
    delta = (model.decode(ablated) - before) / _raw_scale(model, flat)
    return delta.reshape(*x_in.shape[:-1], -1)


@torch.no_grad()
def ablate(lm: Any, model: SparseDictionary, tokens: Tensor, feature: int, hook_point: str | None = None,
           attention_mask: Tensor | None = None) -> Tensor:
    """Output with `feature` zeroed: the activation at the dictionary's output hook (or
    `hook_point`) becomes the reconstruction without the feature plus the error term.

    An SAE reads and writes the same hook, so the replacement is computed in the same forward;
    a transcoder reads `hook_point_in`, whose activations come from a clean forward first
    (the model is frozen and deterministic, so they equal those of the spliced forward).
    """
    _check(model, feature)
    hook_in, hook_out = model.spec.hook_point_in, hook_point or model.spec.out_hook
    if hook_in == hook_out:
        def replace(x: Tensor) -> Tensor:
            return x + _ablation_delta(model, x, feature).to(x.dtype)

        return lm.forward_with_replacement(tokens, hook_out, replace, attention_mask)
    x_in = lm.activations(tokens, [hook_in], attention_mask)[hook_in]
    delta = _ablation_delta(model, x_in, feature)
    return lm.forward_with_replacement(tokens, hook_out, lambda x: x + delta.to(x.device, x.dtype), attention_mask)


__all__ = ["ablate", "feature_direction", "steer"]
