"""Synthetic activations with a realistic spectrum, generated deterministically on the device.

A token is a sparse sum of "true" features plus dense noise plus a shared offset:

    x = sum_i a_i f_i + Q (s * z) + m

- 8 * d_model unit feature directions f_i; feature i fires with probability p_i ~ 1/(i+1)
  (Zipf: a few common features, a long tail), about 32 per token (fewer at tiny widths), with
  exponential magnitudes, so a TopK dictionary has real structure to find;
- noise with a power-law covariance (eigenvalues ~ 1/(j+1), a random rotation Q) carrying ~10%
  of the variance, as the slowly decaying spectrum of residual streams;
- a mean offset m as large as a typical token (EV is measured around the mean, so it only
  tests that each library handles the offset).

Everything comes from one seeded torch.Generator on the target device, chunk by chunk, so every
runner process (same torch, same device) gets bit-identical tensors without a multi-GB file;
`fingerprint` lets the report check that. Needs only torch.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK = 4096
NOISE_FRACTION = 0.1


def _gen(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


class Spectrum:
    """The fixed generative model of one width (features, frequencies, noise basis, offset)."""

    def __init__(self, d_model: int, device: torch.device, seed: int = 0) -> None:
        g = _gen(device, seed)
        self.device = device
        self.n_features = 8 * d_model
        feats = torch.randn(self.n_features, d_model, generator=g, device=device)
        self.features = feats / feats.norm(dim=1, keepdim=True)
        target_l0 = min(32.0, self.n_features / 16)
        zipf = 1.0 / torch.arange(1, self.n_features + 1, device=device, dtype=torch.float32)
        self.p = (zipf * (target_l0 / zipf.sum())).clamp(max=0.5)
        # E[a^2] = 2 for exponential magnitudes: the signal variance is 2 * sum p_i (unit f_i).
        signal_var = 2 * self.p.sum().item()
        q, _ = torch.linalg.qr(torch.randn(d_model, d_model, generator=g, device=device))
        eig = 1.0 / torch.arange(1, d_model + 1, device=device, dtype=torch.float32)
        eig *= NOISE_FRACTION / (1 - NOISE_FRACTION) * signal_var / eig.sum()
        self.noise_basis = eig.sqrt()[:, None] * q.T  # z @ this has covariance Q diag(eig) Q^T
        offset = torch.randn(d_model, generator=g, device=device)
        self.offset = offset / offset.norm() * (signal_var / (1 - NOISE_FRACTION)) ** 0.5

    def sample(self, n: int, seed: int) -> Tensor:
        """`n` tokens (fp32, on the device) from the chunk stream of `seed`."""
        out = torch.empty(n, self.features.shape[1], device=self.device)
        g = _gen(self.device, 0)
        for i, start in enumerate(range(0, n, CHUNK)):
            rows = min(CHUNK, n - start)
            g.manual_seed(seed * 1_000_003 + i)
            fire = torch.rand(rows, self.n_features, generator=g, device=self.device) < self.p
            mags = torch.empty(rows, self.n_features, device=self.device).exponential_(generator=g)
            z = torch.randn(rows, self.noise_basis.shape[0], generator=g, device=self.device)
            out[start : start + rows] = (mags * fire) @ self.features + z @ self.noise_basis + self.offset
        return out


def activations(
    d_model: int, n_train: int, n_eval: int, device: torch.device, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """(train, eval) for one width: independent chunk streams from one spectrum."""
    spec = Spectrum(d_model, device, seed)
    return spec.sample(n_train, seed=2 * seed + 1), spec.sample(n_eval, seed=2 * seed + 2)


def fingerprint(x: Tensor) -> str:
    """Short identity of a tensor's values (equal across processes iff the data are)."""
    x64 = x.double()
    return f"{x64.sum().item():.9e}:{x64.square().sum().item():.9e}"
