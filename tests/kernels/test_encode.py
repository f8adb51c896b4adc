"""topk_encode / batchtopk_encode: selection, values and sparse gradients of each backend.

The gradients are checked against a dense fp32 computation given the *same* selection
(`_dense_given`), so half-precision rounding that reorders near-ties cannot make the test
flaky; the selection itself is checked against the reference in fp32.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import saeops.kernels as K
from saeops.kernels import select
from tests.kernels.conftest import FAST_BACKENDS, kernels_for, tolerances

SHAPES = [(3, 1, 37, 53), (3, 5, 37, 53), (8, 4, 64, 32), (2, 9, 130, 17)]  # (B, k, d_in, d_sae)


def _problem(B: int, k: int, d: int, n: int, dtype: torch.dtype) -> dict[str, Tensor]:
    return {
        "x": torch.randn(B, d).to(dtype),
        "W_enc": (torch.randn(d, n) / d**0.5).to(dtype),
        "b_enc": (0.1 * torch.randn(n)).to(dtype),
        "scale": (0.5 + torch.rand(n)).to(dtype),
        "bias": (0.1 * torch.randn(d)).to(dtype),
    }


def _run(p: dict[str, Tensor], k: int, backend: str, batch: bool, scale: bool, bias: bool, x_grad: bool):
    leaves = {name: t.detach().clone().requires_grad_(name != "scale") for name, t in p.items()}
    leaves["x"].requires_grad_(x_grad)
    kernels = kernels_for(backend)
    fn = kernels.batchtopk_encode if batch else kernels.topk_encode
    values, indices = fn(
        leaves["x"], leaves["W_enc"], leaves["b_enc"], k,
        leaves["scale"] if scale else None, input_bias=leaves["bias"] if bias else None,
    )  # fmt: skip
    return values, indices, leaves


def _dense_given(p: dict[str, Tensor], indices: Tensor, values: Tensor, bias: bool):
    """fp32 dense autograd of relu(pre) gathered at the given selection (padding: value 0)."""
    leaves = {name: t.detach().float().requires_grad_(True) for name, t in p.items()}
    x_c = leaves["x"] - leaves["bias"] if bias else leaves["x"]
    pre = x_c @ leaves["W_enc"] + leaves["b_enc"]
    keep = values.detach() != 0
    out = pre.relu().gather(1, indices) * keep
    return out, leaves


def _check(
    backend: str, p: dict[str, Tensor], k: int, batch: bool, scale: bool, bias: bool, x_grad: bool
) -> None:
    dtype = p["x"].dtype
    values, indices, leaves = _run(p, k, backend, batch, scale, bias, x_grad)
    assert indices.dtype == torch.int64 and values.dtype == dtype and values.shape == indices.shape
    ref_vals, ref_leaves = _dense_given(p, indices, values, bias)
    tol = tolerances(dtype)
    torch.testing.assert_close(values.float(), ref_vals.detach(), rtol=tol["rtol"], atol=tol["atol"])
    # Entries dropped as inactive really are non-positive (or padding).
    g = torch.linspace(-1, 2, values.numel()).view_as(values)
    values.backward(g.to(dtype))
    ref_vals.backward(g)
    names = ["W_enc", "b_enc", *(["x"] if x_grad else []), *(["bias"] if bias else [])]
    for name in names:
        got, want = leaves[name].grad, ref_leaves[name].grad
        assert got is not None and want is not None, name
        scale_ = max(1.0, float(want.abs().max()))
        torch.testing.assert_close(got.float(), want, rtol=tol["rtol"], atol=tol["atol"] * scale_, msg=name)
    if not x_grad:
        assert leaves["x"].grad is None
    assert leaves["scale"].grad is None


@pytest.mark.parametrize("backend", FAST_BACKENDS, indirect=True)
@pytest.mark.parametrize("batch", [False, True], ids=["topk", "batchtopk"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_encode_fp32(backend: str, batch: bool, shape: tuple[int, int, int, int]) -> None:
    B, k, d, n = shape
    _check(backend, _problem(B, k, d, n, torch.float32), k, batch, scale=True, bias=True, x_grad=True)


@pytest.mark.parametrize("backend", FAST_BACKENDS, indirect=True)
@pytest.mark.parametrize(
    "options", [(False, False, False), (True, False, False), (False, True, True)], ids=str
)
def test_encode_options(backend: str, options: tuple[bool, bool, bool]) -> None:
    scale, bias, x_grad = options
    for batch in (False, True):
        _check(backend, _problem(3, 5, 37, 53, torch.float32), 5, batch, scale, bias, x_grad)


@pytest.mark.parametrize("backend", FAST_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_encode_half(backend: str, dtype: torch.dtype) -> None:
    for batch in (False, True):
        _check(backend, _problem(3, 5, 37, 53, dtype), 5, batch, scale=True, bias=True, x_grad=True)


@pytest.mark.parametrize("backend", FAST_BACKENDS, indirect=True)
@pytest.mark.parametrize("batch", [False, True], ids=["topk", "batchtopk"])
def test_selection_matches_reference(backend: str, batch: bool) -> None:
    p = _problem(6, 5, 37, 53, torch.float32)
    fast, ref = kernels_for(backend), kernels_for("reference")
    for scale in (p["scale"], None):
        v, i = (fast.batchtopk_encode if batch else fast.topk_encode)(p["x"], p["W_enc"], p["b_enc"], 5, scale)
        rv, ri = (ref.batchtopk_encode if batch else ref.topk_encode)(p["x"], p["W_enc"], p["b_enc"], 5, scale)
        # Same (index, value) pairs per row, whatever the order inside the row.
        for row in range(6):
            got = {int(a): float(b) for a, b in zip(i[row], v[row], strict=True) if b != 0}
            want = {int(a): float(b) for a, b in zip(ri[row], rv[row], strict=True) if b != 0}
            assert got.keys() == want.keys()
            torch.testing.assert_close(torch.tensor(list(got.values())), torch.tensor([want[a] for a in got]))


@pytest.mark.parametrize("backend", FAST_BACKENDS, indirect=True)
def test_batchtopk_padding_and_counts(backend: str) -> None:
    p = _problem(4, 3, 37, 53, torch.float32)
    p["x"][0] *= 10.0  # row 0 wins most of the batch budget: rows get unequal counts
    values, indices, leaves = _run(p, 3, backend, batch=True, scale=False, bias=False, x_grad=False)
    active = values != 0
    assert int(active.sum()) <= 3 * 4
    assert values.shape[1] == int(active.sum(1).max())
    assert bool((indices[~active] == 0).all())
    # Padding gets no gradient: an upstream gradient on padded slots changes nothing.
    g = torch.ones_like(values) * active + 100.0 * (~active)
    values.backward(g)
    w_grad = leaves["W_enc"].grad.clone()  # type: ignore[union-attr]
    values2, _, leaves2 = _run(p, 3, backend, batch=True, scale=False, bias=False, x_grad=False)
    values2.backward(torch.ones_like(values2) * active)
    torch.testing.assert_close(w_grad, leaves2["W_enc"].grad)


@pytest.mark.parametrize("backend", FAST_BACKENDS, indirect=True)
def test_nonpositive_preactivations_give_zero_values(backend: str) -> None:
    p = _problem(3, 5, 37, 53, torch.float32)
    p["b_enc"] = torch.full((53,), -100.0)  # every pre-activation negative
    values, _, leaves = _run(p, 5, backend, batch=False, scale=True, bias=False, x_grad=True)
    assert bool((values == 0).all())
    values.sum().backward()
    assert bool((leaves["W_enc"].grad == 0).all()) and bool((leaves["x"].grad == 0).all())  # type: ignore[union-attr]


def test_nonpositive_scale_takes_unfused_path() -> None:
    # A zero decoder norm cannot be folded into W_enc (values = scores / scale); the unfused
    # path must still select on pre * scale and return exact values.
    p = _problem(3, 5, 37, 53, torch.float32)
    p["scale"][::2] = 0.0
    _check("torch", p, 5, False, scale=True, bias=False, x_grad=True)


@pytest.mark.parametrize("ext", [True, False], ids=["cpp", "torch"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_topk_entry_point_is_exact(ext: bool, bias: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # The one selection: the C++ kernel where it is built, else the grouped torch top-k (wide
    # rows), both against torch.topk; rows of ties may pick any of the tied entries.
    if not ext:
        monkeypatch.setenv("SAEOPS_CPU_EXT", "0")
    scores = torch.randn(5, 8192)
    scores[0, :] = 1.0  # all tied: any k of them is a valid answer
    b = torch.randn(8192) if bias else None
    full = scores if b is None else scores + b
    if b is not None:
        scores[0] = 1.0 - b  # still all tied once the bias is added
        full = scores + b
    values, got = select.topk(scores, 24, bias=b)
    want = full.topk(24, dim=-1).indices
    torch.testing.assert_close(full.gather(1, got).sort(1).values, full.gather(1, want).sort(1).values)
    torch.testing.assert_close(values, full.gather(1, got))
    assert torch.equal(got[1:].sort(1).values, want[1:].sort(1).values)


def test_k_larger_than_d_sae_and_bad_k() -> None:
    p = _problem(2, 5, 8, 6, torch.float32)
    kernels = K.Kernels()
    values, _indices = kernels.topk_encode(p["x"], p["W_enc"], p["b_enc"], 10)
    assert values.shape == (2, 6)
    with pytest.raises(ValueError):
        kernels.topk_encode(p["x"], p["W_enc"], p["b_enc"], 0)
