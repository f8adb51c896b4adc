"""Backends: the declared interface of the sparse primitives, and which backend a call uses."""

from __future__ import annotations

from functools import cache
from typing import Literal, Protocol, get_args

import torch
from torch import Tensor

Backend = Literal["auto", "triton", "torch", "reference"]
BACKENDS: tuple[str, ...] = get_args(Backend)


class Primitives(Protocol):
    """What a backend implements, on the padded sparse format `indices[B, k]` (int64),
    `weights[B, k]`:

    - `gather_sum(indices, weights, table)[b] = sum_j weights[b, j] * table[indices[b, j]]`
    - `gather_dot(indices, rows, table)[b, j] = <rows[b], table[indices[b, j]]>`
    - `scatter_sum(indices, weights, rows, n)[i] = sum_{(b, j): indices[b, j] = i} weights[b, j] * rows[b]`
    - `scatter_sum_t(...)`: the same as `[d, n]` in `dtype` (a row-major W_enc's gradient)
    - `decode_backward(...)`: `gather_dot` and `scatter_sum` of the decoder in one pass, or
      None where the backend has no fused form for these tensors (callers then use the two).
    """

    def gather_sum(self, indices: Tensor, weights: Tensor, table: Tensor) -> Tensor: ...

    def gather_dot(self, indices: Tensor, rows: Tensor, table: Tensor) -> Tensor: ...

    def scatter_sum(self, indices: Tensor, weights: Tensor, rows: Tensor, n: int) -> Tensor: ...

    def scatter_sum_t(self, indices: Tensor, weights: Tensor, rows: Tensor, n: int, dtype: torch.dtype) -> Tensor: ...

    def decode_backward(
        self, indices: Tensor, values: Tensor, grad_out: Tensor, W_dec: Tensor, need_values: bool, need_weight: bool
    ) -> tuple[Tensor | None, Tensor | None] | None: ...


@cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(device: torch.device, backend: Backend, use_triton: bool) -> str:
    """Turn `auto` into a concrete backend: Triton only on CUDA, when importable and wanted."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if use_triton and device.type == "cuda" and triton_available():
        return "triton"
    return "torch"


__all__ = ["BACKENDS", "Backend", "Primitives", "resolve", "triton_available"]
