"""The sparse autoencoder.

    x_n   = x * factor                                    (normalisation, see normalize.py)
    x_c   = x_n - b_dec                                   (when use_decoder_bias)
    pre   = x_c @ W_enc + b_enc                           (plain encoder)
    pre   = (x_c @ W_enc + b_enc) * sigmoid(x_c @ W_gate + b_gate)   (use_glu_encoder)
    f     = act(pre; score = pre * ||W_dec_j||)           (gate on scores when
                                                           sparsity_include_decoder_norm)
    x_hat = f @ W_dec + b_dec

Centring by b_dec (SAELens' apply_b_dec_to_input, lm_saes' apply_decoder_bias_to_pre_encoder)
makes b_dec the "origin" of the dictionary: initialised at the geometric median, it lets the
encoder see deviations from the typical activation instead of spending latents on the mean.
The GLU form is lm_saes': the gate multiplies the linear pre-activation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from saeops.api.training import DictionarySpec
from saeops.runtime.models import _ops
from saeops.runtime.models.activation import JumpReLU, build_activation
from saeops.runtime.models.base import FeatureActs, LossContext, LossOutput, SparseDictionary
from saeops.runtime.models.losses import (
    aux_k_loss,
    jumprelu_lp_loss,
    mse_loss,
    power_loss,
    resolve_sparsity_loss_type,
    tanh_loss,
    tanh_quad_loss,
)


class SparseAutoEncoder(SparseDictionary):
    """SAE: reconstructs its input. Parameters `W_enc, b_enc, W_dec, b_dec` (+ `W_gate, b_gate`
    with a GLU encoder, + `log_jumprelu_threshold` for JumpReLU)."""

    dictionary_type = "sae"
    centres_input: bool = True
    """Subtract b_dec from the input before encoding (only meaningful when input and output
    live in the same space; a transcoder turns it off)."""
    requires_square: bool = True

    def __init__(self, spec: DictionarySpec, d_in: int, d_out: int | None = None):
        super().__init__(spec, d_in, d_out)
        if self.requires_square and self.d_out != self.d_in:
            raise ValueError(f"an sae reconstructs its input: d_out={self.d_out} must equal d_in={self.d_in}")
        dt = self.dtype
        self.W_enc = nn.Parameter(torch.empty(self.d_in, self.d_sae, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae, dtype=dt))
        self.W_dec = nn.Parameter(torch.empty(self.d_sae, self.d_out, dtype=dt))
        self.b_dec: nn.Parameter | None
        if spec.use_decoder_bias:
            self.b_dec = nn.Parameter(torch.zeros(self.d_out, dtype=dt))
        else:
            self.register_parameter("b_dec", None)
        self.W_gate: nn.Parameter | None
        self.b_gate: nn.Parameter | None
        if spec.use_glu_encoder:
            self.W_gate = nn.Parameter(torch.empty(self.d_in, self.d_sae, dtype=dt))
            self.b_gate = nn.Parameter(torch.zeros(self.d_sae, dtype=dt))
        else:
            self.register_parameter("W_gate", None)
            self.register_parameter("b_gate", None)
        self.activation = build_activation(
            spec.act_fn, self.d_sae, top_k=spec.top_k, window=spec.jumprelu_threshold_window, dtype=dt
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Default init (the Initializer refines it): Kaiming-uniform decoder, tied encoder."""
        nn.init.kaiming_uniform_(self.W_dec, a=math.sqrt(5))
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        if self.b_dec is not None:
            self.b_dec.zero_()
        if self.W_gate is not None and self.b_gate is not None:
            nn.init.kaiming_uniform_(self.W_gate.T, a=math.sqrt(5))
            self.b_gate.zero_()

    # -- pieces --------------------------------------------------------------------------

    @property
    def jumprelu(self) -> JumpReLU | None:
        return self.activation if isinstance(self.activation, JumpReLU) else None

    def decoder_norms(self) -> Tensor:
        return self.W_dec.norm(dim=-1)

    @torch.no_grad()
    def set_decoder_norm(self, norm: float | Tensor) -> None:
        target = torch.as_tensor(norm, dtype=self.W_dec.dtype, device=self.W_dec.device)
        self.W_dec.mul_((target / self.decoder_norms().clamp_min(1e-12)).reshape(-1, 1))

    def score_scale(self) -> Tensor | None:
        """Decoder norms used for gating (detached: the gate passes them no gradient anyway)."""
        return self.decoder_norms().detach() if self.spec.sparsity_include_decoder_norm else None

    def centre(self, x_n: Tensor) -> Tensor:
        """Subtract b_dec from normalised input (identity without a decoder bias)."""
        return x_n if self.b_dec is None or not self.centres_input else x_n - self.b_dec

    def hidden_pre(self, x_c: Tensor) -> Tensor:
        """Dense pre-activations of centred, normalised input."""
        pre = x_c @ self.W_enc + self.b_enc
        if self.W_gate is not None:
            pre = pre * torch.sigmoid(x_c @ self.W_gate + self.b_gate)
        return pre

    def _encode_normed(self, x: Tensor, k: int | None = None) -> FeatureActs:
        k = k or self.spec.top_k
        x = x.to(self.dtype)
        scale = self.score_scale()
        if self.W_gate is None and self.spec.act_fn in ("topk", "batchtopk"):
            # Fused path: never materialises the dense (B, d_sae) activations; the kernel
            # centres by b_dec itself (a cheaper b_dec gradient than centring here).
            op = _ops.topk_encode if self.spec.act_fn == "topk" else _ops.batchtopk_encode
            bias = self.b_dec if self.b_dec is not None and self.centres_input else None
            values, indices = op(x, self.W_enc, self.b_enc, k, score_scale=scale, input_bias=bias)
            return FeatureActs.from_sparse(values, indices, self.d_sae)
        return self.activation(self.hidden_pre(self.centre(x)), k=k, score_scale=scale)

    def decode(self, acts: FeatureActs | Tensor) -> Tensor:
        if isinstance(acts, Tensor):
            acts = FeatureActs.from_dense(acts)
        if not acts.is_sparse and self.spec.use_triton_kernel:
            dense = acts.dense()
            zero_fraction = (dense == 0).float().mean().item()
            if zero_fraction >= self.spec.sparsity_threshold_for_triton_spmm_kernel:
                return _ops.sparse_decode(acts.indices, acts.values, self.W_dec, self.b_dec)
        if acts.is_sparse:
            return _ops.sparse_decode(acts.indices, acts.values, self.W_dec, self.b_dec)
        out = acts.dense() @ self.W_dec
        return out if self.b_dec is None else out + self.b_dec

    def reconstruct_from(self, acts: FeatureActs, x_n: Tensor) -> Tensor:
        """Normalised reconstruction from the latents (and, for kinds with a skip path, the
        normalised input)."""
        return self.decode(acts)

    def _reconstruct_normed(self, x_n: Tensor, k: int | None = None) -> Tensor:
        return self.reconstruct_from(self._encode_normed(x_n, k), x_n)

    # -- loss ----------------------------------------------------------------------------

    def compute_loss(self, x_in: Tensor, x_out: Tensor | None, ctx: LossContext) -> LossOutput:
        x_in = x_in.to(self.dtype)
        x_out = x_in if x_out is None else x_out.to(self.dtype)
        x_n = x_in * self.input_factor(x_in)
        target = x_out * self.output_factor(x_out)
        acts = self._encode_normed(x_n, ctx.k)
        x_hat = self.reconstruct_from(acts, x_n)

        mse = mse_loss(x_hat, target)
        loss = mse
        terms: dict[str, Tensor] = {"mse": mse.detach()}

        kind = resolve_sparsity_loss_type(self.spec.act_fn, ctx.sparsity_loss_type)
        norms = self.decoder_norms()
        if kind != "none":
            dense = acts.dense()
            if kind == "power":
                sparsity = power_loss(dense, norms, ctx.l1_coefficient, ctx.p)
            elif kind == "tanh":
                sparsity = tanh_loss(dense, norms, ctx.l1_coefficient, ctx.tanh_stretch_coefficient)
            elif kind == "tanh-quad":
                sparsity = tanh_quad_loss(
                    dense, norms, ctx.l1_coefficient, ctx.tanh_stretch_coefficient, ctx.frequency_scale
                )
            else:
                raise ValueError(f"unknown sparsity loss type {kind!r}")
            loss = loss + sparsity
            terms["sparsity"] = sparsity.detach()

        jump = self.jumprelu
        if jump is not None and ctx.lp_coefficient:
            assert acts.hidden_pre is not None
            lp = jumprelu_lp_loss(
                acts.hidden_pre, jump.threshold, norms, ctx.lp_coefficient,
                gated=self.spec.sparsity_include_decoder_norm,
            )
            loss = loss + lp
            terms["lp"] = lp.detach()

        if self.spec.is_topk_family and ctx.aux_k_coefficient > 0:
            aux = self._aux_k(x_n, target, x_hat, acts, ctx)
            loss = loss + aux
            terms["aux_k"] = aux.detach()

        terms["l0"] = acts.l0().mean()
        return LossOutput(loss=loss, terms=terms, x_hat=x_hat, target=target, acts=acts)

    def _aux_k(self, x_n: Tensor, target: Tensor, x_hat: Tensor, acts: FeatureActs, ctx: LossContext) -> Tensor:
        if ctx.dead_mask is None or not bool(ctx.dead_mask.any()):
            return x_hat.new_zeros(())
        dead = ctx.dead_mask.to(x_hat.device).nonzero().squeeze(-1)
        if acts.hidden_pre is not None:
            dead_pre = acts.hidden_pre[:, dead]
        else:
            # Fused TopK path: compute pre-activations of the dead columns only.
            dead_pre = self.centre(x_n) @ self.W_enc[:, dead] + self.b_enc[dead]
        scale = self.score_scale()
        return aux_k_loss(
            dead_pre,
            self.W_dec[dead],
            target - x_hat,
            target,
            ctx.k_aux or max(self.d_out // 2, 1),
            ctx.aux_k_coefficient,
            None if scale is None else scale[dead],
        )

    # -- folding and persistence ---------------------------------------------------------

    @torch.no_grad()
    def _fold_norm_factors(self, a: float, c: float) -> None:
        # Trained map: x_n = a x, pre = (x_n - b) W + b_e, x_hat_raw = (f W_d + b) / c.
        # Folded:      pre' = pre / a, f' = f / a, W_d' = W_d a / c, b' = b / c.
        # Centring with b' = b/c instead of b/a is compensated in b_enc (zero when a == c).
        shift = None
        if self.b_dec is not None and self.centres_input:
            shift = self.b_dec / c - self.b_dec / a
        if self.W_gate is not None and self.b_gate is not None:
            if shift is not None:
                self.b_gate.add_(shift @ (self.W_gate * a))
            self.W_gate.mul_(a)
        self.b_enc.div_(a)
        if shift is not None:
            self.b_enc.add_(shift @ self.W_enc)
        self.W_dec.mul_(a / c)
        if self.b_dec is not None:
            self.b_dec.div_(c)
        jump = self.jumprelu
        if jump is not None:
            # Gated thresholds compare pre * ||W_dec|| (scaled by 1/a * a/c = 1/c); ungated pre (1/a).
            jump.log_jumprelu_threshold.sub_(math.log(c if self.spec.sparsity_include_decoder_norm else a))

    def weights_dict(self) -> dict[str, Tensor]:
        out = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec}
        if self.b_dec is not None:
            out["b_dec"] = self.b_dec
        if self.W_gate is not None and self.b_gate is not None:
            out["W_gate"] = self.W_gate
            out["b_gate"] = self.b_gate
        jump = self.jumprelu
        if jump is not None:
            out["log_jumprelu_threshold"] = jump.log_jumprelu_threshold
        return {k: v.detach() for k, v in out.items()}



__all__ = ["SparseAutoEncoder"]
