"""`Kernels`: the sparse ops of one dictionary, with the backend and caches it owns; and the
stateless conversions between the dense and the padded sparse format."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saeops.kernels import reference, select
from saeops.kernels.autograd import SparseDecode, SparseEncode
from saeops.kernels.backend import Backend, Primitives, resolve
from saeops.kernels.buffers import Workspace
from saeops.kernels.torch_ops import TorchPrimitives


def _flat(t: Tensor) -> Tensor:
    # A 2-D tensor passes through as the same object: the sort cache recognises a step's
    # indices by identity.
    return t if t.dim() == 2 else t.reshape(-1, t.shape[-1])


def _unflat(t: Tensor, lead: tuple[int, ...]) -> Tensor:
    return t if len(lead) == 1 else t.reshape(*lead, -1)


class Kernels:
    """Sparse decode and TopK/BatchTopK encode (autograd-aware; leading batch dimensions are
    flattened and restored).

    `backend`: `"auto"` is `"triton"` for CUDA tensors when `use_triton` (the spec's
    `useTritonKernel`) and Triton imports, else `"torch"` (embedding bags, sorted scatters and
    the C++ CPU kernels); `"reference"` is dense torch with autograd (the tests' definition).
    The object owns the CPU workspace of the encoder and the torch backend's sort cache: the
    holder (a dictionary) keeps them across steps, and nothing is shared between holders.
    """

    def __init__(self, backend: Backend = "auto", *, use_triton: bool = False) -> None:
        resolve(torch.device("cpu"), backend, use_triton)  # validates the name
        self.backend: Backend = backend
        self.use_triton = use_triton
        self.workspace = Workspace()
        self._torch = TorchPrimitives()
        self._triton: Primitives | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> Kernels:
        # Settings, not caches: a copied dictionary starts with empty buffers of its own.
        return Kernels(self.backend, use_triton=self.use_triton)

    def _primitives(self, name: str) -> Primitives:
        if name != "triton":
            return self._torch
        if self._triton is None:
            # Imported on first use: `@triton.jit` reads TRITON_INTERPRET when it runs, so tests
            # can switch the interpreter on before the first Triton call.
            from saeops.kernels.triton_ops import TritonPrimitives

            self._triton = TritonPrimitives()
        return self._triton

    def primitives(self, device: torch.device) -> Primitives | None:
        """The primitives calls on `device` use (None for the reference backend)."""
        name = resolve(device, self.backend, self.use_triton)
        return None if name == "reference" else self._primitives(name)

    def sparse_decode(self, indices: Tensor, values: Tensor, W_dec: Tensor, b_dec: Tensor | None = None) -> Tensor:
        """`sum_j values[..., j] * W_dec[indices[..., j]] (+ b_dec)` -> `[..., d_model]`."""
        if indices.shape != values.shape:
            raise ValueError(f"indices {tuple(indices.shape)} and values {tuple(values.shape)} differ")
        lead = tuple(indices.shape[:-1])
        idx, val = _flat(indices).to(torch.int64), _flat(values)
        prims = self.primitives(W_dec.device)
        if prims is None:
            out = reference.sparse_decode(idx, val, W_dec, b_dec)
        else:
            out = SparseDecode.apply(idx, val, W_dec, b_dec, prims)
        return _unflat(out, lead)

    def topk_encode(
        self, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, score_scale: Tensor | None = None, *,
        input_bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-row TopK of `pre = (x - input_bias) @ W_enc + b_enc`, selected on `pre * score_scale`
        (decoder norms: they steer the selection and get no gradient); returns
        `(relu(pre) at the selection, indices)`, both `[..., k]`. Passing the centring bias here
        rather than centring x first gives its gradient as one mat-vec instead of a per-row pass."""
        return self._encode(x, W_enc, b_enc, k, score_scale, input_bias, False)

    def batchtopk_encode(
        self, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, score_scale: Tensor | None = None, *,
        input_bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """BatchTopK: the top `k * B` scores of the whole batch (positive `pre` only); rows hold
        variable counts, padded to the widest row with value 0 / index 0."""
        return self._encode(x, W_enc, b_enc, k, score_scale, input_bias, True)

    def _encode(
        self, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, score_scale: Tensor | None,
        input_bias: Tensor | None, batch_topk: bool,
    ) -> tuple[Tensor, Tensor]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        lead = tuple(x.shape[:-1])
        xf = _flat(x)
        prims = self.primitives(W_enc.device)
        if prims is None:
            values, indices = reference.encode(xf, W_enc, b_enc, k, score_scale, input_bias, batch_topk)
        else:
            values, indices = SparseEncode.apply(
                xf, W_enc, b_enc, score_scale, input_bias, k, batch_topk, prims, self.workspace
            )
        return _unflat(values, lead), _unflat(indices, lead)


DEFAULT_SPARSITY_THRESHOLD = 0.996


def dense_to_sparse(acts: Tensor) -> tuple[Tensor, Tensor]:
    """Dense `[..., d_sae]` activations -> padded `(values, indices)` of their nonzeros
    (differentiable w.r.t. the nonzero entries)."""
    lead = tuple(acts.shape[:-1])
    values, indices = reference.dense_to_sparse(_flat(acts))
    return _unflat(values, lead), _unflat(indices, lead)


def sparse_to_dense(indices: Tensor, values: Tensor, d_sae: int) -> Tensor:
    """Padded `(values, indices)` -> dense `[..., d_sae]` (duplicates add up)."""
    lead = tuple(indices.shape[:-1])
    return _unflat(reference.sparse_to_dense(_flat(indices), _flat(values), d_sae), lead)


def should_use_sparse(acts: Tensor, threshold: float = DEFAULT_SPARSITY_THRESHOLD) -> bool:
    """Whether dense (ReLU/JumpReLU) activations are sparse enough to decode through the sparse
    path: their fraction of exact zeros is >= `threshold` (the spec's
    `sparsityThresholdForTritonSpmmKernel`, 0.996 by default)."""
    return select.zero_fraction(acts.detach()) >= threshold


__all__ = ["DEFAULT_SPARSITY_THRESHOLD", "Kernels", "dense_to_sparse", "should_use_sparse", "sparse_to_dense"]
