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
from saeops.kernels import should_use_sparse
from saeops.runtime.models.activation import build_activation
from saeops.runtime.models.acts import FeatureActs
from saeops.runtime.models.base import SparseDictionary


class SparseAutoEncoder(SparseDictionary):
    """SAE: reconstructs its input. Parameters `W_enc, b_enc, W_dec, b_dec` (+ `W_gate, b_gate`
    with a GLU encoder, + `log_jumprelu_threshold` for JumpReLU)."""

    dictionary_type = "sae"
    target_is_input = True
    centres_input: bool = True
    """Subtract b_dec from the input before encoding (only meaningful when input and output
    live in the same space; a transcoder turns it off)."""
    requires_square: bool = True
    """Input and output are one space: d_out == d_in, and the default encoder is the decoder's
    transpose."""

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
        """Default init (the Initializer refines it): Kaiming-uniform decoder, the encoder its
        transpose (its own Kaiming-uniform draw when input and output spaces differ), zero biases."""
        nn.init.kaiming_uniform_(self.W_dec, a=math.sqrt(5))
        if self.requires_square:
            self.W_enc.copy_(self.W_dec.T)
        else:
            nn.init.kaiming_uniform_(self.W_enc.T, a=math.sqrt(5))
        self.b_enc.zero_()
        if self.b_dec is not None:
            self.b_dec.zero_()
        if self.W_gate is not None and self.b_gate is not None:
            nn.init.kaiming_uniform_(self.W_gate.T, a=math.sqrt(5))
            self.b_gate.zero_()

    # -- pieces --------------------------------------------------------------------------

    def centre(self, x_n: Tensor) -> Tensor:
        """Subtract b_dec from normalised input (identity without a decoder bias)."""
        return x_n if self.b_dec is None or not self.centres_input else x_n - self.b_dec

    def hidden_pre(self, x_c: Tensor) -> Tensor:
        """Dense pre-activations of centred, normalised input."""
        pre = x_c @ self.W_enc + self.b_enc
        if self.W_gate is not None:
            pre = pre * torch.sigmoid(x_c @ self.W_gate + self.b_gate)
        return pre

    def latent_pre(self, x_n: Tensor, latents: Tensor) -> Tensor:
        return self.centre(x_n) @ self.W_enc[:, latents] + self.b_enc[latents]

    def _encode_normed(self, x: Tensor, k: int | None = None, mask: Tensor | None = None) -> FeatureActs:
        k = k or self.spec.top_k
        x = x.to(self.dtype)
        scale = self.score_scale()
        if self.W_gate is None and self.spec.act_fn in ("topk", "batchtopk"):
            # Fused path: never materialises the dense (B, d_sae) activations; the kernel
            # centres by b_dec itself (a cheaper b_dec gradient than centring here).
            op = self.kernels.topk_encode if self.spec.act_fn == "topk" else self.kernels.batchtopk_encode
            bias = self.b_dec if self.b_dec is not None and self.centres_input else None
            values, indices = op(x, self.W_enc, self.b_enc, k, scale, input_bias=bias)
            return FeatureActs.from_sparse(values, indices, self.d_sae)
        return self.activation(self.hidden_pre(self.centre(x)), k=k, score_scale=scale)

    def decode(self, acts: FeatureActs | Tensor) -> Tensor:
        if isinstance(acts, Tensor):
            acts = FeatureActs.from_dense(acts)
        sparse = acts.is_sparse or (
            self.spec.use_triton_kernel
            and should_use_sparse(acts.dense(), self.spec.sparsity_threshold_for_triton_spmm_kernel)
        )
        if sparse:
            return self.kernels.sparse_decode(acts.indices, acts.values, self.W_dec, self.b_dec)
        out = acts.dense() @ self.W_dec
        return out if self.b_dec is None else out + self.b_dec

    # -- folding and persistence ---------------------------------------------------------

    @torch.no_grad()
    def _fold_norm_factors(self, a: float | Tensor, c: float | Tensor) -> None:
        a, c = float(a), float(c)
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
