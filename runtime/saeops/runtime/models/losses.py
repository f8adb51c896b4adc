"""The loss of one batch: its settings (`LossContext`), its result (`LossOutput`) and its terms,
each a plain function returning a scalar tensor (already weighted).

Conventions (B tokens, d output width, d_sae latents; everything in the normalised space):

- Reconstruction: `mse = mean_tokens sum_d (x_hat - x)^2` -- summed over the feature
  dimension and averaged over tokens (SAELens and current lm_saes). With inputs normalised to
  norm sqrt(d) the initial value is about d * FVU, and Adam (lr 4e-4) is invariant to that
  overall scale; only the ratio to the sparsity coefficients matters, which the per-token
  sum keeps independent of batch size.
- Sparsity penalties weight each latent by its decoder norm `n_i = ||W_dec_i||`, so the model
  cannot shrink activations by growing decoder rows. They are summed over latents and
  averaged over tokens.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from saeops.api.training import TrainerSpec
from saeops.runtime.models.acts import FeatureActs

SparsityLossType = Literal["power", "tanh", "tanh-quad", "none"]


@dataclass
class LossContext:
    """One step's loss settings. `trainer` holds the static ones (penalty type and its
    parameters, the JumpReLU Lp and Aux-K coefficients); None: the loss is the reconstruction
    alone (what the initializer's norm search measures). `k` and `l1_coefficient` are this
    step's scheduled values; `dead_mask` `(d_sae,)` marks latents silent for
    `deadFeatureWindow` tokens (Aux-K); `attention_mask` `(B, T)` marks the real tokens of a
    sequence batch (Lorsa: padding is neither attended to nor scored)."""

    trainer: TrainerSpec | None = None
    k: int | None = None
    l1_coefficient: float = 0.0
    dead_mask: Tensor | None = None
    attention_mask: Tensor | None = None
    sparsity_loss_type: InitVar[Literal["none"] | None] = None
    """Accepted as `"none"` without a trainer (reconstruction only), for callers written
    before `trainer` held the penalty settings."""

    def __post_init__(self, sparsity_loss_type: str | None) -> None:
        if sparsity_loss_type not in (None, "none") or (sparsity_loss_type and self.trainer is not None):
            raise ValueError("LossContext: the sparsity penalty is set by trainer.sparsityLossType")


@dataclass
class LossOutput:
    """Result of `compute_loss`. `terms` are detached scalars of what was added to `loss`
    (mse, sparsity, lp, aux_k) plus `l0` (mean active latents per token)."""

    loss: Tensor
    terms: dict[str, Tensor]
    x_hat: Tensor
    """Reconstruction in the normalised space."""
    target: Tensor
    """Normalised target."""
    acts: FeatureActs
    extras: dict[str, Any] = field(default_factory=dict)


def resolve_sparsity_loss_type(act_fn: str, value: SparsityLossType | None) -> SparsityLossType:
    """Default penalty: `power` for relu/jumprelu, `none` for the TopK family (k enforces sparsity)."""
    if value is not None:
        return value
    return "none" if "topk" in act_fn else "power"


def mse_loss(x_hat: Tensor, target: Tensor) -> Tensor:
    """`mean_tokens sum_d (x_hat - target)^2`."""
    return (x_hat - target).pow(2).sum(-1).mean()


def power_loss(acts: Tensor, decoder_norms: Tensor, coefficient: float, p: float = 1.0) -> Tensor:
    """`lambda * mean_tokens || f * n ||_p` -- the Lp *norm* of the seed formula, i.e.
    `(sum_i (f_i n_i)^p)^(1/p)` per token (for p = 1: the decoder-weighted L1)."""
    return coefficient * torch.linalg.vector_norm(acts * decoder_norms, ord=p, dim=-1).mean()


def tanh_loss(acts: Tensor, decoder_norms: Tensor, coefficient: float, stretch: float = 4.0) -> Tensor:
    """`lambda * mean_tokens sum_i tanh(c f_i n_i)` -- a bounded, L0-like penalty."""
    return coefficient * torch.tanh(stretch * acts * decoder_norms).sum(-1).mean()


def tanh_quad_loss(
    acts: Tensor, decoder_norms: Tensor, coefficient: float, stretch: float = 4.0, frequency_scale: float = 0.01
) -> Tensor:
    """`p_i = mean_tokens tanh(c f_i n_i)`; `lambda * sum_i p_i (1 + p_i / s)`.

    The quadratic term dominates for latents firing on more than about `s` of tokens."""
    p_hat = torch.tanh(stretch * acts * decoder_norms).mean(0)
    return coefficient * (p_hat * (1 + p_hat / frequency_scale)).sum()


def sparsity_loss(
    kind: SparsityLossType, acts: Tensor, decoder_norms: Tensor, coefficient: float, trainer: TrainerSpec
) -> Tensor | None:
    """The penalty `kind` with the trainer's parameters (None for `none`)."""
    match kind:
        case "power":
            return power_loss(acts, decoder_norms, coefficient, trainer.p)
        case "tanh":
            return tanh_loss(acts, decoder_norms, coefficient, trainer.tanh_stretch_coefficient)
        case "tanh-quad":
            return tanh_quad_loss(acts, decoder_norms, coefficient, trainer.tanh_stretch_coefficient,
                                  trainer.frequency_scale)
        case "none":
            return None


def jumprelu_lp_loss(
    hidden_pre: Tensor, threshold: Tensor, decoder_norms: Tensor, coefficient: float, *, gated: bool
) -> Tensor:
    """Anthropic's pre-activation loss: `lambda_p * mean_tokens sum_i ReLU(e^t_i - h_i) n_i`.

    With `gated` (sparsity_include_decoder_norm) the threshold lives in score space
    `s_i = h_i n_i`, where the same penalty reads `ReLU(e^t_i - s_i)` (equal to the formula above
    with the threshold expressed in h-space, `e^t_i / n_i`)."""
    if gated:
        gap = torch.relu(threshold - hidden_pre * decoder_norms)
    else:
        gap = torch.relu(threshold - hidden_pre) * decoder_norms
    return coefficient * gap.sum(-1).mean()


def aux_k_loss(e_hat: Tensor, residual: Tensor, target: Tensor, n_dead: int, k_aux: int, coefficient: float) -> Tensor:
    """Aux-K (Gao et al. 2024): `e_hat`, the reconstruction by the `k_aux` dead latents with the
    largest pre-activations, of the residual `target - x_hat` (detached here); normalised MSE
    `||e_hat - e||^2 / ||target - mean(target)||^2`, scaled by `min(n_dead / k_aux, 1)` (as
    EleutherAI sparsify) so a handful of dead latents does not get the full weight. Rows are
    tokens: `(B, d)` each."""
    e = residual.detach()
    total_variance = (target - target.mean(0)).pow(2).sum().clamp_min(1e-8)
    scale = min(n_dead / k_aux, 1.0)
    return coefficient * scale * (e_hat - e).pow(2).sum() / total_variance


__all__ = [
    "LossContext",
    "LossOutput",
    "SparsityLossType",
    "aux_k_loss",
    "jumprelu_lp_loss",
    "mse_loss",
    "power_loss",
    "resolve_sparsity_loss_type",
    "sparsity_loss",
    "tanh_loss",
    "tanh_quad_loss",
]
