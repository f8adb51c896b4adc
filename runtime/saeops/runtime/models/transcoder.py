"""The (per-layer) transcoder: reads `hook_point_in`, reconstructs `hook_point_out`.

    x_n   = x_in * a                      (input normalisation)
    pre   = x_n @ W_enc + b_enc           (no b_dec centring: b_dec lives in the output space)
    f     = act(pre)
    y_hat = f @ W_dec + b_dec (+ x_n @ W_skip)

The optional skip connection (`skip_connection`) is a dense linear path from input to output;
it lets the latents spend themselves on the non-linear part of e.g. an MLP (Paulo et al. 2025,
"Transcoders beat sparse autoencoders", call these skip transcoders). It starts at zero so a new
transcoder behaves like one without it.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from saeops.api.training import DictionarySpec
from saeops.runtime.models.acts import FeatureActs
from saeops.runtime.models.sae import SparseAutoEncoder

log = logging.getLogger("saeops.models")


class Transcoder(SparseAutoEncoder):
    """SAE-shaped dictionary whose target is another hook point (`W_skip (d_in, d_out)` when
    `skip_connection`)."""

    dictionary_type = "transcoder"
    centres_input = False
    requires_square = False

    def __init__(self, spec: DictionarySpec, d_in: int, d_out: int | None = None):
        if spec.hook_point_out is None or spec.hook_point_out == spec.hook_point_in:
            # Not an error: it trains fine, it is just an SAE with another name.
            log.warning(
                "spec.sae.hookPointOut (%s) equals hookPointIn: this transcoder is an SAE; "
                "use type: sae", spec.hook_point_out or "unset",
            )
        super().__init__(spec, d_in, d_out)
        self.W_skip: nn.Parameter | None
        # Zero: a new transcoder behaves like one without the skip path.
        if spec.skip_connection:
            self.W_skip = nn.Parameter(torch.zeros(self.d_in, self.d_out, dtype=self.dtype))
        else:
            self.register_parameter("W_skip", None)

    def _reconstruct_from(self, acts: FeatureActs, x_n: Tensor) -> Tensor:
        out = self.decode(acts)
        if self.W_skip is not None:
            out = out + x_n.to(self.W_skip.dtype) @ self.W_skip
        return out

    @torch.no_grad()
    def _fold_norm_factors(self, a: float | Tensor, c: float | Tensor) -> None:
        super()._fold_norm_factors(a, c)
        if self.W_skip is not None:
            # y_raw = (a x W_skip) / c.
            self.W_skip.mul_(float(a) / float(c))

    def weights_dict(self) -> dict[str, Tensor]:
        out = super().weights_dict()
        if self.W_skip is not None:
            out["W_skip"] = self.W_skip.detach()
        return out


__all__ = ["Transcoder"]
