"""Initialisation: geometric median, grid search, subspace, biases, thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from saeops.api.training import InitializerSpec
from saeops.runtime.models import Initializer, LossContext, build_dictionary, geometric_median

from .conftest import make_spec


def _sum_dist(points: torch.Tensor, y: torch.Tensor) -> float:
    return float((points.double() - y.double()).norm(dim=-1).sum())


def test_geometric_median_beats_mean_and_matches_optimum() -> None:
    g = torch.Generator().manual_seed(3)
    core = torch.randn(200, 5, generator=g)
    outliers = 40.0 + torch.randn(30, 5, generator=g)  # a skewed cluster far away
    pts = torch.cat([core, outliers])
    gm = geometric_median(pts, max_iter=500, eps=1e-10)
    mean = pts.mean(0)
    assert _sum_dist(pts, gm) < _sum_dist(pts, mean) * 0.8
    assert gm.norm() < 2.0 < mean.norm()  # robust to the outliers
    p = pts.double().numpy()
    res = minimize(lambda y: np.linalg.norm(p - y, axis=1).sum(), p.mean(0), method="Nelder-Mead",
                   options={"xatol": 1e-9, "fatol": 1e-9, "maxiter": 20000, "maxfev": 20000})
    assert _sum_dist(pts, gm) <= res.fun + 1e-4
    assert np.allclose(gm.double().numpy(), res.x, atol=1e-3)


def test_norm_search_lowers_initial_mse() -> None:
    spec = make_spec(act_fn="relu", expansion_factor=8)
    x = torch.randn(512, 16) @ torch.randn(16, 16) + 2.0
    ctx = LossContext()
    default = Initializer(InitializerSpec(grid_search_init_norm=False), seed=0).initialize(build_dictionary(spec, 16), x)
    searched = Initializer(InitializerSpec(grid_search_init_norm=True), seed=0).initialize(
        build_dictionary(spec, 16), x
    )
    mse_default = default.compute_loss(x, None, ctx).terms["mse"].item()
    mse_searched = searched.compute_loss(x, None, ctx).terms["mse"].item()
    assert mse_searched < mse_default
    assert torch.allclose(searched.W_enc, searched.W_dec.T)  # tied encoder kept
    assert torch.allclose(searched.decoder_norms(), searched.decoder_norms()[0].expand(128), rtol=1e-5)


def test_default_decoder_norm_and_transpose() -> None:
    m = Initializer(InitializerSpec(init_decoder_norm=0.25), seed=0).initialize(
        build_dictionary(make_spec(), 16), torch.randn(64, 16)
    )
    assert torch.allclose(m.decoder_norms(), torch.full((64,), 0.25))
    assert torch.equal(m.W_enc, m.W_dec.T)
    untied = Initializer(InitializerSpec(init_encoder_with_decoder_transpose=False, grid_search_init_norm=False),
                         seed=0).initialize(
        build_dictionary(make_spec(), 16), torch.randn(64, 16)
    )
    assert not torch.allclose(untied.W_enc, untied.W_dec.T)
    expected = 0.1 * math.sqrt(16) / math.sqrt(64)
    assert torch.allclose(untied.W_enc.norm(dim=0), torch.full((64,), expected), rtol=1e-5)


def test_geometric_median_bias_and_mean_hidden_pre() -> None:
    x = torch.randn(256, 16) + 5.0
    spec = InitializerSpec(bias_init_method="geometric_median", init_encoder_bias_with_mean_hidden_pre=True)
    m = Initializer(spec, seed=0).initialize(build_dictionary(make_spec(), 16), x)
    x_n = x * m.input_factor(x)
    assert torch.allclose(m.b_dec, geometric_median(x_n), atol=1e-5)
    pre = (x_n - m.b_dec) @ m.W_enc + m.b_enc
    assert pre.mean(0).abs().max() < 1e-4


def test_jumprelu_threshold_init() -> None:
    m = build_dictionary(make_spec(act_fn="jumprelu"), 16)
    Initializer(InitializerSpec(init_log_jumprelu_threshold_value=math.log(0.3))).initialize(m, torch.randn(64, 16))
    assert torch.allclose(m.jumprelu.threshold, torch.full((64,), 0.3))
    Initializer(InitializerSpec()).initialize(m, torch.randn(64, 16))
    assert torch.allclose(m.jumprelu.threshold, torch.full((64,), 0.1))


def test_active_subspace_confines_decoder_rows() -> None:
    basis = torch.linalg.qr(torch.randn(16, 16)).Q[:, :4]  # activations live in a 4-d subspace
    x = torch.randn(512, 4) @ basis.T
    spec = InitializerSpec(initialize_W_D_with_active_subspace=True, d_active_subspace=4)
    m = Initializer(spec, seed=0).initialize(build_dictionary(make_spec(), 16), x)
    projected = m.W_dec @ basis @ basis.T
    assert torch.allclose(projected, m.W_dec, atol=1e-5)


@pytest.mark.parametrize("act_fn", ["topk", "batchtopk", "jumprelu"])
def test_initialize_other_activations(act_fn: str) -> None:
    spec = InitializerSpec(grid_search_init_norm=True, bias_init_method="geometric_median",
                           init_encoder_bias_with_mean_hidden_pre=True)
    x = torch.randn(256, 16) + 1.0
    m = Initializer(spec, seed=0).initialize(build_dictionary(make_spec(act_fn=act_fn), 16), x)
    assert torch.isfinite(m.compute_loss(x, None, LossContext(k=4)).loss)
