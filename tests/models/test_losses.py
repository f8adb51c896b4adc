"""Sparsity and auxiliary losses against hand computations on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

import saeops.kernels as K
from saeops.runtime.models.activation import topk_select
from saeops.runtime.models.losses import (
    aux_k_loss,
    jumprelu_lp_loss,
    mse_loss,
    power_loss,
    resolve_sparsity_loss_type,
    tanh_loss,
    tanh_quad_loss,
)

F = torch.tensor([[1.0, 0.0, 2.0], [0.5, 3.0, 0.0]])  # 2 tokens, 3 latents
N = torch.tensor([2.0, 1.0, 0.5])  # decoder norms


def test_mse_sums_over_d_and_averages_tokens() -> None:
    x_hat = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert mse_loss(x_hat, x).item() == pytest.approx((1 + 4 + 1 + 1) / 2)


def test_power_l1() -> None:
    # token 0: |1*2| + 0 + |2*0.5| = 3; token 1: 0.5*2 + 3*1 = 4 -> mean 3.5
    assert power_loss(F, N, 0.1, p=1).item() == pytest.approx(0.35)


def test_power_p2_is_the_l2_norm() -> None:
    t0 = math.sqrt(2.0**2 + 1.0**2)
    t1 = math.sqrt(1.0**2 + 3.0**2)
    assert power_loss(F, N, 2.0, p=2).item() == pytest.approx(2.0 * (t0 + t1) / 2)


def test_tanh() -> None:
    c = 4.0
    t0 = math.tanh(c * 2) + math.tanh(c * 1)
    t1 = math.tanh(c * 1) + math.tanh(c * 3)
    assert tanh_loss(F, N, 0.5, c).item() == pytest.approx(0.5 * (t0 + t1) / 2, rel=1e-6)


def test_tanh_quad() -> None:
    c, s = 0.5, 0.1
    p = [(math.tanh(c * 2) + math.tanh(c * 1)) / 2, (0 + math.tanh(c * 3)) / 2, (math.tanh(c * 1) + 0) / 2]
    expected = 0.3 * sum(pi * (1 + pi / s) for pi in p)
    assert tanh_quad_loss(F, N, 0.3, c, s).item() == pytest.approx(expected, rel=1e-6)


def test_jumprelu_lp() -> None:
    h = torch.tensor([[0.1, 0.5], [-0.2, 2.0]])
    theta = torch.tensor([0.3, 1.0])
    norms = torch.tensor([2.0, 0.5])
    # ungated: relu(theta - h) * n -> [[0.4, 0.25], [1.0, 0]] -> sums 0.65, 1.0 -> mean 0.825
    assert jumprelu_lp_loss(h, theta, norms, 2.0, gated=False).item() == pytest.approx(1.65)
    # gated: relu(theta - h*n) -> [[0.1, 0.75], [0.7, 0]] -> sums 0.85, 0.7 -> mean 0.775
    assert jumprelu_lp_loss(h, theta, norms, 1.0, gated=True).item() == pytest.approx(0.775)


def test_aux_k_hand_computed() -> None:
    dead_pre = torch.tensor([[1.0, 2.0, -1.0], [0.5, -3.0, 0.2]])
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    residual = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    target = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    kernels = K.Kernels()
    # k_aux = 1: token 0 picks latent 1 (2.0) -> e_hat (0, 2); token 1 picks latent 0 -> (0.5, 0)
    e_hat = kernels.sparse_decode(*reversed(topk_select(dead_pre, 1)), W)
    assert torch.equal(e_hat, torch.tensor([[0.0, 2.0], [0.5, 0.0]]))
    err = (0 - 1) ** 2 + (2 - 1) ** 2 + (0.5 - 0) ** 2 + (0 - 1) ** 2
    var = (1 + 1) + (1 + 1)  # target mean (1, 1)
    scale = min(3 / 1, 1.0)
    got = aux_k_loss(e_hat, residual, target, n_dead=3, k_aux=1, coefficient=0.5)
    assert got.item() == pytest.approx(0.5 * scale * err / var)
    # k_aux larger than the number of dead latents: all 3 are used, scaled by n_dead / k_aux.
    e_hat3 = kernels.sparse_decode(*reversed(topk_select(dead_pre, 3)), W)
    torch.testing.assert_close(e_hat3, torch.stack([1 * W[0] + 2 * W[1], 0.5 * W[0] + 0.2 * W[2]]))
    got6 = aux_k_loss(e_hat3, residual, target, n_dead=3, k_aux=6, coefficient=1.0)
    assert got6.item() == pytest.approx(0.5 * (e_hat3 - residual).pow(2).sum().item() / var)


def test_default_sparsity_type() -> None:
    assert resolve_sparsity_loss_type("relu", None) == "power"
    assert resolve_sparsity_loss_type("jumprelu", None) == "power"
    assert resolve_sparsity_loss_type("batchtopk", None) == "none"
    assert resolve_sparsity_loss_type("topk", "tanh") == "tanh"
