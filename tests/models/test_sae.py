"""The SAE: shapes, gating, sparse paths, losses in the model, save/load, registry."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import saeops.kernels as K
from saeops.runtime.models import (
    DICTIONARIES,
    FeatureActs,
    LossContext,
    SparseAutoEncoder,
    build_dictionary,
    load_dictionary,
)
from saeops.runtime.models.activation import topk_select
from saeops.runtime.models.losses import aux_k_loss

from .conftest import make_spec, trainer_spec

D = 16


def test_shapes_and_parameter_layout() -> None:
    m = build_dictionary(make_spec(), D)
    assert isinstance(m, SparseAutoEncoder) and m.d_sae == 64
    assert m.W_enc.shape == (D, 64) and m.b_enc.shape == (64,)
    assert m.W_dec.shape == (64, D) and m.b_dec.shape == (D,)
    assert m(torch.randn(5, D)).shape == (5, D)


def test_glu_encoder_shapes_and_form() -> None:
    m = build_dictionary(make_spec(use_glu_encoder=True, act_fn="relu"), D)
    assert m.W_gate.shape == (D, 64) and m.b_gate.shape == (64,)
    with torch.no_grad():
        m.b_dec.normal_()
    x = torch.randn(7, D)
    acts = m.encode(x)
    assert acts.dense().shape == (7, 64)
    x_c = x * m.input_factor(x) - m.b_dec
    expected = ((x_c @ m.W_enc + m.b_enc) * torch.sigmoid(x_c @ m.W_gate + m.b_gate)).relu()
    assert torch.allclose(acts.dense(), expected, atol=1e-6)


def test_input_is_centred_by_decoder_bias() -> None:
    m = build_dictionary(make_spec(act_fn="relu", norm_activation="inference"), D)
    x = torch.randn(3, D)
    with torch.no_grad():
        m.b_dec.copy_(x[0])
    assert torch.allclose(m.encode(x[:1]).dense(), m.b_enc.relu()[None], atol=1e-6)


def test_topk_gating_uses_decoder_norms() -> None:
    m = build_dictionary(make_spec(act_fn="topk", top_k=3, norm_activation="inference"), D)
    with torch.no_grad():
        m.W_dec.mul_(torch.rand(64, 1) * 5 + 0.1)  # very different decoder norms
    x = torch.randn(8, D)
    acts = m.encode(x)
    pre = (x - m.b_dec) @ m.W_enc + m.b_enc
    expected_idx = (pre * m.decoder_norms()).topk(3, dim=-1).indices
    assert torch.equal(acts.indices.sort(-1).values, expected_idx.sort(-1).values)
    assert torch.allclose(acts.values, pre.gather(-1, acts.indices).relu())  # unscaled values
    ungated = build_dictionary(make_spec(act_fn="topk", top_k=3, norm_activation="inference",
                                         sparsity_include_decoder_norm=False), D)
    ungated.load_state_dict(m.state_dict())
    assert torch.equal(ungated.encode(x).indices.sort(-1).values, pre.topk(3, dim=-1).indices.sort(-1).values)


def test_decoder_norm_helpers() -> None:
    m = build_dictionary(make_spec(), D)
    m.set_decoder_norm(0.5)
    assert torch.allclose(m.decoder_norms(), torch.full((64,), 0.5))
    m.set_decoder_norm(torch.arange(1, 65).float())
    assert torch.allclose(m.decoder_norms(), torch.arange(1, 65).float())


def test_sparse_and_dense_decode_agree() -> None:
    m = build_dictionary(make_spec(act_fn="topk"), D)
    acts = m.encode(torch.randn(6, D))
    dense_path = m.decode(acts.dense())
    assert torch.allclose(m.decode(acts), dense_path, atol=1e-5)
    tri = build_dictionary(make_spec(act_fn="relu", use_triton_kernel=True,
                                     sparsity_threshold_for_triton_spmm_kernel=0.5), D)
    tri.load_state_dict(m.state_dict())
    assert torch.allclose(tri.decode(acts.dense()), dense_path, atol=1e-5)


def test_ops_round_trip_and_padding() -> None:
    dense = torch.tensor([[0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    values, indices = K.dense_to_sparse(dense)
    assert values.shape[0] == 3 and values.shape[1] >= 2  # padded to at least the max row nnz
    assert torch.equal(K.sparse_to_dense(indices, values, 4), dense)
    W = torch.randn(4, 5)
    assert torch.allclose(K.Kernels().sparse_decode(indices, values, W, None), dense @ W, atol=1e-6)
    acts = FeatureActs.from_dense(dense)
    assert acts.fire_counts().tolist() == [1, 1, 0, 1]
    assert FeatureActs.from_sparse(values, indices, 4).fire_counts().tolist() == [1, 1, 0, 1]
    assert acts.l0().tolist() == [2.0, 0.0, 1.0]


def test_batchtopk_model_l0_and_grads() -> None:
    m = build_dictionary(make_spec(act_fn="batchtopk", top_k=4), D)
    x = torch.randn(32, D)
    out = m.compute_loss(x, None, LossContext(k=4))
    assert out.acts.l0().sum().item() == 4 * 32
    out.loss.backward()
    # Only latents that fired get encoder gradient (sparse backward).
    fired = out.acts.fire_counts() > 0
    assert torch.all(m.W_enc.grad[:, ~fired] == 0) and m.W_enc.grad[:, fired].abs().sum() > 0


def test_loss_terms_per_act_fn() -> None:
    x = torch.randn(16, D)
    relu = build_dictionary(make_spec(act_fn="relu"), D).compute_loss(
        x, None, LossContext(trainer_spec(), l1_coefficient=0.1))
    assert set(relu.terms) == {"mse", "sparsity", "l0"}
    assert relu.loss.item() == pytest.approx(relu.terms["mse"].item() + relu.terms["sparsity"].item(), rel=1e-5)
    jump = build_dictionary(make_spec(act_fn="jumprelu"), D).compute_loss(
        x, None, LossContext(trainer_spec(lp_coefficient=0.01, sparsity_loss_type="tanh-quad"), l1_coefficient=0.1))
    assert set(jump.terms) == {"mse", "sparsity", "lp", "l0"}
    topk = build_dictionary(make_spec(act_fn="topk"), D).compute_loss(x, None, LossContext(trainer_spec(), k=2))
    assert set(topk.terms) == {"mse", "l0"} and topk.terms["l0"].item() == 2


def test_aux_k_in_model() -> None:
    m = build_dictionary(make_spec(act_fn="topk"), D)
    x = torch.randn(16, D)
    none_dead = m.compute_loss(x, None, LossContext(trainer_spec(aux_k_coefficient=1 / 32),
                                                    dead_mask=torch.zeros(64, dtype=torch.bool)))
    assert none_dead.terms["aux_k"].item() == 0.0
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:10] = True
    out = m.compute_loss(x, None, LossContext(trainer_spec(aux_k_coefficient=1.0, k_aux=3), dead_mask=dead))
    assert out.terms["aux_k"].item() > 0
    # The Aux-K term alone only trains the dead latents' decoder rows.
    m.zero_grad()
    x_n = x * m.input_factor(x)
    pre = m.centre(x_n) @ m.W_enc + m.b_enc
    values, indices = topk_select(pre[:, dead], 3)
    e_hat = K.Kernels().sparse_decode(indices, values, m.W_dec[dead])
    aux = aux_k_loss(e_hat, torch.zeros(16, D), x_n, 10, 3, 1.0)
    aux.backward()
    assert torch.all(m.W_dec.grad[~dead] == 0) and m.W_dec.grad[dead].abs().sum() > 0


def test_loss_context_holds_the_trainer_spec() -> None:
    # The trainer's static settings reach the loss through the spec; no trainer: MSE only.
    ts = trainer_spec(sparsity_loss_type="tanh", tanh_stretch_coefficient=2.0, lp_coefficient=0.5)
    m = build_dictionary(make_spec(act_fn="jumprelu"), D)
    x = torch.randn(16, D)
    out = m.compute_loss(x, None, LossContext(ts, l1_coefficient=0.2))
    assert set(out.terms) == {"mse", "sparsity", "lp", "l0"}
    dense = out.acts.dense()
    expected = 0.2 * torch.tanh(2.0 * dense * m.decoder_norms()).sum(-1).mean()
    assert out.terms["sparsity"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(m.compute_loss(x, None, LossContext(k=5)).terms) == {"mse", "l0"}
    assert set(m.compute_loss(x, None, LossContext(sparsity_loss_type="none")).terms) == {"mse", "l0"}
    with pytest.raises(ValueError, match="sparsityLossType"):
        LossContext(ts, sparsity_loss_type="none")


@pytest.mark.parametrize(
    "overrides",
    [{"act_fn": "relu"}, {"act_fn": "jumprelu", "use_glu_encoder": True}, {"act_fn": "topk", "use_decoder_bias": False}],
)
def test_save_load_round_trip(overrides: dict, tmp_path) -> None:
    m = build_dictionary(make_spec(norm_activation="dataset-wise", **overrides), D)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    m.set_dataset_norm_factors(0.37)
    m.save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["spec"]["hookPointIn"] == "blocks.0.hook_resid_post"  # manifest (camelCase) form
    assert (cfg["d_in"], cfg["d_out"], cfg["d_sae"], cfg["type"]) == (D, D, 64, "sae")
    assert cfg["norm_factor_in"] == pytest.approx(0.37)
    names = set(load_file(str(tmp_path / "sae.safetensors")))
    assert {"W_enc", "b_enc", "W_dec"} <= names
    loaded = load_dictionary(tmp_path)
    x = torch.randn(9, D)
    assert torch.equal(loaded(x), m(x))
    assert loaded.spec == m.spec


def test_parameter_groups_scale_jumprelu_lr() -> None:
    m = build_dictionary(make_spec(act_fn="jumprelu"), D)
    groups = m.parameter_groups(lr=1e-3, jumprelu_lr_factor=0.1)
    assert [g["lr"] for g in groups] == [1e-3, 1e-4]
    assert groups[1]["params"] == [m.jumprelu.log_jumprelu_threshold]
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    assert len(build_dictionary(make_spec(), D).parameter_groups(lr=1e-3)) == 1


def test_registry() -> None:
    assert DICTIONARIES["sae"] is SparseAutoEncoder
    assert set(DICTIONARIES) == {"sae", "transcoder", "clt", "lorsa"}
    with pytest.raises(ValueError, match="reconstructs its input"):
        build_dictionary(make_spec(), D, D + 1)
