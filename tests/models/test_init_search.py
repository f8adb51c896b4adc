"""The decoder-norm search (closed form, bracketing fallback) and the initializer's defaults."""

from __future__ import annotations

import math

import pytest
import torch

from saeops.api.training import DictionarySpec, InitializerSpec
from saeops.runtime.models import Initializer, LossContext, build_dictionary, geometric_median
from saeops.runtime.models import init as init_module
from saeops.runtime.models.init_search import golden_section, line_fit, search_decoder_norm

from .conftest import make_spec


def _data(n: int = 512, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g)) + 3.0 * torch.randn(d, generator=g)


def _mlp_out(x: torch.Tensor, d_out: int = 12, seed: int = 2) -> torch.Tensor:
    """A transcoder's target: a fixed non-linear function of its input."""
    g = torch.Generator().manual_seed(seed)
    return torch.relu(x @ torch.randn(x.shape[-1], 32, generator=g)) @ torch.randn(32, d_out, generator=g) + 1.0


@torch.no_grad()
def _mse_at_scale(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, r: float, k: int | None) -> float:
    """Sample MSE with the decoder and the encoder scaled by `r` (all rows share one norm, so
    this walks the same one-parameter family the search does); the model is restored."""
    scaled = [p for p in (m.W_dec, m.W_enc) if p is not None]
    for p in scaled:
        p.mul_(r)
    mse = float(m.compute_loss(x, y, LossContext(k=k)).terms["mse"])
    for p in scaled:
        p.div_(r)
    return mse


@pytest.mark.parametrize(("kind", "act_fn"), [("sae", "topk"), ("sae", "batchtopk"), ("sae", "relu"),
                                              ("transcoder", "topk"), ("transcoder", "relu")])
def test_closed_form_norm_is_the_grid_minimum(kind: str, act_fn: str) -> None:
    x = _data(512, 16, 1)
    y = _mlp_out(x)
    extra = {"type": "transcoder", "hook_point_out": "blocks.0.hook_mlp_out"} if kind == "transcoder" else {}
    m = build_dictionary(make_spec(act_fn=act_fn, expansion_factor=8, **extra), 16, 12 if extra else 16)
    y = y if extra else x
    init = Initializer(InitializerSpec(), seed=0)
    init.initialize(m, x, y, k=4)
    assert init.last_search is not None and init.last_search.method == "closed-form"
    assert init.last_search.evaluations <= 1.5  # one pass over the sample and probes on an eighth
    best = _mse_at_scale(m, x, y, 1.0, 4)
    grid = [_mse_at_scale(m, x, y, r, 4) for r in torch.logspace(-1, 1, 201).tolist()]
    assert best <= min(grid) * (1 + 1e-5), (best, min(grid))
    norm = init.last_search.norm
    if act_fn == "relu":  # tied (or equal) norms, as searched
        assert torch.allclose(m.decoder_norms(), torch.full((m.d_sae,), norm), rtol=1e-5)
    else:  # the same dictionary with the scale in the decoder (move_scale_to_decoder)
        enc = init_module.ENCODER_NORM
        assert torch.allclose(m.W_enc.norm(dim=0), torch.full((m.d_sae,), enc), rtol=1e-5)
        assert torch.allclose(m.decoder_norms(), torch.full((m.d_sae,), norm**2 / enc), rtol=1e-5)


def test_moving_the_scale_to_the_decoder_keeps_the_dictionary() -> None:
    x = _data()
    m = build_dictionary(make_spec(act_fn="topk", expansion_factor=8), 16)
    init = Initializer(InitializerSpec(), seed=0)
    init.initialize(m, x, k=4)
    assert init.last_search is not None
    ctx = LossContext(k=4)
    split = m.compute_loss(x, None, ctx)
    with torch.no_grad():  # back to encoder = decoder transpose at the searched norm
        m.W_dec.mul_(init_module.ENCODER_NORM / init.last_search.norm)
        m.W_enc.copy_(m.W_dec.T)
    tied = m.compute_loss(x, None, ctx)
    assert torch.equal(split.acts.indices, tied.acts.indices)
    assert torch.allclose(split.x_hat, tied.x_hat, atol=1e-5)


