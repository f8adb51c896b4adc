"""Initialisation of a dictionary from a sample of activations (`InitializerSpec`).

Order (each step sees the previous ones):
1. dataset-wise norm factors from the sample (when `norm_activation: dataset-wise`);
2. decoder directions: Kaiming-uniform rows, or rows drawn inside the top principal subspace
   of the (normalised) output sample; rows scaled to `init_decoder_norm`;
3. encoder = decoder transpose (or its own Kaiming-uniform draw with the same column norms);
4. decoder bias: zeros or the geometric median of the normalised output sample;
5. JumpReLU log thresholds;
6. search of the decoder norm (the encoder following) minimising the sample MSE: closed-form
   from three forward passes for TopK/BatchTopK/ReLU, a bracketing search otherwise
   (`init_search`); on by default, skipped when the spec fixes `init_decoder_norm` alone;
7. optional encoder bias = -mean pre-activation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from saeops.api.training import DictionarySpec, InitializerSpec
from saeops.runtime.models.base import SparseDictionary
from saeops.runtime.models.init_search import (
    NormSearch,
    bracket_search,
    geometric_median,
    search_decoder_norm,
)
from saeops.runtime.models.losses import LossContext
from saeops.runtime.models.normalize import compute_dataset_norm_factor
from saeops.runtime.models.sae import SparseAutoEncoder

SEARCH_MAX_TOKENS = 4096
"""Tokens of the sample the decoder-norm search reconstructs (see bench/init: the EV after
training stops moving well below this)."""
MEDIAN_MAX_TOKENS = 4096
"""Tokens of the sample the geometric median is taken over."""
ENCODER_NORM = 1.0
"""Encoder column norm of a TopK dictionary after the norm search (`move_scale_to_decoder`)."""


def _kaiming_rows(n: int, d: int, generator: torch.Generator | None) -> Tensor:
    # kaiming_uniform_(a=sqrt(5)) on a (n, d) weight: U(-1/sqrt(d), 1/sqrt(d)).
    bound = 1.0 / math.sqrt(d)
    return (torch.rand(n, d, generator=generator, dtype=torch.float64) * 2 - 1) * bound


def _unit_rows(w: Tensor) -> Tensor:
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def init_inputs(spec: DictionarySpec, sample: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(sample_in, sample_out) for `Initializer.initialize` from a sample `{hook: Tensor}`:
    `(N, d)` per hook for an SAE/transcoder; a CLT's per-layer hooks stacked to `(N, L, d)`;
    Lorsa needs sequences `(N, T, d)` (the activation stream's sequence mode)."""
    if spec.type == "clt":
        return (torch.stack([sample[h] for h in spec.hook_points_in], dim=1),
                torch.stack([sample[h] for h in spec.hook_points_out], dim=1))
    hook_in = spec.hook_point_in or ""
    return sample[hook_in], sample[spec.out_hook or hook_in]


