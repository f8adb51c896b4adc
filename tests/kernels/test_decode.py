"""sparse_decode: forward and every gradient of each fast backend against the dense reference."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from tests.kernels.conftest import FAST_BACKENDS, kernels_for, tolerances

SHAPES = [(3, 1, 37, 53), (3, 5, 37, 53), (8, 4, 64, 32), (2, 9, 130, 17)]  # (B, k, d_model, d_sae)


def _problem(B: int, k: int, d: int, n: int, dtype: torch.dtype, bias: bool = True) -> list[Tensor | None]:
    indices = torch.stack([torch.randperm(n)[:k] for _ in range(B)])  # distinct, like top-k
    values = torch.rand(B, k).to(dtype)
    W_dec = (torch.randn(n, d) / d**0.5).to(dtype)
    b_dec = torch.randn(d).to(dtype) if bias else None
    return [indices, values, W_dec, b_dec]


def _grads(backend: str, indices: Tensor, values: Tensor, W_dec: Tensor, b_dec: Tensor | None, up: bool):
    """Output and (values, W_dec, b_dec) gradients; `up` runs on fp32 copies of the inputs."""
    leaves = [t.detach().float() if up else t.detach() for t in (values, W_dec)]
    bias = None if b_dec is None else (b_dec.detach().float() if up else b_dec.detach())
    for t in [*leaves, bias]:
        if t is not None:
            t.requires_grad_(True)
    out = kernels_for(backend).sparse_decode(indices, leaves[0], leaves[1], bias)  # type: ignore[arg-type]
    grad_out = torch.linspace(-1, 1, out.numel()).view_as(out).to(out.dtype)
    out.backward(grad_out)
    return [out, leaves[0].grad, leaves[1].grad, None if bias is None else bias.grad]


def _assert_matches(backend: str, problem: list[Tensor | None], dtype: torch.dtype) -> None:
    indices, values, W_dec, b_dec = problem
    fast = _grads(backend, indices, values, W_dec, b_dec, up=False)  # type: ignore[arg-type]
    ref = _grads("reference", indices, values, W_dec, b_dec, up=True)  # type: ignore[arg-type]
    tol = tolerances(dtype)
    for name, a, b in zip(("out", "values", "W_dec", "b_dec"), fast, ref, strict=True):
        if b is None:
            assert a is None
            continue
        assert a is not None and a.dtype == dtype, name
        scale = max(1.0, float(b.detach().abs().max()))
        torch.testing.assert_close(a.float(), b, rtol=tol["rtol"], atol=tol["atol"] * scale, msg=name)


@pytest.mark.parametrize("backend", FAST_BACKENDS, indirect=True)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_decode_fp32(backend: str, shape: tuple[int, int, int, int]) -> None:
    _assert_matches(backend, _problem(*shape, torch.float32), torch.float32)


@pytest.mark.parametrize("backend", FAST_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_decode_half(backend: str, dtype: torch.dtype) -> None:
    _assert_matches(backend, _problem(3, 5, 37, 53, dtype), dtype)


@pytest.mark.parametrize("backend", FAST_BACKENDS, indirect=True)
def test_decode_without_bias(backend: str) -> None:
    _assert_matches(backend, _problem(3, 5, 37, 53, torch.float32, bias=False), torch.float32)


@pytest.mark.parametrize("backend", FAST_BACKENDS, indirect=True)
def test_duplicate_indices(backend: str) -> None:
    indices, values, W_dec, b_dec = _problem(3, 5, 37, 53, torch.float32)
    indices[:, 1] = indices[:, 0]  # type: ignore[index]
    indices[2, :] = 7  # type: ignore[index]
    _assert_matches(backend, [indices, values, W_dec, b_dec], torch.float32)


@pytest.mark.parametrize("backend", FAST_BACKENDS, indirect=True)
def test_padding_is_harmless(backend: str) -> None:
    # Padding entries (index 0, value 0) add nothing to the output or to W_dec's gradient.
    indices, values, W_dec, b_dec = _problem(3, 3, 37, 53, torch.float32)
    padded_idx = torch.cat([indices, torch.zeros(3, 2, dtype=torch.int64)], 1)  # type: ignore[list-item]
    padded_val = torch.cat([values, torch.zeros(3, 2)], 1)  # type: ignore[list-item]
    plain = _grads(backend, indices, values, W_dec, b_dec, up=False)  # type: ignore[arg-type]
    padded = _grads(backend, padded_idx, padded_val, W_dec, b_dec, up=False)  # type: ignore[arg-type]
    # linspace grad_out has the same shape ([3, d]) in both runs, so outputs/grads compare 1:1.
    torch.testing.assert_close(padded[0], plain[0])
    torch.testing.assert_close(padded[2], plain[2])
    torch.testing.assert_close(padded[1][:, :3], plain[1])  # type: ignore[index]


@pytest.mark.parametrize("backend", FAST_BACKENDS, indirect=True)
def test_leading_dims_and_int32_indices(backend: str) -> None:
    indices, values, W_dec, b_dec = _problem(6, 4, 37, 53, torch.float32)
    out = kernels_for(backend).sparse_decode(  # type: ignore[arg-type]
        indices.view(2, 3, 4).to(torch.int32),  # type: ignore[union-attr]
        values.view(2, 3, 4),  # type: ignore[union-attr]
        W_dec,
        b_dec,
    )
    ref = kernels_for("reference").sparse_decode(indices, values, W_dec, b_dec)  # type: ignore[arg-type]
    torch.testing.assert_close(out, ref.view(2, 3, 37))
