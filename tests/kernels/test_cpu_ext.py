"""The C++ CPU kernels (`saeops.kernels.cpu_ext`) against torch definitions.

They are built on first use; where no compiler is available the tests skip, unless
SAEOPS_REQUIRE_CPU_EXT=1 (CI sets it) makes a missing build a failure.
"""

from __future__ import annotations

import os
from types import ModuleType

import pytest
import torch
from torch import Tensor

from saeops.kernels import cpu_ext
from saeops.kernels.buffers import SortCache
from saeops.kernels.torch_ops import TorchPrimitives


@pytest.fixture(scope="module")
def ext() -> ModuleType:
    mod = cpu_ext.module() if cpu_ext.enabled() else None
    if mod is None:
        if os.environ.get("SAEOPS_REQUIRE_CPU_EXT") == "1":
            pytest.fail("the C++ CPU kernels did not build (SAEOPS_REQUIRE_CPU_EXT=1)")
        pytest.skip("the C++ CPU kernels are not available here (no compiler, or SAEOPS_CPU_EXT=0)")
    return mod


def _same_topk(values: Tensor, indices: Tensor, full: Tensor, k: int) -> None:
    """`(values, indices)` is a valid top-k of each row of `full` (ties may pick any index)."""
    ref = full.topk(k, dim=-1).values
    torch.testing.assert_close(values.sort(-1, descending=True).values, ref, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(full.gather(1, indices), values, equal_nan=True, rtol=0, atol=0)
    assert all(len(set(r.tolist())) == k for r in indices), "an index was selected twice"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    ("rows", "n", "k", "members"),
    [(37, 12288, 32, 32), (5, 6144, 32, 16), (9, 1000, 7, 32), (4, 64, 64, 1), (6, 300, 1, 4), (3, 130, 5, 16)],
    ids=str,
)
def test_topk_bias_matches_torch(ext: ModuleType, dtype: torch.dtype, rows: int, n: int, k: int, members: int) -> None:
    # Covers the grouped path, rows too narrow for it (exact path), k = n, k = 1, ragged widths.
    g = torch.Generator().manual_seed(n + k)
    scores = torch.randn(rows, n, generator=g, dtype=dtype)
    bias = torch.randn(n, generator=g, dtype=dtype)
    values, indices = ext.topk_bias(scores, bias, k, members)
    assert values.dtype == dtype and indices.dtype == torch.int64 and values.shape == (rows, k)
    _same_topk(values, indices, scores + bias, k)
    values, indices = ext.topk_bias(scores, None, k, members)  # no bias: the scores themselves
    _same_topk(values, indices, scores, k)


def test_topk_bias_ties_and_nans(ext: ModuleType) -> None:
    n, k = 4096, 32
    scores = torch.zeros(4, n)
    scores[1, ::97] = 1.0  # 43 tied maxima
    scores[2, 5] = float("nan")  # torch.topk ranks NaN first
    scores[3] = float("nan")
    values, indices = ext.topk_bias(scores, torch.zeros(n), k, 32)
    _same_topk(values, indices, scores, k)
    assert int(indices[2, values[2].isnan()].item()) == 5


def test_topk_bias_rejects_bad_arguments(ext: ModuleType) -> None:
    with pytest.raises(RuntimeError, match="k must be"):
        ext.topk_bias(torch.zeros(2, 8), torch.zeros(8), 9, 1)
    with pytest.raises(RuntimeError, match="bias"):
        ext.topk_bias(torch.zeros(2, 8), torch.zeros(7), 2, 1)


def _sorted(indices: Tensor, n: int) -> tuple[Tensor, Tensor]:
    return SortCache().get(indices, n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_scatter_t_and_decode_backward_match_definitions(ext: ModuleType, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    B, k, d, n = 23, 6, 45, 70  # n not a multiple of the 16-latent tile; some latents unused
    indices = torch.randint(0, n, (B, k), generator=g)
    indices[0, :3] = 69  # duplicates, in the last tile
    values = torch.randn(B, k, generator=g, dtype=dtype)
    rows = torch.randn(B, d, generator=g, dtype=dtype)
    W_dec = torch.randn(n, d, generator=g, dtype=dtype)
    dense = torch.zeros(B, n, dtype=dtype).scatter_add_(1, indices, values)  # [B, n] weights
    order, bounds = _sorted(indices, n)

    out = ext.scatter_t(order, bounds, values.reshape(-1), rows, k, n)
    assert out.shape == (d, n) and out.is_contiguous()
    torch.testing.assert_close(out, rows.t() @ dense)

    g_values, g_W = ext.decode_backward(order, bounds, values.reshape(-1), rows, W_dec, k, True, True)
    torch.testing.assert_close(g_values.view(B, k), (rows[:, None, :] * W_dec[indices]).sum(-1))
    torch.testing.assert_close(g_W, dense.t() @ rows)
    only_w = ext.decode_backward(order, bounds, values.reshape(-1), rows, W_dec, k, False, True)[1]
    torch.testing.assert_close(only_w, g_W)


def test_disabled_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAEOPS_CPU_EXT", "0")
    assert cpu_ext.module() is None
    assert TorchPrimitives().decode_backward(
        torch.zeros(2, 1, dtype=torch.int64), torch.ones(2, 1), torch.ones(2, 3), torch.ones(4, 3), True, True
    ) is None
