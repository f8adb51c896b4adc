"""Lorsa: shapes, hand-written forward, gradient check, masking, errors, init from the model's
attention, and a learning test on a real (random TransformerLens) attention layer."""

from __future__ import annotations

import math

import pytest
import torch

from saeops.api.training import DictionarySpec, InitializerSpec
from saeops.runtime.models import (
    Initializer,
    LossContext,
    build_dictionary,
    load_dictionary,
)
from saeops.runtime.models.init_from_model import initialize_from_language_model
from saeops.runtime.models.lorsa import LowRankSparseAttention

from .conftest import to_float64, trainer_spec

D, N_QK, D_QK, D_SAE = 8, 2, 4, 12


def lorsa_spec(**kw: object) -> DictionarySpec:
    base: dict[str, object] = dict(type="lorsa", hook_point_in="blocks.0.ln1.hook_out",
                                   hook_point_out="blocks.0.hook_attn_out", d_sae=D_SAE, act_fn="relu", top_k=3,
                                   norm_activation="inference", lorsa={"n_qk_heads": N_QK, "d_qk_head": D_QK})
    base.update(kw)
    return DictionarySpec(**base)


def randomise(m: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(std=0.5)


def test_shapes() -> None:
    m = build_dictionary(lorsa_spec(), D)
    assert isinstance(m, LowRankSparseAttention)
    assert m.W_Q.shape == (N_QK, D, D_QK) and m.W_V.shape == (D, D_SAE) and m.W_O.shape == (D_SAE, D)
    assert m(torch.randn(2, 5, D)).shape == (2, 5, D)
    assert m.encode(torch.randn(2, 5, D)).dense().shape == (10, D_SAE)


def test_forward_matches_reference() -> None:
    m = build_dictionary(lorsa_spec(), D)
    randomise(m)
    B, T = 2, 5
    x = torch.randn(B, T, D)
    ref = torch.zeros(B, T, D)
    per_group = D_SAE // N_QK
    for b in range(B):
        for t in range(T):
            out = m.b_O.clone()
            for i in range(D_SAE):
                h = i // per_group
                q = x[b, t] @ m.W_Q[h] + m.b_Q[h]
                scores = torch.stack([q @ (x[b, s] @ m.W_K[h] + m.b_K[h]) for s in range(t + 1)]) / math.sqrt(D_QK)
                pattern = scores.softmax(0)
                z = sum(pattern[s] * (x[b, s] @ m.W_V[:, i] + m.b_V[i]) for s in range(t + 1))
                out = out + torch.relu(z) * m.W_O[i]
            ref[b, t] = out
    assert torch.allclose(m(x), ref, atol=1e-4)


def test_topk_over_heads_per_token() -> None:
    m = build_dictionary(lorsa_spec(act_fn="topk"), D)
    acts = m.encode(torch.randn(3, 4, D))
    assert torch.all((acts.dense() != 0).sum(-1) <= 3)


def test_gradcheck() -> None:
    m = to_float64(build_dictionary(lorsa_spec(), D))
    randomise(m)
    x = torch.randn(2, 4, D, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 4, D, dtype=torch.float64)
    ctx = LossContext(trainer_spec(), l1_coefficient=1e-2)
    assert torch.autograd.gradcheck(lambda x_: m.compute_loss(x_, y, ctx).loss, (x,))
    wq = m.W_Q.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda w: torch.func.functional_call(m, {"W_Q": w}, (x.detach(),)), (wq,))


def test_padding_is_not_attended_nor_scored() -> None:
    m = build_dictionary(lorsa_spec(), D)
    randomise(m)
    x, y = torch.randn(2, 5, D), torch.randn(2, 5, D)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    out = m.compute_loss(x, y, LossContext(attention_mask=mask))
    assert out.x_hat.shape == (8, D) and out.acts.dense().shape == (8, D_SAE)
    # Changing padded positions changes nothing that is scored.
    x2 = x.clone()
    x2[1, 3:] = 100.0
    assert torch.allclose(m.compute_loss(x2, y, LossContext(attention_mask=mask)).x_hat, out.x_hat, atol=1e-5)


