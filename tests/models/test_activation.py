"""Activation functions: forward values and gradients."""

from __future__ import annotations

import math

import torch

from saeops.runtime.models.activation import BatchTopK, JumpReLU, ReLU, TopK


def test_relu_values_and_grad() -> None:
    pre = torch.tensor([[-1.0, 0.5, 2.0]], requires_grad=True)
    acts = ReLU()(pre)
    assert torch.equal(acts.dense(), torch.tensor([[0.0, 0.5, 2.0]]))
    acts.dense().sum().backward()
    assert torch.equal(pre.grad, torch.tensor([[0.0, 1.0, 1.0]]))


def test_jumprelu_forward_and_input_grad() -> None:
    act = JumpReLU(3, window=0.2)
    act.reset_threshold(math.log(0.5))
    pre = torch.tensor([[0.4, 0.6, -1.0], [1.0, 0.49, 0.51]], requires_grad=True)
    out = act(pre).dense()
    assert torch.equal(out, torch.tensor([[0.0, 0.6, 0.0], [1.0, 0.0, 0.51]]))
    out.sum().backward()
    # dy/dx = H(x - e^t): the jump itself passes no gradient to x.
    assert torch.equal(pre.grad, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]))


def test_jumprelu_threshold_grad_matches_ste_formula() -> None:
    eps = 0.2
    theta = torch.tensor([0.5, 0.5, 0.5, 0.5])
    act = JumpReLU(4, window=eps)
    with torch.no_grad():
        act.log_jumprelu_threshold.copy_(theta.log())
    # Column 0: both tokens inside the window; column 1: one inside; column 2: outside;
    # column 3: inside the window but non-positive pre-activation (no gradient).
    pre = torch.tensor([[0.45, 0.55, 0.2, -0.0], [0.58, 0.9, 0.75, -0.01]])
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 7.0, 1.0, 1.0]])  # upstream gradient
    (act(pre).dense() * g).sum().backward()
    in_window = ((pre - theta).abs() < eps / 2) & (pre > 0)
    # dL/dtheta = sum_b g * (-theta/eps) * K; dL/dt = theta * dL/dtheta (t = log theta).
    expected = (theta * (g * in_window * (-theta / eps)).sum(0))
    assert torch.allclose(act.log_jumprelu_threshold.grad, expected)
    assert act.log_jumprelu_threshold.grad[0] == -0.5 * (0.5 / eps) * 1.5
    assert act.log_jumprelu_threshold.grad[2] == 0 and act.log_jumprelu_threshold.grad[3] == 0


def test_jumprelu_gates_on_scaled_scores() -> None:
    act = JumpReLU(2, window=1.0)
    act.reset_threshold(0.0)
    pre = torch.tensor([[0.6, 0.6]])
    scale = torch.tensor([2.0, 1.0])  # score 1.2 passes, 0.6 does not
    out = act(pre, score_scale=scale).dense()
    assert torch.allclose(out, torch.tensor([[0.6, 0.0]]))  # values stay unscaled


def test_topk_values_indices_and_grad() -> None:
    pre = torch.tensor([[3.0, -1.0, 2.0, 0.5], [0.1, 0.2, 0.3, 0.4]], requires_grad=True)
    acts = TopK(2)(pre)
    assert acts.is_sparse
    dense = acts.dense()
    assert torch.equal(dense, torch.tensor([[3.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.3, 0.4]]))
    assert torch.equal(acts.l0(), torch.tensor([2.0, 2.0]))
    dense.sum().backward()
    assert torch.equal(pre.grad, (dense != 0).float())
    # k given at call time overrides the default (the k schedule).
    assert torch.equal(TopK(2)(pre.detach(), k=3).l0(), torch.tensor([3.0, 3.0]))


def test_topk_selects_on_score_but_returns_pre() -> None:
    pre = torch.tensor([[1.0, 0.8, 0.1]])
    acts = TopK(1)(pre, score_scale=torch.tensor([0.5, 1.0, 1.0]))  # scores 0.5, 0.8, 0.1
    assert acts.indices.tolist() == [[1]] and torch.allclose(acts.values, torch.tensor([[0.8]]))


def test_batchtopk_total_active_is_k_times_batch() -> None:
    pre = torch.rand(16, 64) + 0.01  # all positive so k*B latents can fire
    acts = BatchTopK(4)(pre)
    assert int(acts.l0().sum()) == 4 * 16
    # The kept entries are exactly the k*B largest of the batch.
    kth = pre.flatten().topk(64).values.min()
    assert torch.equal(acts.dense() != 0, pre >= kth)


def test_topk_l0_equals_k() -> None:
    acts = TopK(5)(torch.randn(32, 100) + 3)
    assert torch.all(acts.l0() == 5)
    assert math.isclose(float((acts.fire_counts() > 0).sum()), float((acts.dense() != 0).any(0).sum()))