def test_jumprelu_falls_back_to_the_bracketing_search() -> None:
    x = _data()
    m = build_dictionary(make_spec(act_fn="jumprelu", expansion_factor=8), 16)
    init = Initializer(InitializerSpec(), seed=0)
    init.initialize(m, x)
    search = init.last_search
    assert search is not None and search.method == "bracket" and search.evaluations < 30
    best = _mse_at_scale(m, x, x, 1.0, None)
    grid = [_mse_at_scale(m, x, x, r, None) for r in torch.logspace(-1, 1, 201).tolist()]
    assert best <= min(grid) * 1.01


def test_a_skip_path_makes_the_probes_cover_the_whole_sample() -> None:
    x = _data(512, 16, 1)
    y = x + 0.1 * _data(512, 16, 3)
    m = build_dictionary(make_spec(type="transcoder", hook_point_out="blocks.0.hook_mlp_out", skip_connection=True,
                                   expansion_factor=8), 16, 16)
    with torch.no_grad():
        m.W_skip.copy_(0.3 * torch.eye(16))  # a trained skip path: the offset differs per token
    init = Initializer(InitializerSpec(), seed=0)
    init.initialize(m, x, y, k=4)
    assert init.last_search is not None and init.last_search.method == "closed-form"
    assert init.last_search.evaluations > 2
    grid = [_mse_at_scale(m, x, y, r, 4) for r in torch.logspace(-1, 1, 201).tolist()]
    assert _mse_at_scale(m, x, y, 1.0, 4) <= min(grid) * (1 + 1e-5)


def test_line_fit_accepts_a_progression_and_rejects_a_threshold() -> None:
    a, c = torch.randn(32, 5), torch.randn(32, 5)
    fit = line_fit([a + c, a + 16 * c, a + 256 * c])  # degree 2 at ratio 4
    assert fit is not None
    assert torch.allclose(fit[0], a, atol=1e-4) and fit[1] == pytest.approx(16.0)
    z = torch.randn(32, 5)
    thresholded = [torch.where(s * z > 1.0, s * z, torch.zeros_like(z)) for s in (0.5, 2.0, 8.0)]
    assert line_fit(thresholded) is None