@pytest.mark.parametrize(("field", "kw"), [
    ("hookPointOut", {"hook_point_out": "blocks.0.hook_mlp_out"}),
    ("hookPointIn", {"hook_point_in": "blocks.1.ln1.hook_out"}),
    ("lorsa.nQkHeads", {"lorsa": {"n_qk_heads": 5, "d_qk_head": 4}}),
])
def test_bad_input_names_the_field(field: str, kw: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=f"spec.sae.{field}"):
        build_dictionary(lorsa_spec(**kw), D)


def test_rotary_and_fold_and_save(tmp_path) -> None:
    m = build_dictionary(lorsa_spec(norm_activation="dataset-wise", act_fn="topk",
                                    lorsa={"n_qk_heads": N_QK, "d_qk_head": D_QK,
                                           "positional_embedding": "rotary"}), D)
    randomise(m)
    m.set_dataset_norm_factors(2.0, 0.5)
    x = torch.randn(2, 6, D)
    before = m(x)
    m.save(tmp_path)
    assert torch.allclose(load_dictionary(tmp_path)(x), before, atol=1e-5)
    m.fold_dataset_norm()
    assert torch.allclose(m(x), before, atol=1e-4)


# ---------------------------------------------------------------- on a real attention layer


@pytest.fixture(scope="module")
def attention_data():
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    torch.manual_seed(0)
    cfg = TransformerBridgeConfig(n_layers=1, d_model=32, n_ctx=64, d_head=8, n_heads=4, d_vocab=200,
                                  act_fn="gelu", d_mlp=64)
    bridge = TransformerBridge.boot_native(cfg)
    tokens = torch.randint(0, 200, (96, 16))
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n in ("blocks.0.ln1.hook_out",
                                                                              "blocks.0.hook_attn_out"))
    return bridge, cache["blocks.0.ln1.hook_out"].detach(), cache["blocks.0.hook_attn_out"].detach()


def _ev(m: LowRankSparseAttention, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        y_hat = m(x)
    return float(1 - (y_hat - y).pow(2).sum() / (y - y.mean((0, 1))).pow(2).sum())


def _spec(init_from_model: bool) -> DictionarySpec:
    return lorsa_spec(d_sae=64, act_fn="topk", top_k=8, norm_activation="dataset-wise",
                      lorsa={"n_qk_heads": 4, "d_qk_head": 8, "init_from_model": init_from_model})


def test_init_from_model_copies_qk(attention_data) -> None:
    bridge, x, y = attention_data
    m = build_dictionary(_spec(True), 32)
    Initializer(InitializerSpec(), seed=0).initialize(m, x[:32], y[:32])
    assert initialize_from_language_model(m, bridge, InitializerSpec())
    x_n = x[:4] * m.input_factor(x[:4])
    with torch.no_grad():
        ours = m.patterns(x_n)
        a = bridge.blocks[0].attn
        q = torch.einsum("btd,hdk->bhtk", x[:4], a.W_Q) + a.b_Q[None, :, None]
        k = torch.einsum("btd,hdk->bhtk", x[:4], a.W_K) + a.b_K[None, :, None]
        s = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~torch.ones(16, 16, dtype=torch.bool).tril(), -1e9)
    assert torch.allclose(ours, s.softmax(-1), atol=1e-5)


@pytest.mark.slow
def test_lorsa_learns_an_attention_layer(attention_data) -> None:
    _, x, y = attention_data
    x_train, y_train, x_test, y_test = x[:80], y[:80], x[80:], y[80:]
    torch.manual_seed(0)
    m = build_dictionary(_spec(False), 32)
    Initializer(InitializerSpec(grid_search_init_norm=True), seed=0).initialize(m, x_train, y_train)
    random_ev = _ev(m, x_test, y_test)
    opt = torch.optim.Adam(m.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, 80, (16,), generator=g)
        out = m.compute_loss(x_train[idx], y_train[idx], LossContext(k=8))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    trained_ev = _ev(m, x_test, y_test)
    assert trained_ev > 0.6 and trained_ev > random_ev + 0.5, (random_ev, trained_ev)
