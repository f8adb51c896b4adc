"""Cross-layer transcoder: shapes, masking (no writes to earlier layers), hand-written forward,
gradient check, act fns, per-layer metrics, hook-point errors, save/load, trainer batch contract."""

from __future__ import annotations

import pytest
import torch

from saeops.api.training import DictionarySpec, InitializerSpec, TrainerSpec
from saeops.runtime.models import (
    Initializer,
    LossContext,
    build_dictionary,
    load_dictionary,
)
from saeops.runtime.models.clt import CrossLayerTranscoder
from saeops.runtime.train.trainer import Trainer

from .conftest import to_float64, trainer_spec

L, D_IN, D_OUT, D_LAYER = 3, 6, 5, 8
IN = [f"blocks.{i}.ln2.hook_out" for i in range(L)]
OUT = [f"blocks.{i}.hook_mlp_out" for i in range(L)]


def clt_spec(**kw: object) -> DictionarySpec:
    base: dict[str, object] = dict(type="clt", hook_points_in=IN, hook_points_out=OUT, d_sae=D_LAYER,
                                   act_fn="relu", top_k=2, norm_activation="inference")
    base.update(kw)
    return DictionarySpec(**base)


def randomise(m: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()


def test_shapes() -> None:
    m = build_dictionary(clt_spec(), D_IN, D_OUT)
    assert isinstance(m, CrossLayerTranscoder)
    assert m.d_sae == L * D_LAYER and m.W_enc.shape == (L, D_IN, D_LAYER)
    assert [tuple(w.shape) for w in m.W_dec] == [(t + 1, D_LAYER, D_OUT) for t in range(L)]
    assert sum(w.shape[0] for w in m.W_dec) == L * (L + 1) // 2  # L(L+1)/2 decoder blocks
    assert m(torch.randn(4, L, D_IN)).shape == (4, L, D_OUT)


def test_forward_matches_reference() -> None:
    m = build_dictionary(clt_spec(), D_IN, D_OUT)
    randomise(m)
    x = torch.randn(4, L, D_IN)
    f = [(x[:, s] @ m.W_enc[s] + m.b_enc[s]).relu() for s in range(L)]
    ref = torch.stack([sum(f[s] @ m.W_dec[t][s] for s in range(t + 1)) + m.b_dec[t] for t in range(L)], 1)
    assert torch.allclose(m(x), ref, atol=1e-4)


@pytest.mark.parametrize("act_fn", ["relu", "topk", "layertopk", "batchlayertopk", "batchtopk", "jumprelu"])
def test_no_feature_writes_to_an_earlier_layer(act_fn: str) -> None:
    m = build_dictionary(clt_spec(act_fn=act_fn), D_IN, D_OUT)
    randomise(m)
    if m.jumprelu is not None:
        m.jumprelu.log_jumprelu_threshold.data.fill_(-5.0)
    # Structural: the decoder of target t has blocks for sources 0..t only.
    for t, w in enumerate(m.W_dec):
        assert w.shape[0] == t + 1
    # Functional: activating only features of layer s changes no output before s.
    for s in range(L):
        acts = torch.zeros(2, L * D_LAYER)
        acts[:, s * D_LAYER:(s + 1) * D_LAYER] = torch.rand(2, D_LAYER) + 0.1
        delta = m.decode(acts) - m.decode(torch.zeros_like(acts))
        assert torch.all(delta[:, :s] == 0) and torch.all(delta[:, s:].abs().sum(-1) > 0)
    # Sparse decode path agrees with the dense one.
    acts = m.encode(torch.randn(5, L, D_IN))
    dense = m.decode(acts.dense())
    assert torch.allclose(m.decode(acts), dense, atol=1e-4)
    # full_decoder_rows (used by Aux-K) is zero for targets before the feature's layer.
    rows = m.decoder_rows(torch.tensor([D_LAYER + 1])).reshape(L, D_OUT)
    assert torch.all(rows[0] == 0) and torch.equal(rows[1], m.W_dec[1][1, 1])


def test_layertopk_counts() -> None:
    k = 2
    x = torch.randn(6, L, D_IN)
    lt = build_dictionary(clt_spec(act_fn="layertopk", top_k=k), D_IN, D_OUT)
    assert torch.all((lt.encode(x).dense() != 0).sum(-1) <= k * L)
    blt = build_dictionary(clt_spec(act_fn="batchlayertopk", top_k=k), D_IN, D_OUT)
    assert int((blt.encode(x).dense() != 0).sum()) <= k * L * 6
    tk = build_dictionary(clt_spec(act_fn="topk", top_k=k), D_IN, D_OUT)
    per_layer = (tk.encode(x).dense() != 0).reshape(6, L, D_LAYER).sum(-1)
    assert torch.all(per_layer <= k)


def test_decoder_norm_sums_over_target_layers() -> None:
    m = build_dictionary(clt_spec(), D_IN, D_OUT)
    norms = m.layer_decoder_norms()
    expected_0 = sum(m.W_dec[t][0].norm(dim=-1) for t in range(L))
    assert torch.allclose(norms[0], expected_0) and torch.allclose(norms[L - 1], m.W_dec[L - 1][L - 1].norm(dim=-1))


def test_gradcheck() -> None:
    m = to_float64(build_dictionary(clt_spec(), D_IN, D_OUT))
    randomise(m)
    x = torch.randn(3, L, D_IN, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, L, D_OUT, dtype=torch.float64)
    ctx = LossContext(trainer_spec(), l1_coefficient=1e-2)
    assert torch.autograd.gradcheck(lambda x_: m.compute_loss(x_, y, ctx).loss, (x,))
    w = m.W_dec[1].detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda w_: torch.func.functional_call(m, {"W_dec.1": w_}, (x.detach(),)), (w,))


