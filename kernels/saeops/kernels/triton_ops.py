"""Triton kernels for the sparse primitives (the contracts of `backend.Primitives`).

- `gather_sum`: the decoder forward (and the encoder's input gradient): one program per
  (row, block of d) accumulates `BLOCK_K` gathered table rows at a time in fp32.
- `gather_dot`: the decoder's gradient w.r.t. the values: one program per (row, block of k)
  walks d in `BLOCK_D` steps, so no [B, k, d] tensor exists.
- `scatter_sum`: the gradients w.r.t. W_dec and W_enc: one program per (row, block of d)
  `tl.atomic_add`s `weights[b, j] * rows[b]` into an fp32 buffer (duplicate indices, in one
  block or across programs, are summed correctly by the atomics).

Table access goes through explicit strides so `W_enc.T` (a strided view) needs no copy.
All loads are masked, so no shape has to be a multiple of a block size; all accumulation
is fp32 whatever the input dtype (fp32, fp16, bf16). Under `TRITON_INTERPRET=1` the kernels
run on CPU tensors (the tests do this); each program instance then costs about a millisecond.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _gather_sum_kernel(
    idx_ptr, w_ptr, table_ptr, out_ptr,
    K, D,
    stride_tn, stride_td,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        idx = tl.load(idx_ptr + b * K + offs_k, mask=mask_k, other=0)
        w = tl.load(w_ptr + b * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        ptrs = table_ptr + idx[:, None] * stride_tn + offs_d[None, :] * stride_td
        tile = tl.load(ptrs, mask=mask_k[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(tile * w[:, None], axis=0)
    tl.store(out_ptr + b * D + offs_d, acc.to(out_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _gather_dot_kernel(
    idx_ptr, rows_ptr, table_ptr, out_ptr,
    K, D,
    stride_tn, stride_td,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    idx = tl.load(idx_ptr + b * K + offs_k, mask=mask_k, other=0)
    acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        row = tl.load(rows_ptr + b * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        ptrs = table_ptr + idx[:, None] * stride_tn + offs_d[None, :] * stride_td
        tile = tl.load(ptrs, mask=mask_k[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(tile * row[None, :], axis=1)
    tl.store(out_ptr + b * K + offs_k, acc.to(out_ptr.dtype.element_ty), mask=mask_k)


@triton.jit
def _scatter_sum_kernel(
    idx_ptr, w_ptr, rows_ptr, out_ptr,
    K, D,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    row = tl.load(rows_ptr + b * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        idx = tl.load(idx_ptr + b * K + offs_k, mask=mask_k, other=0)
        w = tl.load(w_ptr + b * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        ptrs = out_ptr + idx[:, None] * D + offs_d[None, :]
        tl.atomic_add(ptrs, w[:, None] * row[None, :], mask=mask_k[:, None] & mask_d[None, :])


def _blocks(k: int, d: int) -> tuple[int, int]:
    # Power-of-two tiles of at most 32 x 128 elements: small enough for registers on a GPU,
    # large enough that the interpreter (tests) launches few programs.
    block_k = min(32, triton.next_power_of_2(max(k, 1)))
    block_d = min(128, triton.next_power_of_2(max(d, 1)))
    return block_k, block_d


def _check(indices: Tensor, weights_or_rows: Tensor) -> tuple[Tensor, int, int]:
    if indices.dim() != 2:
        raise ValueError(f"indices must be [B, k], got {tuple(indices.shape)}")
    if weights_or_rows.shape[0] != indices.shape[0]:
        raise ValueError("indices and weights/rows disagree on the batch size")
    return indices.to(torch.int64).contiguous(), indices.shape[0], indices.shape[1]


class TritonPrimitives:
    """The Triton backend (stateless: the atomics need no sort)."""

    def gather_sum(self, indices: Tensor, weights: Tensor, table: Tensor) -> Tensor:
        """`[B, d]` weighted sum of gathered table rows, in the table's dtype."""
        idx, B, K = _check(indices, weights)
        D = table.shape[1]
        out = torch.empty(B, D, dtype=table.dtype, device=table.device)
        if B == 0 or D == 0:
            return out
        block_k, block_d = _blocks(K, D)
        grid = (B, triton.cdiv(D, block_d))
        _gather_sum_kernel[grid](
            idx, weights.contiguous(), table, out, K, D, table.stride(0), table.stride(1),
            BLOCK_K=block_k, BLOCK_D=block_d,
        )  # fmt: skip
        return out

    def gather_dot(self, indices: Tensor, rows: Tensor, table: Tensor) -> Tensor:
        """`[B, k]` dot products of each row with its gathered table rows."""
        idx, B, K = _check(indices, rows)
        D = table.shape[1]
        out = torch.empty(B, K, dtype=table.dtype, device=table.device)
        if B == 0 or K == 0:
            return out
        block_k, block_d = _blocks(K, D)
        grid = (B, triton.cdiv(K, block_k))
        _gather_dot_kernel[grid](
            idx, rows.contiguous(), table, out, K, D, table.stride(0), table.stride(1),
            BLOCK_K=block_k, BLOCK_D=block_d,
        )  # fmt: skip
        return out

    def scatter_sum(self, indices: Tensor, weights: Tensor, rows: Tensor, n: int) -> Tensor:
        """`[n, d]` fp32 sum of weighted rows into their indices' slots (atomics)."""
        idx, B, K = _check(indices, weights)
        D = rows.shape[1]
        out = torch.zeros(n, D, dtype=torch.float32, device=rows.device)
        if B == 0 or K == 0 or D == 0:
            return out
        block_k, block_d = _blocks(K, D)
        grid = (B, triton.cdiv(D, block_d))
        _scatter_sum_kernel[grid](
            idx, weights.contiguous(), rows.contiguous(), out, K, D, BLOCK_K=block_k, BLOCK_D=block_d
        )
        return out

    def scatter_sum_t(self, indices: Tensor, weights: Tensor, rows: Tensor, n: int, dtype: torch.dtype) -> Tensor:
        """`scatter_sum` as a transposed `[d, n]` view (autograd lays it out as the parameter)."""
        return self.scatter_sum(indices, weights, rows, n).to(dtype).t()

    def decode_backward(
        self, indices: Tensor, values: Tensor, grad_out: Tensor, W_dec: Tensor, need_values: bool, need_weight: bool
    ) -> tuple[Tensor | None, Tensor | None] | None:
        """No fused form: the decoder backward uses `gather_dot` and `scatter_sum`."""
        return None


__all__ = ["TritonPrimitives"]
