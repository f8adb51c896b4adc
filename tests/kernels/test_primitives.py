"""The sparse primitives of each backend against one-line torch definitions."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from saeops.kernels.backend import Primitives
from saeops.kernels.torch_ops import TorchPrimitives
from tests.kernels.conftest import FAST_BACKENDS, kernels_for, tolerances

SHAPES = [(3, 1, 37, 53), (3, 5, 37, 53), (4, 7, 130, 20), (1, 33, 16, 64)]  # (B, k, d, n)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _naive_gather_sum(indices: Tensor, weights: Tensor, table: Tensor) -> Tensor:
    return (table.float()[indices] * weights.float()[..., None]).sum(1)


def _naive_gather_dot(indices: Tensor, rows: Tensor, table: Tensor) -> Tensor:
    return (table.float()[indices] * rows.float()[:, None, :]).sum(-1)


def _naive_scatter_sum(indices: Tensor, weights: Tensor, rows: Tensor, n: int) -> Tensor:
    out = torch.zeros(n, rows.shape[1])
    for b in range(indices.shape[0]):
        for j in range(indices.shape[1]):
            out[indices[b, j]] += weights[b, j].float() * rows[b].float()
    return out


def _inputs(B: int, k: int, d: int, n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    indices = torch.randint(0, n, (B, k))
    weights = torch.randn(B, k).to(dtype)
    table = torch.randn(n, d).to(dtype)
    rows = torch.randn(B, d).to(dtype)
    return indices, weights, table, rows


def _prims(name: str) -> Primitives:
    prims = kernels_for(name).primitives(torch.zeros(()).device)
    assert prims is not None
    return prims


def _close(actual: Tensor, expected: Tensor, dtype: torch.dtype) -> None:
    tol = tolerances(dtype)
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual.float(), expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("backend", FAST_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_primitives_match_definitions(
    backend: str, dtype: torch.dtype, shape: tuple[int, int, int, int]
) -> None:
    B, k, d, n = shape
    indices, weights, table, rows = _inputs(B, k, d, n, dtype)
    p = _prims(backend)
    out = p.gather_sum(indices, weights, table)
    assert out.dtype == dtype and out.shape == (B, d)
    _close(out, _naive_gather_sum(indices, weights, table), dtype)
    dots = p.gather_dot(indices, rows, table)
    assert dots.shape == (B, k)
    _close(dots, _naive_gather_dot(indices, rows, table), dtype)
    scat = p.scatter_sum(indices, weights, rows, n)
    assert scat.shape == (n, d)
    _close(scat, _naive_scatter_sum(indices, weights, rows, n), dtype)


@pytest.mark.parametrize("backend", FAST_BACKENDS, indirect=True)
def test_duplicate_indices_add_up(backend: str) -> None:
    # Impossible from top-k, but the scatter must still sum duplicates within a row and
    # across rows (Triton: several lanes of one atomic_add hit the same address).
    indices = torch.tensor([[2, 2, 2, 0], [2, 5, 5, 2]])
    weights = torch.tensor([[1.0, 2.0, 3.0, 0.5], [4.0, 5.0, 6.0, 7.0]])
    rows = torch.randn(2, 37)
    table = torch.randn(6, 37)
    p = _prims(backend)
    torch.testing.assert_close(
        p.scatter_sum(indices, weights, rows, 6), _naive_scatter_sum(indices, weights, rows, 6)
    )
    torch.testing.assert_close(
        p.gather_sum(indices, weights, table), _naive_gather_sum(indices, weights, table)
    )
    torch.testing.assert_close(p.gather_dot(indices, rows, table), _naive_gather_dot(indices, rows, table))


@pytest.mark.parametrize("backend", FAST_BACKENDS, indirect=True)
def test_strided_table(backend: str) -> None:
    # The encoder gathers columns of W_enc through the transposed view W_enc.T.
    W_enc = torch.randn(37, 53)
    indices = torch.randint(0, 53, (3, 5))
    weights = torch.randn(3, 5)
    p = _prims(backend)
    torch.testing.assert_close(
        p.gather_sum(indices, weights, W_enc.t()), _naive_gather_sum(indices, weights, W_enc.t().contiguous())
    )


def test_scatter_rejects_out_of_range() -> None:
    with pytest.raises(IndexError):
        _prims("torch").scatter_sum(torch.tensor([[7]]), torch.ones(1, 1), torch.ones(1, 3), 5)


def test_gather_dot_fallback_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    # The chunked bmm path (used when the fused private op is missing) gives the same dots.
    from saeops.kernels import torch_ops

    indices, _, table, rows = _inputs(9, 5, 37, 53, torch.float32)
    expected = TorchPrimitives().gather_dot(indices, rows, table)
    monkeypatch.setattr(torch_ops, "CHUNK_BYTES", 5 * 37 * 4 * 2)  # two rows per chunk
    torch.testing.assert_close(TorchPrimitives(fused_dot=False).gather_dot(indices, rows, table), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("block", [7, 64, 512], ids=lambda b: f"block{b}")
def test_transposed_scatter_matches_scatter(
    dtype: torch.dtype, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Blocks of 7 and 64 latents over n=150: ragged last blocks, latents no entry points at.
    from saeops.kernels import torch_ops

    monkeypatch.setattr(torch_ops, "SCATTER_T_BLOCK", block)
    indices, weights, _table, rows = _inputs(9, 6, 33, 150, dtype)
    indices[0, :3] = 149  # duplicates into the last latent
    out = TorchPrimitives().scatter_sum_t(indices, weights, rows, 150, dtype)
    assert out.shape == (33, 150) and out.is_contiguous() and out.dtype == dtype
    _close(out.t(), _naive_scatter_sum(indices, weights, rows, 150), dtype)
