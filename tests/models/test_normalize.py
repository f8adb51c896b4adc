"""Normalisation modes and folding the dataset-wise factors into the weights."""

from __future__ import annotations

import math

import pytest
import torch

from saeops.api.training import InitializerSpec
from saeops.runtime.models import (
    Initializer,
    LossContext,
    build_dictionary,
    compute_dataset_norm_factor,
    load_dictionary,
)

from .conftest import make_spec

D = 16


def _raw(n: int = 64) -> torch.Tensor:
    return torch.randn(n, D) * torch.linspace(0.5, 20.0, n)[:, None] + 3.0


def test_token_wise_gives_every_token_norm_sqrt_d() -> None:
    m = build_dictionary(make_spec(norm_activation="token-wise"), D)
    x = _raw()
    norms = (x * m.input_factor(x)).norm(dim=-1)
    assert torch.allclose(norms, torch.full_like(norms, math.sqrt(D)), rtol=1e-5)


def test_batch_wise_gives_average_norm_sqrt_d() -> None:
    m = build_dictionary(make_spec(norm_activation="batch-wise"), D)
    x = _raw()
    xn = x * m.input_factor(x)
    assert xn.norm(dim=-1).mean().item() == pytest.approx(math.sqrt(D), rel=1e-5)
    assert xn.norm(dim=-1).std() > 1  # a single factor: relative norms preserved


def test_dataset_wise_uses_the_fixed_factor() -> None:
    m = build_dictionary(make_spec(norm_activation="dataset-wise"), D)
    sample = _raw(256)
    factor = compute_dataset_norm_factor(sample)
    assert factor == pytest.approx(math.sqrt(D) / sample.norm(dim=-1).mean().item(), rel=1e-6)
    Initializer(InitializerSpec()).initialize(m, sample)
    assert float(m.norm_factor_in) == pytest.approx(factor, rel=1e-6)
    x = _raw(8)
    assert torch.allclose(m.input_factor(x), torch.tensor(factor))  # same for any batch


def test_forward_returns_raw_space_and_loss_works_normalised() -> None:
    m = build_dictionary(make_spec(norm_activation="token-wise"), D)
    x = _raw(8)
    out = m.compute_loss(x, None, LossContext())
    f = m.input_factor(x)
    assert torch.allclose(m(x), out.x_hat / f, atol=1e-5)
    assert torch.allclose(out.target, x * f)


@pytest.mark.parametrize(
    "overrides",
    [
        {"act_fn": "relu"},
        {"act_fn": "jumprelu"},
        {"act_fn": "jumprelu", "sparsity_include_decoder_norm": False},
        {"act_fn": "topk"},
        {"act_fn": "batchtopk", "use_glu_encoder": True},
        {"act_fn": "relu", "use_decoder_bias": False},
    ],
)
def test_folding_reproduces_dataset_wise_outputs(overrides: dict, tmp_path) -> None:
    m = build_dictionary(make_spec(norm_activation="dataset-wise", **overrides), D)
    sample = _raw(256)
    Initializer(InitializerSpec(bias_init_method="geometric_median"), seed=1).initialize(m, sample)
    with torch.no_grad():  # make every parameter matter: non-trivial biases and norms
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if getattr(m, "jumprelu", None) is not None:
            m.jumprelu.log_jumprelu_threshold.fill_(math.log(0.3))
    x = _raw(64)
    before = m(x)
    acts_before = m.encode(x).dense()
    assert before.abs().max() > 1
    m.fold_dataset_norm()
    assert m.spec.norm_activation == "inference" and float(m.norm_factor_in) == 1.0
    after = m(x)
    assert torch.allclose(after, before, atol=1e-5 * before.abs().max().item(), rtol=1e-5)
    # Latents fire on the same entries; values are rescaled by the input factor.
    assert torch.equal(m.encode(x).dense() != 0, acts_before != 0)
    # The folded model round-trips through save/load.
    m.save(tmp_path)
    assert torch.allclose(load_dictionary(tmp_path)(x), after)


@pytest.mark.parametrize("use_glu_encoder", [False, True])
def test_folding_with_distinct_in_and_out_factors(use_glu_encoder: bool) -> None:
    # Transcoders will have different input/output factors; b_dec centring must still fold exactly.
    m = build_dictionary(make_spec(act_fn="jumprelu", use_glu_encoder=use_glu_encoder), D)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
        m.jumprelu.log_jumprelu_threshold.fill_(math.log(0.05))
    m.set_dataset_norm_factors(0.7, 1.3)
    x = _raw(32) / 5
    before = m(x)
    m.fold_dataset_norm()
    assert torch.allclose(m(x), before, atol=1e-5 * before.abs().max().item(), rtol=1e-5)


def test_fold_requires_dataset_wise() -> None:
    m = build_dictionary(make_spec(norm_activation="token-wise"), D)
    with pytest.raises(ValueError, match="dataset-wise"):
        m.fold_dataset_norm()
