"""The cross-layer transcoder (CLT).

`L` layers, each with its own encoder reading that layer's input hook; the `d_layer` features
of source layer `s` write to every target layer `t >= s`:

    x_n[:, s] = x_in[:, s] * a_s                                   (per-layer normalisation)
    pre[:, s] = x_n[:, s] @ W_enc[s] + b_enc[s]                    (B, L, d_layer)
    f         = act(pre)                                           (flattened to (B, L*d_layer))
    y_hat[:, t] = sum_{s <= t} f[:, s] @ W_dec[t][s] + b_dec[t]    (B, L, d_out)

The decoders are stored per *target* layer, `W_dec.t` of shape `(t+1, d_layer, d_out)`: the
`L(L+1)/2` (source, target) blocks exist only for `s <= t`, so "no feature writes to an earlier
layer" holds by construction rather than through a mask that could be forgotten.

Latent indices are flattened layer-major: feature `i` of layer `s` is latent `s * d_layer + i`,
so `FeatureActs`, the trainer's firing statistics and dead-latent tracking work unchanged.

Decoder-norm-aware sparsity uses, per feature, the *sum* of its decoder norms over its target
layers (a feature that writes to many layers costs more).

Activation functions: `relu`/`jumprelu` per feature; `topk`/`batchtopk` within each layer
(k per layer); `layertopk` (TopK of `k * L` over all layers' features of a token) and
`batchlayertopk` (the top `k * L * B` over the batch).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from saeops.api.training import DictionarySpec
from saeops.runtime.models import _ops
from saeops.runtime.models.activation import BatchTopK, JumpReLU, ReLU, TopK
from saeops.runtime.models.base import FeatureActs, LossContext, LossOutput, SparseDictionary
from saeops.runtime.models.clt_support import (
    check_layers,
    clt_norm_factor,
    per_layer_metrics,
    split_sparse_by_layer,
)
from saeops.runtime.models.losses import (
    aux_k_loss,
    jumprelu_lp_loss,
    mse_loss,
    power_loss,
    resolve_sparsity_loss_type,
    tanh_loss,
    tanh_quad_loss,
)


class CrossLayerTranscoder(SparseDictionary):
    """CLT with parameters `W_enc (L, d_in, d_layer)`, `b_enc (L, d_layer)`,
    `W_dec.t (t+1, d_layer, d_out)` for each target layer `t`, `b_dec (L, d_out)`
    (+ `log_jumprelu_threshold (L*d_layer,)`)."""

    dictionary_type = "clt"

    def __init__(self, spec: DictionarySpec, d_in: int, d_out: int | None = None):
        super().__init__(spec, d_in, d_out)
        self.layers = check_layers(spec)
        L = self.n_layers = len(spec.hook_points_in)
        self.d_layer = self.d_sae
        self.d_sae = L * self.d_layer
        dt = self.dtype
        self.norm_factor_in = torch.ones(L, dtype=torch.float32)
        self.norm_factor_out = torch.ones(L, dtype=torch.float32)
        self.W_enc = nn.Parameter(torch.empty(L, self.d_in, self.d_layer, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(L, self.d_layer, dtype=dt))
        self.W_dec = nn.ParameterList(
            [nn.Parameter(torch.empty(t + 1, self.d_layer, self.d_out, dtype=dt)) for t in range(L)]
        )
        self.b_dec = nn.Parameter(torch.zeros(L, self.d_out, dtype=dt))
        act = spec.act_fn
        if act == "relu":
            self.activation: nn.Module = ReLU()
        elif act == "jumprelu":
            self.activation = JumpReLU(self.d_sae, spec.jumprelu_threshold_window, dtype=dt)
        elif act == "layertopk":
            self.activation = TopK(spec.top_k * L)
        elif act == "batchlayertopk":
            self.activation = BatchTopK(spec.top_k * L)
        else:  # topk / batchtopk: within each layer, handled in `_select_per_layer`.
            self.activation = nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.d_out)
        for w in self.W_dec:
            w.uniform_(-bound, bound)
        # Encoder of layer s = transpose of its own-layer decoder block (when widths agree).
        for s in range(self.n_layers):
            own = self.W_dec[s][s]  # (d_layer, d_out)
            if self.d_in == self.d_out:
                self.W_enc[s].copy_(own.T)
            else:
                self.W_enc[s].uniform_(-1.0 / math.sqrt(self.d_in), 1.0 / math.sqrt(self.d_in))
        self.b_enc.zero_()
        self.b_dec.zero_()

    # -- normalisation (one factor per layer) ---------------------------------------------

    def set_dataset_norm_factors(self, factor_in: Any, factor_out: Any = None) -> None:
        """Per-layer factors: a float (all layers) or a sequence of L floats."""
        fin = torch.as_tensor(factor_in, dtype=torch.float32).expand(self.n_layers)
        fout = fin if factor_out is None else torch.as_tensor(factor_out, dtype=torch.float32).expand(self.n_layers)
        self.norm_factor_in.copy_(fin)
        self.norm_factor_out.copy_(fout)

    def input_factor(self, x: Tensor) -> Tensor:
        return clt_norm_factor(x, self.spec.norm_activation, self.norm_factor_in)

    def output_factor(self, x_out: Tensor) -> Tensor:
        return clt_norm_factor(x_out, self.spec.norm_activation, self.norm_factor_out)

    # -- the dictionary --------------------------------------------------------------------

    @property
    def jumprelu(self) -> JumpReLU | None:
        return self.activation if isinstance(self.activation, JumpReLU) else None

    def layer_decoder_norms(self) -> Tensor:
        """`(L, d_layer)`: per feature, the sum of its decoder-row norms over target layers >= its own."""
        total = self.W_enc.new_zeros(self.n_layers, self.d_layer)
        for t, w in enumerate(self.W_dec):
            total = total + nn.functional.pad(w.norm(dim=-1), (0, 0, 0, self.n_layers - t - 1))
        return total

    def decoder_norms(self) -> Tensor:
        return self.layer_decoder_norms().reshape(-1)

    @torch.no_grad()
    def set_decoder_norm(self, norm: float | Tensor) -> None:
        """Scale every (source, target) decoder row to `norm` and each encoder column to the
        summed decoder norm of its feature (what the grid search of the initializer varies)."""
        for w in self.W_dec:
            w.mul_(float(norm) / w.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        enc_norm = self.W_enc.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_enc.mul_(float(norm) / enc_norm)

    def hidden_pre(self, x_n: Tensor) -> Tensor:
        """`(B, L, d_layer)` pre-activations of normalised `x_n (B, L, d_in)`."""
        return torch.einsum("bld,lds->bls", x_n, self.W_enc) + self.b_enc

    def _encode_normed(self, x: Tensor, k: int | None = None) -> FeatureActs:
        k = k or self.spec.top_k
        pre = self.hidden_pre(x.to(self.dtype))
        B = pre.shape[0]
        scale = self.layer_decoder_norms().detach() if self.spec.sparsity_include_decoder_norm else None
        if self.spec.act_fn in ("topk", "batchtopk"):
            return self._select_per_layer(pre, k, scale)
        flat = pre.reshape(B, self.d_sae)
        flat_scale = None if scale is None else scale.reshape(-1)
        if self.spec.act_fn in ("layertopk", "batchlayertopk"):
            return self.activation(flat, k=k * self.n_layers, score_scale=flat_scale)
        return self.activation(flat, score_scale=flat_scale)

    def _select_per_layer(self, pre: Tensor, k: int, scale: Tensor | None) -> FeatureActs:
        """TopK/BatchTopK within each layer, indices offset into the flattened latent space."""
        op = _ops.topk_select if self.spec.act_fn == "topk" else _ops.batchtopk_select
        values, indices = [], []
        for s in range(self.n_layers):
            v, i = op(pre[:, s], k, None if scale is None else scale[s])
            values.append(v)
            indices.append(i + s * self.d_layer)
        flat_pre = pre.reshape(pre.shape[0], self.d_sae)
        return FeatureActs.from_sparse(torch.cat(values, -1), torch.cat(indices, -1), self.d_sae, hidden_pre=flat_pre)

    def decode(self, acts: FeatureActs | Tensor) -> Tensor:
        """`(B, L, d_out)` normalised reconstruction of every target layer."""
        if isinstance(acts, Tensor):
            acts = FeatureActs.from_dense(acts.reshape(acts.shape[0], -1))
        outs = []
        if acts.is_sparse:
            for t, (vals, idx) in enumerate(split_sparse_by_layer(acts, self.d_layer, self.n_layers)):
                w = self.W_dec[t].reshape(-1, self.d_out)  # sources 0..t stacked
                outs.append(_ops.sparse_decode(idx, vals, w, self.b_dec[t]))
        else:
            f = acts.dense().reshape(-1, self.n_layers, self.d_layer)
            for t, w in enumerate(self.W_dec):
                outs.append(torch.einsum("bsd,sdo->bo", f[:, : t + 1], w) + self.b_dec[t])
        return torch.stack(outs, dim=1)

    def forward(self, x: Tensor, k: int | None = None) -> Tensor:
        """Raw `(B, L, d_in)` -> raw `(B, L, d_out)` reconstruction."""
        x = x.to(self.dtype)
        f_in = self.input_factor(x).to(x.dtype)
        x_hat = self.decode(self._encode_normed(x * f_in, k))
        if self.spec.norm_activation in ("dataset-wise", "inference"):
            return x_hat / self.norm_factor_out.to(x_hat)[:, None]
        return x_hat / f_in

    # -- loss ------------------------------------------------------------------------------

    def compute_loss(self, x_in: Tensor, x_out: Tensor | None, ctx: LossContext) -> LossOutput:
        """`x_in (B, L, d_in)`, `x_out (B, L, d_out)`; MSE summed over layers and width."""
        x_in = x_in.to(self.dtype)
        if x_out is None:
            raise ValueError("a clt needs its output activations (spec.sae.hookPointsOut)")
        x_out = x_out.to(self.dtype)
        x_n = x_in * self.input_factor(x_in)
        target = x_out * self.output_factor(x_out)
        acts = self._encode_normed(x_n, ctx.k)
        x_hat = self.decode(acts)
        B = x_hat.shape[0]
        mse = mse_loss(x_hat.reshape(B, -1), target.reshape(B, -1))
        loss = mse
        terms: dict[str, Tensor] = {"mse": mse.detach()}
        norms = self.decoder_norms()
        kind = resolve_sparsity_loss_type(self.spec.act_fn, ctx.sparsity_loss_type)
        if kind != "none":
            dense = acts.dense()
            if kind == "power":
                sparsity = power_loss(dense, norms, ctx.l1_coefficient, ctx.p)
            elif kind == "tanh":
                sparsity = tanh_loss(dense, norms, ctx.l1_coefficient, ctx.tanh_stretch_coefficient)
            else:
                sparsity = tanh_quad_loss(
                    dense, norms, ctx.l1_coefficient, ctx.tanh_stretch_coefficient, ctx.frequency_scale
                )
            loss = loss + sparsity
            terms["sparsity"] = sparsity.detach()
        jump = self.jumprelu
        if jump is not None and ctx.lp_coefficient:
            assert acts.hidden_pre is not None
            lp = jumprelu_lp_loss(acts.hidden_pre, jump.threshold, norms, ctx.lp_coefficient,
                                  gated=self.spec.sparsity_include_decoder_norm)
            loss = loss + lp
            terms["lp"] = lp.detach()
        if self.spec.is_topk_family and ctx.aux_k_coefficient > 0 and ctx.dead_mask is not None:
            aux = self._aux_k(target, x_hat, acts, ctx)
            loss = loss + aux
            terms["aux_k"] = aux.detach()
        terms["l0"] = acts.l0().mean()
        return LossOutput(loss=loss, terms=terms, x_hat=x_hat, target=target, acts=acts)

    def full_decoder_rows(self, latents: Tensor) -> Tensor:
        """`(n, L * d_out)` decoder rows of flattened latent indices over all target layers
        (zero where the target precedes the feature's layer)."""
        src, feat = latents // self.d_layer, latents % self.d_layer
        blocks = []
        for t, w in enumerate(self.W_dec):
            ok = src <= t
            rows = w[src.clamp(max=t), feat] * ok[:, None].to(w.dtype)
            blocks.append(rows)
        return torch.cat(blocks, dim=-1)

    def _aux_k(self, target: Tensor, x_hat: Tensor, acts: FeatureActs, ctx: LossContext) -> Tensor:
        assert ctx.dead_mask is not None and acts.hidden_pre is not None
        dead = ctx.dead_mask.to(x_hat.device).nonzero().squeeze(-1)
        if dead.numel() == 0:
            return x_hat.new_zeros(())
        B = x_hat.shape[0]
        scale = self.decoder_norms().detach()[dead] if self.spec.sparsity_include_decoder_norm else None
        return aux_k_loss(
            acts.hidden_pre[:, dead], self.full_decoder_rows(dead), (target - x_hat).reshape(B, -1),
            target.reshape(B, -1), ctx.k_aux or max(self.d_out // 2, 1), ctx.aux_k_coefficient, scale,
        )

    def per_layer_metrics(self, out: LossOutput) -> dict[int, dict[str, float]]:
        """EV, MSE (per element) and L0 of each layer (by layer index of hookPointsOut)."""
        return per_layer_metrics(out, self.layers, self.d_layer)

    # -- init, folding and persistence ---------------------------------------------------

    def initialize_from_sample(self, initializer: Any, sample_in: Tensor, sample_out: Tensor | None,
                               *, k: int | None = None) -> None:
        """Called by `Initializer.initialize` (see `clt_support.initialize_clt`)."""
        from saeops.runtime.models.clt_support import initialize_clt

        initialize_clt(self, initializer, sample_in, sample_out, k=k)

    @torch.no_grad()
    def _fold_norm_factors(self, a: Any, c: Any) -> None:
        a_t = torch.as_tensor(a, dtype=self.W_enc.dtype, device=self.W_enc.device).expand(self.n_layers)
        c_t = torch.as_tensor(c, dtype=self.W_enc.dtype, device=self.W_enc.device).expand(self.n_layers)
        if (self.spec.sparsity_include_decoder_norm and self.spec.act_fn != "relu"
                and not torch.allclose(c_t, c_t[0].expand_as(c_t))):
            # The gate reads summed decoder norms across targets; unequal c_t would re-weight
            # them unevenly and change which features fire.
            raise ValueError("spec.sae.sparsityIncludeDecoderNorm: a gated CLT folds only with one output "
                             "norm factor for all layers")
        # Keep f unchanged: pre' = x W_enc a + b_enc; y_raw_t = (f W_dec[t] + b_dec[t]) / c_t.
        self.W_enc.mul_(a_t[:, None, None])
        for t, w in enumerate(self.W_dec):
            w.div_(c_t[t])
        self.b_dec.div_(c_t[:, None])
        jump = self.jumprelu
        if jump is not None and self.spec.sparsity_include_decoder_norm:
            jump.log_jumprelu_threshold.sub_(math.log(float(c_t[0])))

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "d_layer": self.d_layer, "n_layers": self.n_layers}

    def weights_dict(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {"W_enc": self.W_enc, "b_enc": self.b_enc, "b_dec": self.b_dec}
        for t, w in enumerate(self.W_dec):
            out[f"W_dec.{t}"] = w
        jump = self.jumprelu
        if jump is not None:
            out["log_jumprelu_threshold"] = jump.log_jumprelu_threshold
        return {k: v.detach() for k, v in out.items()}



__all__ = ["CrossLayerTranscoder"]
