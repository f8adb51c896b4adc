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

Initialisation from a sample of sequences (`initialize_from_sample`): dataset-wise factors from
the tokens; `W_O` rows from the initializer's decoder directions (Kaiming or the active
subspace, which the seeds recommend for attention outputs) at the default norm; `W_V` columns
random with the same norms; `b_O` zeros or geometric median; QK stay at their Kaiming draw (or
the model's own weights, see `init_from_model`); optional grid search of the OV norm.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from saeops.api.training import DictionarySpec, LorsaSpec
from saeops.runtime.models.activation import build_activation
from saeops.runtime.models.acts import FeatureActs
from saeops.runtime.models.base import SparseDictionary
from saeops.runtime.models.hooks import is_attention_output, layer_of
from saeops.runtime.models.init import _unit_rows, geometric_median, grid_search_norm
from saeops.runtime.models.losses import LossContext
from saeops.runtime.models.normalize import compute_dataset_norm_factor

GRID_SEARCH_MAX_SEQUENCES = 64


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
    def W_dec(self) -> Tensor:
        """The decoder: `W_O`."""
        return self.W_O

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

    def _encode_normed(self, x: Tensor, k: int | None = None, mask: Tensor | None = None) -> FeatureActs:
        """Activations of the tokens of `x (B, T, d_in)`, flattened to `(N, d_sae)`: every token,
        or with `mask (B, T)` the real ones only (padding is not attended to either)."""
        z = self._tokens(self.head_outputs(x.to(self.dtype), mask), mask)
        return self.activation(z, k=k or self.spec.top_k, score_scale=self.score_scale())

    @staticmethod
    def _tokens(t: Tensor, mask: Tensor | None) -> Tensor:
        """`(B, T, w)` -> `(N, w)`: every token, or those `mask` marks."""
        flat = t.reshape(-1, t.shape[-1])
        return flat if mask is None else flat[mask.to(torch.bool).reshape(-1)]

    def decode(self, acts: FeatureActs | Tensor) -> Tensor:
        if isinstance(acts, Tensor):
            acts = FeatureActs.from_dense(acts)
        if acts.is_sparse:
            return self.kernels.sparse_decode(acts.indices, acts.values, self.W_O, self.b_O)
        return acts.dense() @ self.W_O + self.b_O

    def _reconstruct_normed(self, x_n: Tensor, k: int | None = None) -> Tensor:
        B, T, _ = x_n.shape
        return super()._reconstruct_normed(x_n, k).reshape(B, T, self.d_out)

    def prepare_batch(self, x_in: Tensor, x_out: Tensor | None, ctx: LossContext) -> tuple[Tensor, Tensor]:
        if x_in.ndim != 3 or x_out is None or x_out.ndim != 3:
            raise ValueError("lorsa trains on sequences: x_in and x_out must be (batch, tokens, width)")
        x_n, target = super().prepare_batch(x_in, x_out, ctx)
        return x_n, self._tokens(target, ctx.attention_mask)

    # -- init, folding and persistence -----------------------------------------------------

    @torch.no_grad()
    def initialize_from_sample(self, initializer: Any, sample_in: Tensor, sample_out: Tensor | None,
                               *, k: int | None = None) -> None:
        """Called by `Initializer.initialize` with raw sequences `sample_in (N, T, d_in)`,
        `sample_out (N, T, d_out)` (see the module docstring)."""
        if sample_out is None or sample_in.ndim != 3:
            raise ValueError("lorsa initialises from sequences: sample_in and sample_out must be (N, T, width)")
        spec = initializer.spec
        gen = initializer._generator()
        dev, dt = self.W_O.device, self.W_O.dtype
        x_in, x_out = sample_in.to(dev, dt), sample_out.to(dev, dt)
        if self.spec.norm_activation == "dataset-wise":
            self.set_dataset_norm_factors(compute_dataset_norm_factor(x_in), compute_dataset_norm_factor(x_out))
        y_tok = (x_out * self.output_factor(x_out)).reshape(-1, self.d_out)
        norm = initializer.default_decoder_norm(self)
        rows = initializer.decoder_rows(self.d_sae, y_tok, gen)
        self.W_O.copy_((_unit_rows(rows) * norm).to(dev, dt))
        v = torch.randn(self.d_in, self.d_sae, generator=gen, dtype=torch.float64)
        self.W_V.copy_((v / v.norm(dim=0, keepdim=True) * norm).to(dev, dt))
        self.b_V.zero_()
        if spec.bias_init_method == "geometric_median":
            self.b_O.copy_(geometric_median(y_tok))
        else:
            self.b_O.zero_()
        if self.jumprelu is not None:
            self.jumprelu.reset_threshold(spec.init_log_jumprelu_threshold_value)
        if spec.grid_search_init_norm:
            xs, ys = x_in[:GRID_SEARCH_MAX_SEQUENCES], x_out[:GRID_SEARCH_MAX_SEQUENCES]
            ctx = LossContext(k=k)

            def mse_at(n: float) -> float:
                self.set_decoder_norm(n)
                self.W_V.mul_(n / self.W_V.norm(dim=0).clamp_min(1e-12))
                return float(self.compute_loss(xs, ys, ctx).terms["mse"])

            grid_search_norm(mse_at)

    @torch.no_grad()
    def _fold_norm_factors(self, a: float | Tensor, c: float | Tensor) -> None:
        a, c = float(a), float(c)
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
        out = {"W_Q": self.W_Q, "W_K": self.W_K, "b_Q": self.b_Q, "b_K": self.b_K, "W_V": self.W_V, "b_V": self.b_V,
               "W_O": self.W_O, "b_O": self.b_O}
        jump = self.jumprelu
        if jump is not None:
            out["log_jumprelu_threshold"] = jump.log_jumprelu_threshold
        return {k: v.detach() for k, v in out.items()}



__all__ = ["LowRankSparseAttention", "check_lorsa_spec", "rotary"]
