"""Transcoder: shapes, hand-written forward, gradient check, skip path, folding, errors, MLP init."""

from __future__ import annotations

import logging

import pytest
import torch

from saeops.runtime.models import LossContext, build_dictionary, load_dictionary
from saeops.runtime.models.transcoder import Transcoder

from .conftest import make_spec, to_float64, trainer_spec

D_IN, D_OUT, D_SAE = 6, 5, 12


def tc_spec(**kw: object):
    base = dict(type="transcoder", hook_point_in="blocks.0.ln2.hook_out", hook_point_out="blocks.0.hook_mlp_out",
                d_sae=D_SAE, act_fn="relu", norm_activation="inference")
    base.update(kw)
    return make_spec(**base)


def test_shapes_and_registry() -> None:
    m = build_dictionary(tc_spec(skip_connection=True), D_IN, D_OUT)
    assert isinstance(m, Transcoder)
    assert m.W_enc.shape == (D_IN, D_SAE) and m.W_dec.shape == (D_SAE, D_OUT) and m.W_skip.shape == (D_IN, D_OUT)
    assert m(torch.randn(3, D_IN)).shape == (3, D_OUT)
    assert build_dictionary(tc_spec(), D_IN, D_OUT).W_skip is None


def test_forward_matches_reference() -> None:
    m = build_dictionary(tc_spec(skip_connection=True), D_IN, D_OUT)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x = torch.randn(4, D_IN)
    # No b_dec centring: b_dec is an output-space bias.
    ref = (x @ m.W_enc + m.b_enc).relu() @ m.W_dec + m.b_dec + x @ m.W_skip
    assert torch.allclose(m(x), ref, atol=1e-5)


def test_gradcheck() -> None:
    m = to_float64(build_dictionary(tc_spec(skip_connection=True), D_IN, D_OUT))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x = torch.randn(3, D_IN, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, D_OUT, dtype=torch.float64)
    ctx = LossContext(trainer_spec(), l1_coefficient=1e-2)
    assert torch.autograd.gradcheck(lambda x_: m.compute_loss(x_, y, ctx).loss, (x,))
    assert torch.autograd.gradcheck(lambda w: torch.func.functional_call(m, {"W_skip": w}, (x.detach(),)),
                                    (m.W_skip.detach().clone().requires_grad_(),))


def test_equal_hook_points_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        build_dictionary(tc_spec(hook_point_out="blocks.0.ln2.hook_out"), D_IN)
    assert "spec.sae.hookPointOut" in caplog.text and "SAE" in caplog.text


def test_fold_and_save_load_roundtrip(tmp_path) -> None:
    m = build_dictionary(tc_spec(skip_connection=True, norm_activation="dataset-wise", act_fn="topk", top_k=3),
                         D_IN, D_OUT)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    m.set_dataset_norm_factors(2.5, 0.4)
    x = torch.randn(8, D_IN)
    before = m(x)
    m.save(tmp_path)
    loaded = load_dictionary(tmp_path)
    assert isinstance(loaded, Transcoder) and torch.allclose(loaded(x), before, atol=1e-5)
    m.fold_dataset_norm()
    assert torch.allclose(m(x), before, atol=1e-4)


def test_aux_k_and_training_reduce_loss() -> None:
    torch.manual_seed(0)
    A = torch.randn(D_IN, D_OUT)
    m = build_dictionary(tc_spec(act_fn="topk", top_k=3, norm_activation="dataset-wise"), D_IN, D_OUT)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[:4] = True
    first = None
    for _ in range(150):
        x = torch.randn(64, D_IN)
        out = m.compute_loss(x, torch.relu(x @ A), LossContext(trainer_spec(aux_k_coefficient=1 / 32), k=3, dead_mask=dead))
        assert "aux_k" in out.terms
        first = first if first is not None else float(out.terms["mse"])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert float(out.terms["mse"]) < 0.5 * first
