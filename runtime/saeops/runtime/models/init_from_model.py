"""Initialisation from the language model's own weights (after `Initializer.initialize`, since
it needs the dataset-wise norm factors):

- `initialize_tc_with_mlp` (transcoder): reading block L's MLP input and writing its output
  with `d_sae == d_mlp`, the MLP *is* a (dense, GELU) transcoder: `W_enc = W_in`,
  `b_enc = b_in`, `W_dec = W_out`, `b_dec = b_out`, rescaled to the normalised spaces.
- `lorsa.initFromModel`: the QK heads copy the attention layer's `W_Q, W_K, b_Q, b_K` when
  `nQkHeads == n_heads` and `dQkHead == d_head`.

`lm` is a `saeops.runtime.lm` TransformerLensModel (its TransformerBridge under `.bridge`) or a
TransformerBridge itself; weights are read through TransformerLens' `W_Q` / `W_in` views.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from saeops.api.training import InitializerSpec
from saeops.runtime.models.base import SparseDictionary
from saeops.runtime.models.hooks import is_mlp_pair, layer_of
from saeops.runtime.models.lorsa import LowRankSparseAttention
from saeops.runtime.models.transcoder import Transcoder

log = logging.getLogger("saeops.models")


def bridge_of(lm: Any) -> Any:
    """The TransformerBridge behind a `TransformerLensModel`, or `lm` itself when it is one."""
    from transformer_lens.model_bridge import TransformerBridge

    from saeops.runtime.lm.tl_backend import TransformerLensModel

    if isinstance(lm, TransformerLensModel):
        return lm.bridge
    if isinstance(lm, TransformerBridge):
        return lm
    raise ValueError("initialising from the model needs a TransformerLens model (spec.model.backend: transformer-lens)")


def _scalar(t: torch.Tensor) -> float:
    return float(t) if t.numel() == 1 else float("nan")


@torch.no_grad()
def initialize_transcoder_with_mlp(model: SparseDictionary, lm: Any) -> None:
    """Copy block L's MLP into a transcoder (see module docstring); errors name the field."""
    spec = model.spec
    field = "spec.initializer.initializeTcWithMlp"
    if not isinstance(model, Transcoder):
        raise ValueError(f"{field} applies to type: transcoder, not {spec.type}")
    hin, hout = spec.hook_point_in or "", spec.hook_point_out or ""
    if not is_mlp_pair(hin, hout):
        raise ValueError(f"{field}: hook points must be one block's MLP input and output "
                         f"(e.g. blocks.0.ln2.hook_out -> blocks.0.hook_mlp_out), got {hin} -> {hout}")
    if spec.norm_activation not in ("dataset-wise", "inference"):
        raise ValueError(f"{field} needs spec.sae.normActivation dataset-wise (a fixed input scale)")
    mlp = bridge_of(lm).blocks[layer_of(hin)].mlp
    W_in, W_out = mlp.W_in.detach(), mlp.W_out.detach()
    if W_in.shape != model.W_enc.shape:
        raise ValueError(f"{field}: dSae={model.d_sae} must equal the MLP width {W_in.shape[-1]}")
    if model.W_gate is not None:
        raise ValueError(f"{field} does not apply with spec.sae.useGluEncoder")
    a, c = _scalar(model.norm_factor_in), _scalar(model.norm_factor_out)
    dev, dt = model.W_enc.device, model.W_enc.dtype
    # Normalised: pre = (a x) (W_in / a) + b_in; y_n = c y = f (c W_out) + c b_out.
    model.W_enc.copy_((W_in / a).to(dev, dt))
    model.b_enc.copy_(mlp.b_in.detach().to(dev, dt))
    model.W_dec.copy_((W_out * c).to(dev, dt))
    if model.b_dec is not None:
        model.b_dec.copy_((mlp.b_out.detach() * c).to(dev, dt))


@torch.no_grad()
def initialize_lorsa_qk_from_model(model: LowRankSparseAttention, lm: Any) -> None:
    """Copy the attention layer's QK weights into a Lorsa's QK heads."""
    field = "spec.sae.lorsa.initFromModel"
    attn = bridge_of(lm).blocks[layer_of(model.spec.hook_point_out or "")].attn
    W_Q, W_K = attn.W_Q.detach(), attn.W_K.detach()
    if W_Q.shape != model.W_Q.shape:
        raise ValueError(f"{field}: nQkHeads x dModel x dQkHead {tuple(model.W_Q.shape)} must match the "
                         f"model's attention {tuple(W_Q.shape)}")
    if model.spec.norm_activation not in ("dataset-wise", "inference"):
        raise ValueError(f"{field} needs spec.sae.normActivation dataset-wise (a fixed input scale)")
    a = _scalar(model.norm_factor_in)
    dev, dt = model.W_Q.device, model.W_Q.dtype
    model.W_Q.copy_((W_Q / a).to(dev, dt))
    model.W_K.copy_((W_K / a).to(dev, dt))
    model.b_Q.copy_(attn.b_Q.detach().to(dev, dt))
    model.b_K.copy_(attn.b_K.detach().to(dev, dt))


def initialize_from_language_model(model: SparseDictionary, lm: Any, spec: InitializerSpec) -> bool:
    """Apply whichever model-weight initialisation the specs ask for; True when one ran.
    Call after `Initializer.initialize` (it needs the norm factors)."""
    if spec.initialize_tc_with_mlp:
        initialize_transcoder_with_mlp(model, lm)
        return True
    if isinstance(model, LowRankSparseAttention) and model.spec.lorsa is not None and model.spec.lorsa.init_from_model:
        initialize_lorsa_qk_from_model(model, lm)
        return True
    return False


__all__ = ["bridge_of", "initialize_from_language_model", "initialize_lorsa_qk_from_model",
           "initialize_transcoder_with_mlp"]
