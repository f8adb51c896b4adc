"""Backend resolution, dense <-> sparse conversion and the sparse-path switch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import saeops.kernels as K
from saeops.kernels import _backend


@pytest.fixture
def restore_config() -> Iterator[None]:
    saved = (K.CONFIG.backend, K.CONFIG.use_triton_kernel)
    yield
    K.configure(*saved)


def test_auto_is_torch_on_cpu(restore_config: None) -> None:
    cpu = torch.device("cpu")
    assert _backend.resolve(cpu, None, None) == "torch"
    assert _backend.resolve(cpu, "auto", True) == "torch"  # Triton only for CUDA tensors
    assert _backend.resolve(cpu, "reference", None) == "reference"
    K.configure(backend="reference")
    assert _backend.resolve(cpu, None, None) == "reference"
    with pytest.raises(ValueError):
        K.configure(backend="cuda")  # type: ignore[arg-type]


def test_auto_picks_triton_on_cuda_when_wanted(restore_config: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_backend, "triton_available", lambda: True)
    cuda = torch.device("cuda")
    assert _backend.resolve(cuda, None, None) == "torch"  # default mirrors use_triton_kernel=False
    assert _backend.resolve(cuda, None, True) == "triton"
    K.configure(use_triton_kernel=True)
    assert _backend.resolve(cuda, None, None) == "triton"
    assert _backend.resolve(cuda, None, False) == "torch"


def test_dense_to_sparse_roundtrip() -> None:
    acts = torch.relu(torch.randn(5, 53) - 1.5)
    acts[3] = 0.0  # an empty row still gets one padding slot
    acts.requires_grad_(True)
    values, indices = K.dense_to_sparse(acts)
    counts = (acts != 0).sum(1)
    assert values.shape[1] == int(counts.max())
    torch.testing.assert_close(K.sparse_to_dense(indices, values, 53), acts)
    assert bool((values[3] == 0).all())
    values.sum().backward()
    torch.testing.assert_close(acts.grad, (acts != 0).float())  # padding adds no gradient


def test_dense_to_sparse_all_zero() -> None:
    values, indices = K.dense_to_sparse(torch.zeros(2, 7))
    assert values.shape == indices.shape == (2, 1)
    assert bool((values == 0).all())


def test_should_use_sparse() -> None:
    acts = torch.zeros(10, 1000)
    acts[0, :3] = 1.0  # 3 nonzeros of 10000: zero fraction 0.9997
    assert K.should_use_sparse(acts)
    assert not K.should_use_sparse(acts, threshold=0.99999)
    acts[1, :100] = 1.0
    assert not K.should_use_sparse(acts)
    assert K.should_use_sparse(0.001)  # a density (fraction of nonzeros)
    assert not K.should_use_sparse(0.01)
    with pytest.raises(ValueError):
        K.should_use_sparse(1.5)


def test_sparse_decode_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        K.sparse_decode(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 4), torch.zeros(5, 4))