@pytest.mark.parametrize(("field", "kw"), [
    ("hookPointsIn", {"hook_points_in": [IN[1], IN[0], IN[2]]}),
    ("hookPointsIn", {"hook_points_in": [IN[0], IN[0], IN[2]]}),
    ("hookPointsOut", {"hook_points_out": ["hook_embed", OUT[1], OUT[2]]}),
])
def test_layer_order_errors_name_the_field(field: str, kw: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=f"spec.sae.{field}"):
        build_dictionary(clt_spec(**kw), D_IN, D_OUT)


def test_per_layer_metrics_save_load_and_fold(tmp_path) -> None:
    m = build_dictionary(clt_spec(norm_activation="dataset-wise", act_fn="topk", top_k=3,
                                  sparsity_include_decoder_norm=False), D_IN, D_OUT)
    x, y = torch.randn(64, L, D_IN) * 3, torch.randn(64, L, D_OUT)
    Initializer(InitializerSpec(grid_search_init_norm=True, bias_init_method="geometric_median"),
                seed=0).initialize(m, x, y)
    assert m.norm_factor_in.shape == (L,)
    out = m.compute_loss(x, y, LossContext(k=3))
    metrics = m.per_layer_metrics(out)
    assert sorted(metrics) == [0, 1, 2] and set(metrics[0]) == {"explained_variance", "mse", "l0"}
    before = m(x)
    m.save(tmp_path)
    assert torch.allclose(load_dictionary(tmp_path)(x), before, atol=1e-5)
    m.fold_dataset_norm()
    assert torch.allclose(m(x), before, atol=1e-4)


def test_trainer_stacks_layers_and_reports_per_layer_metrics() -> None:
    spec = clt_spec(act_fn="layertopk", norm_activation="dataset-wise")
    m = build_dictionary(spec, D_IN, D_OUT)
    W = torch.randn(L, D_IN, D_OUT)
    trainer = TrainerSpec(total_training_tokens=32 * 40, batch_size=32, lr=5e-3, log_frequency=20,
                          progress_bar=False, aux_k_coefficient=1 / 32)
    t = Trainer(m, trainer)

    def batches():
        while True:
            x = torch.randn(32, L, D_IN)
            y = torch.einsum("bld,ldo->blo", x, W).cumsum(1)  # later layers depend on earlier ones
            yield {**{IN[i]: x[:, i] for i in range(L)}, **{OUT[i]: y[:, i] for i in range(L)}}

    final = t.fit(batches())
    assert t.state.tokens == 32 * 40
    assert {"layer0_explained_variance", "layer2_mse", "layer1_l0"} <= set(final)
    first, last = t.state.history[0], t.state.history[-1]
    assert last["explained_variance"] > first["explained_variance"]
