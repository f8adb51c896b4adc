"""A tiny TopK SAE trained with plain Adam recovers known sparse ground-truth features."""

from __future__ import annotations

import pytest
import torch

from saeops.api.training import InitializerSpec
from saeops.runtime.models import Initializer, LossContext, build_dictionary

from .conftest import make_spec

D, N_FEATURES, D_SAE, K = 32, 48, 96, 4


def _synthetic(n: int, features: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    # Each token: 3-5 active ground-truth features with non-negative magnitudes.
    n_active = torch.randint(3, 6, (n,), generator=g)
    scores = torch.rand(n, N_FEATURES, generator=g)
    ranks = scores.argsort(-1).argsort(-1)
    mask = ranks < n_active[:, None]
    codes = mask * (0.5 + 1.5 * torch.rand(n, N_FEATURES, generator=g))
    return codes @ features


@pytest.mark.slow
def test_topk_sae_recovers_ground_truth_features() -> None:
    g = torch.Generator().manual_seed(1234)
    torch.manual_seed(1234)
    features = torch.randn(N_FEATURES, D, generator=g)
    features = features / features.norm(dim=-1, keepdim=True)

    model = build_dictionary(make_spec(act_fn="topk", top_k=K, d_sae=D_SAE), D)
    Initializer(InitializerSpec(grid_search_init_norm=True), seed=0).initialize(
        model, _synthetic(4096, features, g)
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx = LossContext(k=K)
    for _ in range(400):
        out = model.compute_loss(_synthetic(256, features, g), None, ctx)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    W = model.W_dec.detach()
    cos = (features @ (W / W.norm(dim=-1, keepdim=True)).T)  # (n_features, d_sae)
    recovery = cos.max(dim=1).values.mean().item()
    assert recovery >= 0.9, f"mean max cosine {recovery:.3f}"
