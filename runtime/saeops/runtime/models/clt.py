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
from saeops.runtime.models.activation import BatchTopK, JumpReLU, ReLU, TopK, batchtopk_select, topk_select
from saeops.runtime.models.acts import FeatureActs
from saeops.runtime.models.base import SparseDictionary
from saeops.runtime.models.clt_support import check_layers, per_layer_metrics, split_sparse_by_layer
from saeops.runtime.models.init import _unit_rows, geometric_median, grid_search_norm
from saeops.runtime.models.losses import LossContext, LossOutput
from saeops.runtime.models.normalize import compute_dataset_norm_factor

GRID_SEARCH_MAX_TOKENS = 4096


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
            self.activation = ReLU()
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

    # -- the dictionary --------------------------------------------------------------------

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

    def _encode_normed(self, x: Tensor, k: int | None = None, mask: Tensor | None = None) -> FeatureActs:
        k = k or self.spec.top_k
        pre = self.hidden_pre(x.to(self.dtype))
        B = pre.shape[0]
        flat_scale = self.score_scale()
        if self.spec.act_fn in ("topk", "batchtopk"):
            return self._select_per_layer(pre, k, None if flat_scale is None else flat_scale.view(self.n_layers, -1))
        flat = pre.reshape(B, self.d_sae)
        if self.spec.act_fn in ("layertopk", "batchlayertopk"):
            return self.activation(flat, k=k * self.n_layers, score_scale=flat_scale)
        return self.activation(flat, score_scale=flat_scale)

    def _select_per_layer(self, pre: Tensor, k: int, scale: Tensor | None) -> FeatureActs:
        """TopK/BatchTopK within each layer, indices offset into the flattened latent space."""
        op = topk_select if self.spec.act_fn == "topk" else batchtopk_select
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
                outs.append(self.kernels.sparse_decode(idx, vals, w, self.b_dec[t]))
        else:
            f = acts.dense().reshape(-1, self.n_layers, self.d_layer)
            for t, w in enumerate(self.W_dec):
                outs.append(torch.einsum("bsd,sdo->bo", f[:, : t + 1], w) + self.b_dec[t])
        return torch.stack(outs, dim=1)

    def _per_token(self, t: Tensor) -> Tensor:
        # A token's error spans every layer: MSE summed over layers and width.
        return t.reshape(t.shape[0], -1)

    def decoder_rows(self, latents: Tensor) -> Tensor:
        """`(n, L * d_out)` decoder rows of flattened latent indices over all target layers
        (zero where the target precedes the feature's layer)."""
        src, feat = latents // self.d_layer, latents % self.d_layer
        blocks = []
        for t, w in enumerate(self.W_dec):
            ok = src <= t
            rows = w[src.clamp(max=t), feat] * ok[:, None].to(w.dtype)
            blocks.append(rows)
        return torch.cat(blocks, dim=-1)

    def per_layer_metrics(self, out: LossOutput) -> dict[int, dict[str, float]]:
        """EV, MSE (per element) and L0 of each layer (by layer index of hookPointsOut)."""
        return per_layer_metrics(out, self.layers, self.d_layer)

    # -- init, folding and persistence ---------------------------------------------------

    @torch.no_grad()
    def initialize_from_sample(self, initializer: Any, sample_in: Tensor, sample_out: Tensor | None,
                               *, k: int | None = None) -> None:
        """Per-layer dataset norm factors; decoder rows (Kaiming or active subspace of each target
        layer's sample) at the default norm; encoder columns random at the same norm (or the
        own-layer decoder block transposed when widths agree); b_dec zeros or geometric median per
        layer; JumpReLU thresholds; optional grid search of one norm for all rows. Called by
        `Initializer.initialize` with per-layer samples stacked to `(N, L, d)` (`init_inputs`)."""
        if sample_out is None:
            raise ValueError("a clt needs output activations to initialise (spec.sae.hookPointsOut)")
        L = self.n_layers
        if sample_in.ndim != 3 or sample_in.shape[1] != L or sample_out.ndim != 3 or sample_out.shape[1] != L:
            raise ValueError(f"a clt initialises from per-layer samples stacked to (N, {L}, d); got "
                             f"{tuple(sample_in.shape)} / {tuple(sample_out.shape)} (see models.init_inputs)")
        spec = initializer.spec
        gen = initializer._generator()
        dev, dt = self.W_enc.device, self.W_enc.dtype
        x_in = sample_in.reshape(-1, L, self.d_in).to(dev, dt)
        x_out = sample_out.reshape(-1, L, self.d_out).to(dev, dt)
        if self.spec.norm_activation == "dataset-wise":
            self.set_dataset_norm_factors(
                [compute_dataset_norm_factor(x_in[:, s]) for s in range(L)],
                [compute_dataset_norm_factor(x_out[:, t]) for t in range(L)],
            )
        y_n = x_out * self.output_factor(x_out)
        norm = spec.init_decoder_norm or 0.1 * math.sqrt(self.d_out) / math.sqrt(self.d_layer)
        for t, w in enumerate(self.W_dec):
            rows = initializer.decoder_rows((t + 1) * self.d_layer, y_n[:, t], gen)
            w.copy_((_unit_rows(rows) * norm).reshape(t + 1, self.d_layer, self.d_out).to(dev, dt))
        for s in range(L):
            if spec.init_encoder_with_decoder_transpose and self.d_in == self.d_out:
                self.W_enc[s].copy_(self.W_dec[s][s].T)
            else:
                enc = (torch.rand(self.d_in, self.d_layer, generator=gen, dtype=torch.float64) * 2 - 1)
                self.W_enc[s].copy_((enc / enc.norm(dim=0, keepdim=True) * norm).to(dev, dt))
        self.b_enc.zero_()
        if spec.bias_init_method == "geometric_median":
            self.b_dec.copy_(torch.stack([geometric_median(y_n[:, t]) for t in range(L)]))
        else:
            self.b_dec.zero_()
        if self.jumprelu is not None:
            self.jumprelu.reset_threshold(spec.init_log_jumprelu_threshold_value)
        if spec.grid_search_init_norm:
            ctx = LossContext(k=k)
            xs, ys = x_in[:GRID_SEARCH_MAX_TOKENS], x_out[:GRID_SEARCH_MAX_TOKENS]

            def mse_at(n: float) -> float:
                self.set_decoder_norm(n)
                return float(self.compute_loss(xs, ys, ctx).terms["mse"])

            grid_search_norm(mse_at)
        if spec.init_encoder_bias_with_mean_hidden_pre:
            x_n = x_in * self.input_factor(x_in)
            self.b_enc.copy_(-torch.einsum("bld,lds->bls", x_n, self.W_enc).mean(0))

    @torch.no_grad()
    def _fold_norm_factors(self, a: float | Tensor, c: float | Tensor) -> None:
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
