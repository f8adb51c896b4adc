"""Activation functions: small modules mapping pre-activations to `FeatureActs`.

Every activation takes the pre-activations `pre` (B, d_sae) and, at call time, the current
`k` (TopK family; the trainer's k schedule changes it every step) and an optional positive
`score_scale` (d_sae,). When given (`sparsity_include_decoder_norm`), gating decisions are
made on `score = pre * score_scale` (pre-activation times decoder norm), while the returned
activation values stay in the unscaled `pre` space.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from saeops.kernels import select
from saeops.runtime.models.acts import FeatureActs


def topk_select(pre: Tensor, k: int, score_scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """TopK on computed pre-activations `(B, n)` (GLU encoders, CLT layers, Lorsa, Aux-K):
    selected on `pre * score_scale`; values are the ReLU of the (unscaled) pre-activations at
    the chosen latents, a gather, so the backward stays sparse."""
    scores = pre if score_scale is None else pre * score_scale
    indices = select.topk(scores, k)[1]
    return pre.gather(-1, indices).relu(), indices


def batchtopk_select(pre: Tensor, k: int, score_scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """BatchTopK on computed pre-activations: the top `k * B` of the batch, padded per row."""
    scores = pre if score_scale is None else pre * score_scale
    indices, keep = select.batchtopk(scores.detach(), pre.detach(), k)
    return (pre.gather(-1, indices) * keep).relu(), indices


DEFAULT_THRESHOLD = 0.1
"""JumpReLU's initial threshold (in score space)."""


class ActivationFunction(nn.Module):
    """Base: `forward(pre, *, k=None, score_scale=None) -> FeatureActs`."""

    def forward(self, pre: Tensor, *, k: int | None = None, score_scale: Tensor | None = None) -> FeatureActs:
        raise NotImplementedError


class ReLU(ActivationFunction):
    """`f = max(pre, 0)`. Gating on `pre * score_scale > 0` is the same as `pre > 0` (scale > 0)."""

    def forward(self, pre: Tensor, *, k: int | None = None, score_scale: Tensor | None = None) -> FeatureActs:
        return FeatureActs.from_dense(pre.relu(), hidden_pre=pre)


class _JumpReLUSTE(torch.autograd.Function):
    """`y = s * H(s - theta)` with the straight-through pseudo-derivatives of Rajamanoharan
    et al. (2024) and Anthropic's January 2025 update (rectangle kernel of width eps):

        dy/ds     = H(s - theta)                                    (the jump gets no gradient)
        dy/dtheta = -(theta / eps) * K((s - theta) / eps) * 1[s > 0],  K(u) = 1[|u| < 1/2]

    i.e. the threshold only receives gradient from entries within eps/2 of it, and the
    chain rule multiplies by the incoming gradient (summed over the batch). The parameter
    is log(theta); autograd through `exp` adds the factor theta for d/dlog(theta).
    The extra `s > 0` factor (as in lm_saes) keeps a wide default window from letting
    negative pre-activations, which can never fire, pull on a small positive threshold.
    """

    @staticmethod
    def forward(ctx: Any, s: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(s, theta)
        ctx.eps = eps
        return s * (s > theta)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        s, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_s = grad_out * (s > theta)
        in_window = ((s - theta).abs() < eps / 2) & (s > 0)
        grad_theta = (grad_out * in_window * (-theta / eps)).reshape(-1, theta.shape[-1]).sum(0)
        return grad_s, grad_theta.reshape(theta.shape), None


class JumpReLU(ActivationFunction):
    """`f = pre * H(score - e^t)` with a learned log threshold `t` per latent (see `_JumpReLUSTE`)."""

    def __init__(self, d_sae: int, window: float, *, dtype: torch.dtype | None = None):
        super().__init__()
        self.window = float(window)
        self.log_jumprelu_threshold = nn.Parameter(torch.empty(d_sae, dtype=dtype))
        self.reset_threshold()

    @torch.no_grad()
    def reset_threshold(self, log_threshold: float | None = None) -> None:
        """Every log threshold to `log_threshold` (`initLogJumpreluThresholdValue`); None: log(0.1)."""
        self.log_jumprelu_threshold.fill_(math.log(DEFAULT_THRESHOLD) if log_threshold is None else log_threshold)

    @property
    def threshold(self) -> Tensor:
        """Thresholds `e^t` (in score space)."""
        return self.log_jumprelu_threshold.exp()

    def forward(self, pre: Tensor, *, k: int | None = None, score_scale: Tensor | None = None) -> FeatureActs:
        theta = self.threshold.to(pre.dtype)
        if score_scale is None:
            acts = _JumpReLUSTE.apply(pre, theta, self.window)
        else:
            # Gate in score space, then scale back; d(acts)/d(score_scale) is then exactly zero,
            # so the decoder norm is not pushed around by the gate.
            acts = _JumpReLUSTE.apply(pre * score_scale, theta, self.window) / score_scale
        return FeatureActs.from_dense(acts, hidden_pre=pre)


class TopK(ActivationFunction):
    """Keep the k largest scores per token (values `relu(pre)`); L0 == k."""

    select = staticmethod(topk_select)

    def __init__(self, default_k: int):
        super().__init__()
        self.default_k = default_k

    def forward(self, pre: Tensor, *, k: int | None = None, score_scale: Tensor | None = None) -> FeatureActs:
        values, indices = self.select(pre, k or self.default_k, score_scale)
        return FeatureActs.from_sparse(values, indices, pre.shape[-1], hidden_pre=pre)


class BatchTopK(TopK):
    """Keep the `k * B` largest scores over the whole batch (an average L0 of k per token)."""

    select = staticmethod(batchtopk_select)


def build_activation(
    act_fn: str, d_sae: int, *, top_k: int, window: float, dtype: torch.dtype | None = None
) -> ActivationFunction:
    """The activation module for a `DictionarySpec.act_fn`."""
    if act_fn == "relu":
        return ReLU()
    if act_fn == "jumprelu":
        return JumpReLU(d_sae, window, dtype=dtype)
    if act_fn == "topk":
        return TopK(top_k)
    if act_fn == "batchtopk":
        return BatchTopK(top_k)
    raise NotImplementedError(f"actFn {act_fn!r} is not available for this dictionary type")


__all__ = ["ActivationFunction", "BatchTopK", "JumpReLU", "ReLU", "TopK", "batchtopk_select", "build_activation",
           "topk_select"]
