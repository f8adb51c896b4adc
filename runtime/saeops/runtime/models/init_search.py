"""The searches behind initialisation: the decoder bias (geometric median) and the decoder norm.

Decoder norm. With the encoder scaled along with the decoder (or held), b_enc = 0, equal
decoder norms and a positively homogeneous activation (TopK, BatchTopK, ReLU), scaling every
decoder row by `s` leaves the selected latents unchanged and scales their contribution by
`s^p` (p = 2 for a tied SAE or a transcoder, 1 for a CLT whose encoder is held). The
reconstruction is then `a + (s/s0)^p c` and the MSE a quadratic in `t = (s/s0)^p`, whose
minimum is closed-form: one forward pass over the search sample at `s0`, plus three probes on
an eighth of it that find `a` and `p` and check the model really is of that form (instead of
the 47 passes of a grid). A model that is not (JumpReLU's fixed threshold, a GLU gate) gets a
bracketing search of the same MSE: a coarse log grid, then golden-section refinement.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

PROBE_RATIO = 4.0
"""Norm ratio between successive probes: wide enough that the latent part of the
reconstruction stands well above float32 rounding of the decoder bias."""
PROBE_SUBSET = 8
"""The probes that find the offset and the degree run on 1/8 of the search sample."""
HOMOGENEITY_TOLERANCE = 1e-2
"""Relative residual under which the three probes count as one `a + q^i c` progression."""
GRID_LOW, GRID_HIGH, GRID_POINTS = 1e-3, 10.0, 9
"""The bracketing search's coarse grid: log-spaced, a factor sqrt(10) apart."""
GOLDEN_LOG_TOLERANCE = 0.02
"""Golden section stops when the bracket spans under 2 % in norm."""
_INVPHI = (math.sqrt(5) - 1) / 2


def geometric_median(points: Tensor, max_iter: int = 100, eps: float = 1e-5) -> Tensor:
    """Geometric median of `points (N, d)` by Weiszfeld's iterations (float64 inside).

    Minimises `sum_i ||x_i - y||`; starts from the mean and stops when the step is below
    `eps * (1 + ||y||)` (on activations: 5-7 iterations; the sample's own error is far larger).
    Distances are floored at 1e-12 so a point coinciding with the estimate does not divide by
    zero (the standard, slightly biased, fix).
    """
    x = points.reshape(-1, points.shape[-1]).to(torch.float64)
    y = x.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (x - y).norm(dim=-1).clamp_min(1e-12)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        step = (y_new - y).norm()
        y = y_new
        if step <= eps * (1 + y.norm()):
            break
    return y.to(points.dtype)


@dataclass(frozen=True)
class NormSearch:
    """Where the decoder-norm search ended and what it cost."""

    norm: float
    method: str
    """`closed-form`; `kept` (closed form, but no positive optimum: the start norm stays); or
    `bracket` (coarse grid and golden section)."""
    evaluations: float
    """Forward passes, counted in passes over the whole search sample."""


def _dot(a: Tensor, b: Tensor) -> float:
    return float((a * b).sum(dtype=torch.float64))


def line_fit(probes: list[Tensor]) -> tuple[Tensor, float] | None:
    """`(a, q)` such that three reconstructions at norms a factor `PROBE_RATIO` apart are
    `a + q^i c`, or None when they are not of that form (to `HOMOGENEITY_TOLERANCE`) or do not
    grow. Differences: `d1 = (q - 1) c`, `d2 = q d1`, so `q = <d2, d1> / <d1, d1>` and
    `a = x0 - d1 / (q - 1)`; `q = PROBE_RATIO^p` gives the degree `p`."""
    x0, x1, x2 = probes
    d1, d2 = x1 - x0, x2 - x1
    dd = _dot(d1, d1)
    if not dd > 0:
        return None
    q = _dot(d2, d1) / dd
    if not q > 1.0 + 1e-6 or float((d2 - q * d1).norm()) > HOMOGENEITY_TOLERANCE * float(d2.norm()):
        return None
    return x0 - d1 / (q - 1), q


def quadratic_optimum(x0: Tensor, a: Tensor, target: Tensor, q: float) -> float | None:
    """Scale `s/s0` minimising `||target - a - (s/s0)^p c||^2`, with `c = x0 - a` and
    `PROBE_RATIO^p = q`: `t* = <target - a, c> / <c, c>`, `s/s0 = t*^(1/p)`; None unless positive."""
    c = x0 - a
    cc = _dot(c, c)
    t = _dot(target - a, c) / cc if cc > 0 else float("nan")
    if not (t > 0 and math.isfinite(t)):
        return None
    return t ** (math.log(PROBE_RATIO) / math.log(q))


