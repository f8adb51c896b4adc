"""A whole TopK SAE training step through the sparse path equals the plain dense one."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import saeops.kernels as K
from tests.kernels.conftest import FAST_BACKENDS, kernels_for

D_MODEL, D_SAE, K_TOP, BATCH = 37, 53, 5, 6


def _params() -> dict[str, Tensor]:
    W_dec = torch.randn(D_SAE, D_MODEL) / D_MODEL**0.5
    return {
        "W_enc": W_dec.t().clone(),
        "b_enc": 0.1 * torch.randn(D_SAE),
        "W_dec": W_dec,
        "b_dec": 0.1 * torch.randn(D_MODEL),
    }


def _dense_loss(p: dict[str, nn.Parameter], x: Tensor, batch: bool) -> Tensor:
    x_c = x - p["b_dec"]
    pre = x_c @ p["W_enc"] + p["b_enc"]
    scores = pre.detach() * p["W_dec"].detach().norm(dim=-1)
    if batch:
        top = scores.reshape(-1).topk(K_TOP * x.shape[0]).indices
        mask = torch.zeros(scores.numel(), dtype=torch.bool)
        mask[top] = True
        mask = mask.view_as(scores)
    else:
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter(1, scores.topk(K_TOP, dim=-1).indices, True)
    acts = pre.relu() * mask
    x_hat = acts @ p["W_dec"] + p["b_dec"]
    return (x_hat - x).pow(2).sum(-1).mean()


def _sparse_loss(p: dict[str, nn.Parameter], x: Tensor, batch: bool, kernels: K.Kernels) -> Tensor:
    encode = kernels.batchtopk_encode if batch else kernels.topk_encode
    values, indices = encode(
        x,
        p["W_enc"],
        p["b_enc"],
        K_TOP,
        p["W_dec"].detach().norm(dim=-1),
        input_bias=p["b_dec"],
    )
    x_hat = kernels.sparse_decode(indices, values, p["W_dec"], p["b_dec"])
    return (x_hat - x).pow(2).sum(-1).mean()


@pytest.mark.parametrize("backend", FAST_BACKENDS, indirect=True)
@pytest.mark.parametrize("batch", [False, True], ids=["topk", "batchtopk"])
def test_training_steps_match_dense(backend: str, batch: bool) -> None:
    init = _params()
    dense = {n: nn.Parameter(t.clone()) for n, t in init.items()}
    sparse = {n: nn.Parameter(t.clone()) for n, t in init.items()}
    opt_d = torch.optim.Adam(dense.values(), lr=1e-3)
    opt_s = torch.optim.Adam(sparse.values(), lr=1e-3)
    kernels = kernels_for(backend)
    for _ in range(3):
        x = torch.randn(BATCH, D_MODEL)
        loss_d = _dense_loss(dense, x, batch)
        loss_s = _sparse_loss(sparse, x, batch, kernels)
        torch.testing.assert_close(loss_s, loss_d, rtol=1e-5, atol=1e-5)
        opt_d.zero_grad()
        opt_s.zero_grad()
        loss_d.backward()
        loss_s.backward()
        for name in init:
            torch.testing.assert_close(sparse[name].grad, dense[name].grad, rtol=1e-5, atol=1e-5, msg=name)
        opt_d.step()
        opt_s.step()
    for name in init:
        torch.testing.assert_close(sparse[name], dense[name], rtol=1e-5, atol=1e-5, msg=name)
