"""Lorsa: low-rank sparse attention (He et al. 2025, "Towards understanding the nature of
attention superposition").

An attention layer rebuilt from many rank-1 ("single-dimension") OV heads that share a few QK
heads. For normalised input `x (B, T, d_in)`:

    pattern_h = softmax(causal(q_h k_h^T / sqrt(d_qk)))      h = 1..n_qk_heads
    z_i       = sum_s pattern_{g(i)}[t, s] * (x_s . W_V[:, i] + b_V[i])     i = 1..n_ov_heads (= d_sae)
    f         = act(z)                                         (TopK over heads per token)
    y_hat     = f @ W_O + b_O

OV head `i` uses QK head `g(i) = i // (n_ov / n_qk)` (contiguous groups). The OV heads are
the dictionary's latents: `W_O` is the decoder, its row norms gate the activation like an SAE's.

Batches are sequences: `compute_loss(x_in (B, T, d_in), x_out (B, T, d_out), ctx)` with
`ctx.attention_mask (B, T)` marking real tokens (padding is never attended to, nor scored).
Latent statistics (`LossOutput.acts`, `x_hat`, `target`) cover the real tokens only, flattened
to `(N, .)`, so the trainer's per-token metrics apply unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from saeops.api.training import DictionarySpec, LorsaSpec
from saeops.runtime.models.activation import JumpReLU, build_activation
from saeops.runtime.models.base import FeatureActs, LossContext, LossOutput, SparseDictionary
from saeops.runtime.models.hooks import is_attention_output, layer_of
from saeops.runtime.models.losses import (
    aux_k_loss,
    mse_loss,
    power_loss,
    resolve_sparsity_loss_type,
    tanh_loss,
)


def check_lorsa_spec(spec: DictionarySpec, d_sae: int) -> LorsaSpec:
    """Hook points and head counts; errors name the offending field."""
    out = spec.hook_point_out or ""
    if not is_attention_output(out):
        raise ValueError(
            f"spec.sae.hookPointOut: lorsa reconstructs an attention layer's output "
            f"(blocks.N.hook_attn_out or blocks.N.attn.hook_out), got {out or 'unset'!r}"
        )
    if layer_of(spec.hook_point_in or "") != layer_of(out):
        raise ValueError(
            f"spec.sae.hookPointIn: lorsa reads the input of the same attention layer as {out} "
            f"(e.g. blocks.{layer_of(out)}.ln1.hook_out), got {spec.hook_point_in!r}"
        )
    lorsa = spec.lorsa or LorsaSpec()
    if d_sae % lorsa.n_qk_heads:
        raise ValueError(f"spec.sae.lorsa.nQkHeads={lorsa.n_qk_heads} must divide the OV head count dSae={d_sae}")
    return lorsa


def rotary(x: Tensor, base: float) -> Tensor:
    """Rotary position embedding of `x (B, H, T, d)` (GPT-NeoX / TransformerLens half-split)."""
    d = x.shape[-1] - x.shape[-1] % 2
    half = d // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float64) / half)
    angles = torch.arange(x.shape[-2], device=x.device, dtype=torch.float64)[:, None] * freqs
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:d]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([rotated, x[..., d:]], dim=-1)


class LowRankSparseAttention(SparseDictionary):
    """Lorsa with `W_Q, W_K (n_qk, d_in, d_qk)`, `b_Q, b_K (n_qk, d_qk)`, `W_V (d_in, d_sae)`,
    `b_V (d_sae,)`, `W_O (d_sae, d_out)`, `b_O (d_out,)`."""

    dictionary_type = "lorsa"

    def __init__(self, spec: DictionarySpec, d_in: int, d_out: int | None = None):
        super().__init__(spec, d_in, d_out)
        self.lorsa = check_lorsa_spec(spec, self.d_sae)
        h, dk, dt = self.lorsa.n_qk_heads, self.lorsa.d_qk_head, self.dtype
        self.n_qk_heads, self.d_qk_head = h, dk
        self.W_Q = nn.Parameter(torch.empty(h, self.d_in, dk, dtype=dt))
        self.W_K = nn.Parameter(torch.empty(h, self.d_in, dk, dtype=dt))
        self.b_Q = nn.Parameter(torch.zeros(h, dk, dtype=dt))
        self.b_K = nn.Parameter(torch.zeros(h, dk, dtype=dt))
        self.W_V = nn.Parameter(torch.empty(self.d_in, self.d_sae, dtype=dt))
        self.b_V = nn.Parameter(torch.zeros(self.d_sae, dtype=dt))
        self.W_O = nn.Parameter(torch.empty(self.d_sae, self.d_out, dtype=dt))
        self.b_O = nn.Parameter(torch.zeros(self.d_out, dtype=dt))
        self.activation = build_activation(
            spec.act_fn, self.d_sae, top_k=spec.top_k, window=spec.jumprelu_threshold_window, dtype=dt
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.d_in)
        for w in (self.W_Q, self.W_K, self.W_V):
            w.uniform_(-bound, bound)
        self.W_O.uniform_(-1.0 / math.sqrt(self.d_out), 1.0 / math.sqrt(self.d_out))
        for b in (self.b_Q, self.b_K, self.b_V, self.b_O):
            b.zero_()

    # -- pieces ----------------------------------------------------------------------------

    @property
    def jumprelu(self) -> JumpReLU | None:
        return self.activation if isinstance(self.activation, JumpReLU) else None

    @property
    def W_dec(self) -> Tensor:
        return self.W_O

    def decoder_norms(self) -> Tensor:
        return self.W_O.norm(dim=-1)

    @torch.no_grad()
    def set_decoder_norm(self, norm: float | Tensor) -> None:
        target = torch.as_tensor(norm, dtype=self.W_O.dtype, device=self.W_O.device)
        self.W_O.mul_((target / self.decoder_norms().clamp_min(1e-12)).reshape(-1, 1))

    def patterns(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """`(B, n_qk, T, T)` causal attention patterns of normalised `x (B, T, d_in)`."""
        q = torch.einsum("btd,hdk->bhtk", x, self.W_Q) + self.b_Q[None, :, None]
        k = torch.einsum("btd,hdk->bhtk", x, self.W_K) + self.b_K[None, :, None]
        if self.lorsa.positional_embedding == "rotary":
            q, k = rotary(q, self.lorsa.rotary_base), rotary(k, self.lorsa.rotary_base)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_qk_head)
        T = x.shape[1]
        allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        if mask is not None:
            # Padding keys are never attended to; a padding query still sees itself (no NaN rows).
            allowed = (allowed & mask[:, None, None, :].bool()) | torch.eye(T, dtype=torch.bool, device=x.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
        return scores.softmax(-1)

    def head_outputs(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """`(B, T, d_sae)` pre-activations z of every OV head."""
        B, T, _ = x.shape
        pattern = self.patterns(x, mask)
        v = (x @ self.W_V + self.b_V).reshape(B, T, self.n_qk_heads, -1)
        z = torch.einsum("bhts,bshj->bthj", pattern, v)
        return z.reshape(B, T, self.d_sae)

    def _activate(self, z: Tensor, k: int | None) -> FeatureActs:
        scale = self.decoder_norms().detach() if self.spec.sparsity_include_decoder_norm else None
        return self.activation(z, k=k or self.spec.top_k, score_scale=scale)

    def _encode_normed(self, x: Tensor, k: int | None = None) -> FeatureActs:
        """Activations of every token of `x (B, T, d_in)`, flattened to `(B*T, d_sae)`."""
        z = self.head_outputs(x.to(self.dtype))
        return self._activate(z.reshape(-1, self.d_sae), k)

    def decode(self, acts: FeatureActs | Tensor) -> Tensor:
        if isinstance(acts, Tensor):
            acts = FeatureActs.from_dense(acts)
        from saeops.runtime.models import _ops

        if acts.is_sparse:
            return _ops.sparse_decode(acts.indices, acts.values, self.W_O, self.b_O)
        return acts.dense() @ self.W_O + self.b_O

    def forward(self, x: Tensor, k: int | None = None, mask: Tensor | None = None) -> Tensor:
        """Raw `(B, T, d_in)` -> raw `(B, T, d_out)` attention-output reconstruction."""
        x = x.to(self.dtype)
        f_in = self.input_factor(x).to(x.dtype)
        B, T, _ = x.shape
        z = self.head_outputs(x * f_in, mask)
        x_hat = self.decode(self._activate(z.reshape(-1, self.d_sae), k)).reshape(B, T, self.d_out)
        if self.spec.norm_activation in ("dataset-wise", "inference"):
            return x_hat / self.norm_factor_out.to(x_hat.dtype)
        return x_hat / f_in

    # -- loss ------------------------------------------------------------------------------

    def compute_loss(self, x_in: Tensor, x_out: Tensor | None, ctx: LossContext) -> LossOutput:
        if x_in.ndim != 3 or x_out is None or x_out.ndim != 3:
            raise ValueError("lorsa trains on sequences: x_in and x_out must be (batch, tokens, width)")
        x_in, x_out = x_in.to(self.dtype), x_out.to(self.dtype)
        x_n = x_in * self.input_factor(x_in)
        target_all = x_out * self.output_factor(x_out)
        mask = ctx.attention_mask
        z = self.head_outputs(x_n, mask)
        if mask is not None:
            keep = mask.to(torch.bool).reshape(-1)
            z, target = z.reshape(-1, self.d_sae)[keep], target_all.reshape(-1, self.d_out)[keep]
        else:
            z, target = z.reshape(-1, self.d_sae), target_all.reshape(-1, self.d_out)
        acts = self._activate(z, ctx.k)
        x_hat = self.decode(acts)
        mse = mse_loss(x_hat, target)
        loss = mse
        terms: dict[str, Tensor] = {"mse": mse.detach()}
        norms = self.decoder_norms()
        kind = resolve_sparsity_loss_type(self.spec.act_fn, ctx.sparsity_loss_type)
        if kind in ("power", "tanh"):
            dense = acts.dense()
            sparsity = (power_loss(dense, norms, ctx.l1_coefficient, ctx.p) if kind == "power"
                        else tanh_loss(dense, norms, ctx.l1_coefficient, ctx.tanh_stretch_coefficient))
            loss = loss + sparsity
            terms["sparsity"] = sparsity.detach()
        elif kind != "none":
            raise ValueError(f"spec.trainer.sparsityLossType {kind!r} is not supported for lorsa")
        jump = self.jumprelu
        if jump is not None and ctx.lp_coefficient:
            from saeops.runtime.models.losses import jumprelu_lp_loss

            lp = jumprelu_lp_loss(z, jump.threshold, norms, ctx.lp_coefficient,
                                  gated=self.spec.sparsity_include_decoder_norm)
            loss = loss + lp
            terms["lp"] = lp.detach()
        if self.spec.is_topk_family and ctx.aux_k_coefficient > 0 and ctx.dead_mask is not None:
            dead = ctx.dead_mask.to(z.device).nonzero().squeeze(-1)
            if dead.numel():
                scale = norms.detach()[dead] if self.spec.sparsity_include_decoder_norm else None
                aux = aux_k_loss(z[:, dead], self.W_O[dead], target - x_hat, target,
                                 ctx.k_aux or max(self.d_out // 2, 1), ctx.aux_k_coefficient, scale)
                loss = loss + aux
                terms["aux_k"] = aux.detach()
        terms["l0"] = acts.l0().mean()
        return LossOutput(loss=loss, terms=terms, x_hat=x_hat, target=target, acts=acts)

    # -- init, folding and persistence -----------------------------------------------------

    def initialize_from_sample(self, initializer: Any, sample_in: Tensor, sample_out: Tensor | None,
                               *, k: int | None = None) -> None:
        """Called by `Initializer.initialize` (see `lorsa_init.initialize_lorsa`)."""
        from saeops.runtime.models.lorsa_init import initialize_lorsa

        initialize_lorsa(self, initializer, sample_in, sample_out, k=k)

    @torch.no_grad()
    def _fold_norm_factors(self, a: float, c: float) -> None:
        # Raw input: q, k, v all read x_n = a x, so scale the input weights by a; the output
        # de-normalises by 1/c. The latents (z) are then unchanged, and so are the gates.
        for w in (self.W_Q, self.W_K, self.W_V):
            w.mul_(a)
        self.W_O.div_(c)
        self.b_O.div_(c)
        jump = self.jumprelu
        if jump is not None and self.spec.sparsity_include_decoder_norm:
            jump.log_jumprelu_threshold.sub_(math.log(c))

    def weights_dict(self) -> dict[str, Tensor]:
        out = {n: getattr(self, n) for n in ("W_Q", "W_K", "b_Q", "b_K", "W_V", "b_V", "W_O", "b_O")}
        jump = self.jumprelu
        if jump is not None:
            out["log_jumprelu_threshold"] = jump.log_jumprelu_threshold
        return {k: v.detach() for k, v in out.items()}



__all__ = ["LowRankSparseAttention", "check_lorsa_spec", "rotary"]