def test_golden_section_finds_the_minimum() -> None:
    calls = []

    def f(u: float) -> float:
        calls.append(u)
        return (u - 0.3) ** 2

    u, fu, n = golden_section(f, -1.0, 2.0, 1e-4)
    assert abs(u - 0.3) < 1e-4 and fu == pytest.approx(0.0, abs=1e-8)
    assert n == len(calls) < 30


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_search_leaves_the_model_at_the_optimum_of_a_quadratic(sign: float) -> None:
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(64, 4, generator=g)
    target = 0.5 + sign * 0.7 * direction + 0.1 * torch.randn(64, 4, generator=g)
    state = {"n": 1.0}

    def set_norm(n: float) -> None:
        state["n"] = n

    def reconstruct(rows: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        return 0.5 + state["n"] ** 2 * direction[:rows], target[:rows]

    out = search_decoder_norm(set_norm, reconstruct, 0.1)
    t = float(((target - 0.5) * direction).sum() / (direction * direction).sum())
    if sign > 0:
        assert out.method == "closed-form" and out.norm == pytest.approx(math.sqrt(t), rel=1e-4)
    else:  # the latents only add error at any norm: the start norm stays
        assert t < 0 and out.method == "kept" and out.norm == 0.1
    assert state["n"] == pytest.approx(out.norm)


def test_defaults_are_geometric_median_and_searched_norm() -> None:
    """A manifest with no `initializer:` section gets the quickstart's initialisation."""
    spec = InitializerSpec()
    assert spec.bias_init_method == "geometric_median" and spec.grid_search_init_norm
    x = _data(512)
    m = build_dictionary(make_spec(), 16)
    init = Initializer(spec, seed=0)
    init.initialize(m, x)
    x_n = x * m.input_factor(x)
    assert torch.allclose(m.b_dec, geometric_median(x_n[: init_module.MEDIAN_MAX_TOKENS]), atol=1e-5)
    assert init.last_search is not None
    assert not torch.allclose(m.decoder_norms()[0], torch.tensor(0.1 * math.sqrt(16) / math.sqrt(64)))


def test_a_fixed_decoder_norm_wins_unless_the_search_is_asked_for() -> None:
    x = _data()
    fixed = Initializer(InitializerSpec(init_decoder_norm=0.25), seed=0)
    m = fixed.initialize(build_dictionary(make_spec(), 16), x)
    assert fixed.last_search is None
    assert torch.allclose(m.decoder_norms(), torch.full((64,), 0.25))
    both = Initializer(InitializerSpec(init_decoder_norm=0.25, grid_search_init_norm=True), seed=0)
    m = both.initialize(build_dictionary(make_spec(), 16), x)
    assert both.last_search is not None
    norms = m.decoder_norms()
    assert torch.allclose(norms, norms[0].expand_as(norms)) and not torch.allclose(norms[0], torch.tensor(0.25))


def _clt_spec(act_fn: str) -> DictionarySpec:
    return DictionarySpec(type="clt", hook_points_in=[f"blocks.{i}.ln2.hook_out" for i in range(3)],
                          hook_points_out=[f"blocks.{i}.hook_mlp_out" for i in range(3)], d_sae=8,
                          act_fn=act_fn, top_k=3, norm_activation="dataset-wise")


@pytest.mark.parametrize("act_fn", ["topk", "relu"])
def test_clt_norm_search_is_near_optimal(act_fn: str) -> None:
    """A CLT owns its init and searches through `grid_search_norm` (the bracketing search)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, 6, generator=g) * 3 + 1
    y = torch.relu(x @ torch.randn(6, 5, generator=g)) + 2
    m = build_dictionary(_clt_spec(act_fn), 6, 5)
    Initializer(InitializerSpec(), seed=0).initialize(m, x, y, k=3)
    ctx = LossContext(k=3)
    best = float(m.decoder_norms().detach().mean())

    def mse_at(n: float) -> float:
        m.set_decoder_norm(n)  # a CLT's search moves the decoder alone
        return float(m.compute_loss(x, y, ctx).terms["mse"])

    found = mse_at(best)
    grid = [mse_at(best * r) for r in torch.logspace(-1, 1, 101).tolist()]
    assert found <= min(grid) * (1 + 1e-3)


def test_lorsa_norm_search_lowers_the_mse() -> None:
    spec = DictionarySpec(type="lorsa", hook_point_in="blocks.0.ln1.hook_out", hook_point_out="blocks.0.hook_attn_out",
                          d_sae=12, act_fn="topk", top_k=3, norm_activation="dataset-wise",
                          lorsa={"n_qk_heads": 2, "d_qk_head": 4})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 10, 8, generator=g)
    y = x.cumsum(1) / 3 + 1  # depends on earlier positions, as attention outputs do
    ctx = LossContext(k=3)
    mses = []
    for init in (InitializerSpec(grid_search_init_norm=False), InitializerSpec()):
        m = build_dictionary(spec, 8)
        Initializer(init, seed=0).initialize(m, x, y, k=3)
        mses.append(float(m.compute_loss(x, y, ctx).terms["mse"]))
        norms = m.decoder_norms()
        assert torch.allclose(norms, norms[0].expand_as(norms), rtol=1e-4)
    assert mses[1] < mses[0]
