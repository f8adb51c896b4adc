"""Backend resolution, the Kernels object's caches, dense <-> sparse conversion and the
sparse-path switch."""

from __future__ import annotations

import copy

import pytest
import torch

import saeops.kernels as K
from saeops.kernels import backend


def test_auto_is_torch_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert backend.resolve(cpu, "auto", False) == "torch"
    assert backend.resolve(cpu, "auto", True) == "torch"  # Triton only for CUDA tensors
    assert backend.resolve(cpu, "reference", False) == "reference"
    assert K.Kernels("reference").primitives(cpu) is None
    with pytest.raises(ValueError):
        K.Kernels("cuda")  # type: ignore[arg-type]


def test_auto_picks_triton_on_cuda_when_wanted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "triton_available", lambda: True)
    cuda = torch.device("cuda")
    assert backend.resolve(cuda, "auto", False) == "torch"  # the spec's useTritonKernel defaults to False
    assert backend.resolve(cuda, "auto", True) == "triton"
    assert backend.resolve(cuda, "torch", True) == "torch"


def test_one_sort_per_step_shared_by_both_backwards(monkeypatch: pytest.MonkeyPatch) -> None:
    # The decoder and encoder backward of a step read the sort of the same indices tensor:
    # the kernels object sorts once per step, and a new step's indices are sorted anew.
    kernels = K.Kernels()
    sorts = kernels.primitives(torch.device("cpu")).sorts  # type: ignore[union-attr]
    calls = []
    real = torch.argsort
    monkeypatch.setattr(torch, "argsort", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    W_enc = torch.randn(16, 64, requires_grad=True)
    W_dec = torch.randn(64, 16, requires_grad=True)
    for step in range(2):
        values, indices = kernels.topk_encode(torch.randn(8, 16), W_enc, torch.zeros(64), 4)
        kernels.sparse_decode(indices, values, W_dec).sum().backward()
        assert sorts.tensor is indices
        assert len(calls) == step + 1


def test_copies_do_not_share_caches() -> None:
    kernels = K.Kernels("torch", use_triton=True)
    kernels.workspace.get("scores", (2, 3), torch.float32, torch.device("cpu"))
    twin = copy.deepcopy(kernels)
    assert (twin.backend, twin.use_triton) == ("torch", True)
    assert twin.workspace is not kernels.workspace and not twin.workspace.buffers


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


def test_sparse_decode_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        K.Kernels().sparse_decode(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 4), torch.zeros(5, 4))