class Initializer:
    """Initialise a dictionary's parameters from a sample of raw activations.

    After `initialize`, `last_search` says how the decoder norm was found (None: not searched)."""

    def __init__(self, spec: InitializerSpec, seed: int | None = None):
        self.spec = spec
        self.seed = seed
        self.last_search: NormSearch | None = None

    def _generator(self) -> torch.Generator | None:
        return None if self.seed is None else torch.Generator().manual_seed(self.seed)

    def default_decoder_norm(self, model: SparseDictionary) -> float:
        """`init_decoder_norm`, else 0.1 * sqrt(d_out) / sqrt(d_sae)."""
        if self.spec.init_decoder_norm is not None:
            return self.spec.init_decoder_norm
        return 0.1 * math.sqrt(model.d_out) / math.sqrt(model.d_sae)

    @property
    def searches_norm(self) -> bool:
        """Search the decoder norm: on by default, but a decoder norm the spec fixes wins unless
        the spec also asks for the search explicitly (the fixed norm is then where it starts)."""
        spec = self.spec
        if not spec.grid_search_init_norm:
            return False
        return spec.init_decoder_norm is None or "grid_search_init_norm" in spec.model_fields_set

    @staticmethod
    def median(points: Tensor) -> Tensor:
        """Geometric median of the first `MEDIAN_MAX_TOKENS` rows of `points (N, d)` (the sample
        is already shuffled; more rows move the median less than training moves b_dec)."""
        return geometric_median(points.reshape(-1, points.shape[-1])[:MEDIAN_MAX_TOKENS])

    @torch.no_grad()
    def initialize(
        self, model: SparseDictionary, sample_in: Tensor, sample_out: Tensor | None = None, *, k: int | None = None
    ) -> SparseDictionary:
        """Initialise `model` in place from raw samples `(N, d_in)` / `(N, d_out)`; returns it.

        `k` is the k used for TopK models during the norm search (default: spec top_k; pass the
        k schedule's initial k)."""
        self.last_search = None
        if model.initialize_from_sample is not None:
            # Kinds whose parameters are not one (W_enc, W_dec) pair (CLT, Lorsa) own their init.
            model.initialize_from_sample(self, sample_in, sample_out, k=k)
            return model
        if not isinstance(model, SparseAutoEncoder):
            raise TypeError(f"{type(model).__name__} has neither initialize_from_sample nor the SAE parameters")
        gen = self._generator()
        sample_in = sample_in.reshape(-1, model.d_in)
        sample_out = sample_in if sample_out is None else sample_out.reshape(-1, model.d_out)
        dev, dt = model.W_dec.device, model.W_dec.dtype

        if model.spec.norm_activation == "dataset-wise":
            model.set_dataset_norm_factors(
                compute_dataset_norm_factor(sample_in), compute_dataset_norm_factor(sample_out)
            )
        x_in = sample_in.to(dev, dt)
        x_out = sample_out.to(dev, dt)
        x_n = x_in * model.input_factor(x_in)
        y_n = x_out * model.output_factor(x_out)

        # Decoder directions.
        rows = self.decoder_rows(model.d_sae, y_n, gen)
        norm = self.default_decoder_norm(model)
        model.W_dec.copy_((_unit_rows(rows) * norm).to(dev, dt))

        # Encoder.
        self._tie_encoder(model, gen)

        # Decoder bias.
        if model.b_dec is not None:
            if self.spec.bias_init_method == "geometric_median":
                model.b_dec.copy_(self.median(y_n))
            else:
                model.b_dec.zero_()
        model.b_enc.zero_()

        if model.jumprelu is not None:
            model.jumprelu.reset_threshold(self.spec.init_log_jumprelu_threshold_value)

        if self.searches_norm:
            self.last_search = self.search_decoder_norm(model, x_in, x_out, k=k, start=norm)
            if self.last_search.method == "closed-form" and model.spec.is_topk_family:
                self.move_scale_to_decoder(model, self.last_search.norm)

        if self.spec.init_encoder_bias_with_mean_hidden_pre:
            model.b_enc.copy_(-(model.centre(x_n) @ model.W_enc).mean(0))
        return model

    @staticmethod
    @torch.no_grad()
    def move_scale_to_decoder(model: SparseAutoEncoder, norm: float) -> None:
        """From encoder columns and decoder rows all at `norm` to encoder columns at
        `ENCODER_NORM` and decoder rows at `norm^2 / ENCODER_NORM`: the same TopK dictionary
        (selection and reconstruction are unchanged), but it trains further in one pass
        (bench/init: peer case EV 0.763 -> 0.777; the reverse split, 0.746)."""
        model.W_enc.mul_(ENCODER_NORM / norm)
        model.W_dec.mul_(norm / ENCODER_NORM)

    def decoder_rows(self, n: int, y_n: Tensor, gen: torch.Generator | None) -> Tensor:
        """`(n, d_out)` float64 decoder directions (not normalised): Kaiming-uniform, or, with
        `initialize_W_D_with_active_subspace`, random combinations of the top `d_active_subspace`
        principal directions of the normalised output sample `y_n (N, d_out)` -- so no latent
        starts in a direction the activations never use (dead on arrival)."""
        d_out = y_n.shape[-1]
        if not self.spec.initialize_W_D_with_active_subspace:
            return _kaiming_rows(n, d_out, gen)
        d_sub = self.spec.d_active_subspace or max(d_out // 2, 1)
        d_sub = min(d_sub, d_out, y_n.shape[0])
        centred = (y_n - y_n.mean(0)).to(torch.float64)
        basis = torch.linalg.svd(centred, full_matrices=False).Vh[:d_sub]  # (d_sub, d_out)
        coeffs = torch.randn(n, d_sub, generator=gen, dtype=torch.float64)
        return coeffs @ basis.cpu()

    def _tied(self, model: SparseAutoEncoder) -> bool:
        # A transcoder's encoder and decoder live in different spaces: no transpose to tie to.
        return self.spec.init_encoder_with_decoder_transpose and model.W_enc.shape == model.W_dec.T.shape

    @torch.no_grad()
    def _tie_encoder(self, model: SparseAutoEncoder, gen: torch.Generator | None, rescale_only: bool = False) -> None:
        W_enc, W_dec = model.W_enc, model.W_dec
        if self._tied(model):
            W_enc.copy_(W_dec.T)
            return
        if not rescale_only:
            W_enc.copy_(_kaiming_rows(model.d_sae, model.d_in, gen).T.to(W_enc.device, W_enc.dtype))
        # Same per-latent norm as the decoder, so the searched scale applies to both.
        W_enc.mul_(W_dec.norm(dim=-1) / W_enc.norm(dim=0).clamp_min(1e-12))

    @torch.no_grad()
    def search_decoder_norm(
        self, model: SparseAutoEncoder, sample_in: Tensor, sample_out: Tensor, *, k: int | None = None,
        start: float | None = None,
    ) -> NormSearch:
        """Decoder row norm (encoder following) minimising the MSE on the first
        `SEARCH_MAX_TOKENS` rows of the sample, through the model's own (sparse) forward; leaves
        the model there. See `init_search.search_decoder_norm`."""
        x_in = sample_in[:SEARCH_MAX_TOKENS]
        x_out = sample_out[:SEARCH_MAX_TOKENS]
        ctx = LossContext(k=k)  # no trainer: the reconstruction alone
        W_enc, W_dec = model.W_enc, model.W_dec
        current = [start or self.default_decoder_norm(model)]
        model.set_decoder_norm(current[0])
        self._tie_encoder(model, None, rescale_only=True)

        def set_norm(n: float) -> None:
            # Every decoder row and encoder column has the same norm: one scalar moves them all.
            W_dec.mul_(n / current[0])
            W_enc.mul_(n / current[0])
            current[0] = n

        def reconstruct(rows: int | None) -> tuple[Tensor, Tensor]:
            out = model.compute_loss(x_in[:rows], x_out[:rows], ctx)
            return out.x_hat, out.target

        return search_decoder_norm(set_norm, reconstruct, current[0])


def grid_search_norm(mse_at: Callable[[float], float]) -> float:
    """Minimise `mse_at(norm)` when only the MSE is at hand (a kind that owns its init and
    calls this): the bracketing search of `init_search` (about 20 evaluations, not a 47-point
    grid); calls `mse_at(best)` last so the model is left at the best norm. Kinds that can give
    the reconstructions should call `init_search.search_decoder_norm` (closed form)."""
    best, _ = bracket_search(mse_at)
    mse_at(best)
    return float(best)


__all__ = ["Initializer", "compute_dataset_norm_factor", "geometric_median", "grid_search_norm", "init_inputs"]