def golden_section(f: Callable[[float], float], lo: float, hi: float, tol: float) -> tuple[float, float, int]:
    """Minimise a unimodal `f` on `[lo, hi]` to a bracket narrower than `tol`; returns
    `(argmin, min, evaluations)` of the best point evaluated."""
    c, d = hi - _INVPHI * (hi - lo), lo + _INVPHI * (hi - lo)
    fc, fd = f(c), f(d)
    n = 2
    while hi - lo > tol:
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - _INVPHI * (hi - lo)
            fc = f(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + _INVPHI * (hi - lo)
            fd = f(d)
        n += 1
    return (c, fc, n) if fc <= fd else (d, fd, n)


def bracket_search(mse_at: Callable[[float], float]) -> tuple[float, int]:
    """Minimise `mse_at(norm)`: a coarse log grid over `[GRID_LOW, GRID_HIGH]`, then golden
    section in log-norm between the best grid point's neighbours. Returns (best norm,
    evaluations); the caller puts the model there."""
    grid = torch.logspace(math.log10(GRID_LOW), math.log10(GRID_HIGH), GRID_POINTS, dtype=torch.float64).tolist()
    losses = [mse_at(n) for n in grid]
    i = min(range(len(grid)), key=losses.__getitem__)
    lo, hi = math.log(grid[max(i - 1, 0)]), math.log(grid[min(i + 1, len(grid) - 1)])
    u, loss, n = golden_section(lambda v: mse_at(math.exp(v)), lo, hi, GOLDEN_LOG_TOLERANCE)
    return (math.exp(u) if loss <= losses[i] else grid[i]), len(grid) + n


@torch.no_grad()
def search_decoder_norm(
    set_norm: Callable[[float], None], reconstruct: Callable[[int | None], tuple[Tensor, Tensor]], start: float
) -> NormSearch:
    """The decoder norm minimising the sample MSE; leaves the model there (see module docstring).

    `set_norm(n)` puts the model at norm `n` (decoder rows, and the encoder where it follows);
    `reconstruct(rows)` gives `(x_hat, target)` of the first `rows` rows (None: all) of the
    search sample, in the normalised space. The offset `a` found on the subset must be the same
    for every row (a decoder bias); when it is not (a trained skip path), the probes are
    repeated over the whole sample."""
    set_norm(start)
    x0, target = reconstruct(None)
    rows = x0.shape[0]
    sub = max(1, rows // PROBE_SUBSET)
    probes = [x0] if sub == rows else []
    for i in range(len(probes), 3):
        set_norm(start * PROBE_RATIO**i)
        probes.append(reconstruct(sub)[0])
    evaluations = 1 + (3 * sub / rows if sub < rows else 2)
    fit = line_fit(probes)
    if fit is not None and sub < rows:
        a, q = fit
        if float((a - a[:1]).norm()) <= HOMOGENEITY_TOLERANCE * float((probes[2] - probes[0]).norm()):
            fit = a[:1].expand_as(x0), q
        else:
            full = [x0]
            for i in (1, 2):
                set_norm(start * PROBE_RATIO**i)
                full.append(reconstruct(None)[0])
            evaluations += 2
            fit = line_fit(full)
    if fit is not None:
        scale = quadratic_optimum(x0, fit[0], target, fit[1])
        # No positive optimum: the random latents cannot lower the MSE at any norm (a transcoder
        # whose target they do not yet correlate with); a vanishing norm would only slow
        # training down, so the start norm stays.
        best = start if scale is None else start * scale
        set_norm(best)
        return NormSearch(best, "kept" if scale is None else "closed-form", round(evaluations, 3))

    def mse_at(n: float) -> float:
        set_norm(n)
        x_hat, y = reconstruct(None)
        return float((x_hat - y).pow(2).mean(dtype=torch.float64))

    best, n = bracket_search(mse_at)
    set_norm(best)
    return NormSearch(best, "bracket", round(evaluations + n, 3))


__all__ = ["NormSearch", "bracket_search", "geometric_median", "golden_section", "line_fit", "quadratic_optimum",
           "search_decoder_norm"]
