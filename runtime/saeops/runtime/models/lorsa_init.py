"""Initialisation of Lorsa from a sample of sequences (called through `Initializer.initialize`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from saeops.runtime.models.base import LossContext
from saeops.runtime.models.normalize import compute_dataset_norm_factor

if TYPE_CHECKING:
    from saeops.runtime.models.lorsa import LowRankSparseAttention


@torch.no_grad()
def initialize_lorsa(model: LowRankSparseAttention, initializer: Any, sample_in: Tensor, sample_out: Tensor | None,
                     *, k: int | None = None) -> None:
    """`sample_in (N, T, d_in)`, `sample_out (N, T, d_out)` raw sequences.

    Dataset-wise factors from the tokens; `W_O` rows from the initializer's decoder directions
    (Kaiming or the active subspace, which the seeds recommend for attention outputs) at the
    default norm; `W_V` columns random with the same norms; `b_O` zeros or geometric median;
    QK stay at their Kaiming draw (or the model's own weights, see `init_from_model`);
    search of the OV norm (`W_O` rows and `W_V` columns together) on the first sequences of
    the sample holding `SEARCH_MAX_TOKENS` tokens."""
    from saeops.runtime.models.init import SEARCH_MAX_TOKENS, _unit_rows
    from saeops.runtime.models.init_search import search_decoder_norm

    if sample_out is None or sample_in.ndim != 3:
        raise ValueError("lorsa initialises from sequences: sample_in and sample_out must be (N, T, width)")
    spec = initializer.spec
    gen = initializer._generator()
    dev, dt = model.W_O.device, model.W_O.dtype
    x_in, x_out = sample_in.to(dev, dt), sample_out.to(dev, dt)
    if model.spec.norm_activation == "dataset-wise":
        model.set_dataset_norm_factors(compute_dataset_norm_factor(x_in), compute_dataset_norm_factor(x_out))
    y_tok = (x_out * model.output_factor(x_out)).reshape(-1, model.d_out)
    norm = initializer.default_decoder_norm(model)
    rows = initializer.decoder_rows(model.d_sae, y_tok, gen)
    model.W_O.copy_((_unit_rows(rows) * norm).to(dev, dt))
    v = torch.randn(model.d_in, model.d_sae, generator=gen, dtype=torch.float64)
    model.W_V.copy_((v / v.norm(dim=0, keepdim=True) * norm).to(dev, dt))
    model.b_V.zero_()
    if spec.bias_init_method == "geometric_median":
        model.b_O.copy_(initializer.median(y_tok))
    else:
        model.b_O.zero_()
    jump = model.jumprelu
    if jump is not None:
        log_t = spec.init_log_jumprelu_threshold_value
        jump.log_jumprelu_threshold.fill_(math.log(0.1) if log_t is None else log_t)
    if initializer.searches_norm:
        n_seq = max(1, SEARCH_MAX_TOKENS // x_in.shape[1])
        xs, ys = x_in[:n_seq], x_out[:n_seq]
        ctx = LossContext(k=k, sparsity_loss_type="none")

        def set_norm(n: float) -> None:
            model.set_decoder_norm(n)
            model.W_V.mul_(n / model.W_V.norm(dim=0).clamp_min(1e-12))

        def reconstruct(rows: int | None) -> tuple[Tensor, Tensor]:
            # x_hat comes back one row per token: the first `rows` tokens are whole sequences.
            n = None if rows is None else max(1, rows // xs.shape[1])
            out = model.compute_loss(xs[:n], ys[:n], ctx)
            return out.x_hat, out.target

        initializer.last_search = search_decoder_norm(set_norm, reconstruct, norm)


__all__ = ["initialize_lorsa"]
