"""Torch fast path for the sparse primitives (CPU default, CUDA without Triton); see
`backend.Primitives` for the contracts.

On CPU with fp32/fp64 tensors `scatter_sum_t` and `decode_backward` run C++ kernels
(`cpu_ext`, compiled on first use) when they can be built; everything else is torch.

All avoid the dense `[B, n]` matrix and any `[B, k, d]` intermediate on the hot path:
`gather_sum` is an embedding bag, `gather_dot` is the embedding bag's fused per-sample-weight
gradient, and `scatter_sum` sorts the entries by index so that it, too, is an embedding bag
(one bag per output row) instead of an `index_add_` over a `[B*k, d]` product.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from saeops.kernels import cpu_ext
from saeops.kernels.buffers import SortCache

LOW_PRECISION = (torch.float16, torch.bfloat16)
# Bytes allowed for a gathered [rows, k, d] block in the chunked fallback of gather_dot: cache
# sized on CPU; on a GPU small chunks only multiply kernel launches (bf16 at d_sae 131072 took
# 500+ launches per call with 8 MB).
CHUNK_BYTES = 8 << 20
CHUNK_BYTES_GPU = 512 << 20
# Output rows per block in `scatter_sum_t`: a [512, d] block stays in L2 while it is transposed.
SCATTER_T_BLOCK = 512


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision sums run in fp32, like the Triton kernels (CPU bag kernels may not).
    return torch.float32 if dtype in LOW_PRECISION else dtype


def _offsets(indices: Tensor) -> tuple[Tensor, Tensor]:
    B, k = indices.shape
    offsets = torch.arange(0, B * k, k, device=indices.device)
    bag_of = torch.arange(B, device=indices.device).repeat_interleave(k)
    return offsets, bag_of


def _ext_for(*tensors: Tensor) -> ModuleType | None:
    """The C++ CPU extension when every tensor is a CPU fp32/fp64 tensor of one dtype."""
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1 or dtypes.pop() not in (torch.float32, torch.float64):
        return None
    if any(t.device.type != "cpu" for t in tensors):
        return None
    return cpu_ext.module()


class TorchPrimitives:
    """The torch backend. It owns the sort cache its scatters share within a step."""

    def __init__(self, *, fused_dot: bool = True) -> None:
        self.sorts = SortCache()
        self.fused_dot = fused_dot
        """Use aten's fused per-sample-weight gradient for `gather_dot` (a private op; the
        chunked fallback is used without it)."""

    def gather_sum(self, indices: Tensor, weights: Tensor, table: Tensor) -> Tensor:
        """`[B, d]` weighted sum of gathered table rows, in the table's dtype."""
        acc = _acc_dtype(table.dtype)
        tbl = table if acc == table.dtype else table.to(acc)
        out = F.embedding_bag(indices, tbl.contiguous(), per_sample_weights=weights.to(acc), mode="sum")
        return out.to(table.dtype)

    def gather_dot(self, indices: Tensor, rows: Tensor, table: Tensor) -> Tensor:
        """`[B, k]` dot products of each row with its gathered table rows."""
        B, k = indices.shape
        acc = _acc_dtype(table.dtype)
        # CUDA's kernel accumulates half types in fp32 (at::acc_type); the CPU one is used for fp32 only.
        fused_ok = acc == table.dtype or rows.device.type == "cuda"
        if self.fused_dot and fused_ok and rows.dtype == table.dtype and B * k > 0:
            # The gradient kernel of embedding_bag w.r.t. per_sample_weights computes exactly these
            # dot products in one fused pass (no [B, k, d] gather); private, hence the fallback.
            op = getattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward", None)
            if op is not None:
                offsets, bag_of = _offsets(indices)
                try:
                    out = op(rows.contiguous(), table.contiguous(), indices.reshape(-1), offsets, bag_of, 0, -1)
                    return out.view(B, k)
                except RuntimeError:
                    pass
        out = torch.empty(B, k, dtype=acc, device=rows.device)
        budget = CHUNK_BYTES if rows.device.type == "cpu" else CHUNK_BYTES_GPU
        step = max(1, budget // max(1, k * table.shape[1] * 4))
        for s in range(0, B, step):
            gathered = table.index_select(0, indices[s : s + step].reshape(-1)).to(acc)
            gathered = gathered.view(-1, k, table.shape[1])
            out[s : s + step] = torch.bmm(gathered, rows[s : s + step].to(acc).unsqueeze(-1)).squeeze(-1)
        return out.to(table.dtype)

    def _bags(self, indices: Tensor, weights: Tensor, rows: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Entries sorted by index as embedding bags: (batch row of each entry, its weight, bag
        offsets, the table of rows in the accumulation dtype)."""
        order, bounds = self.sorts.get(indices, n)
        acc = _acc_dtype(rows.dtype)
        # Bag i holds the batch rows whose entries point at i (entries sorted by index).
        bag_rows = torch.div(order, indices.shape[1], rounding_mode="floor")
        return bag_rows, weights.reshape(-1).to(acc)[order], bounds[:-1], rows.to(acc).contiguous()

    def scatter_sum(self, indices: Tensor, weights: Tensor, rows: Tensor, n: int) -> Tensor:
        """`[n, d]` (fp32 for half inputs) sum of weighted rows into their indices' slots."""
        bag_rows, w, offsets, table = self._bags(indices, weights, rows, n)
        return F.embedding_bag(bag_rows, table, offsets, per_sample_weights=w, mode="sum")

    def scatter_sum_t(self, indices: Tensor, weights: Tensor, rows: Tensor, n: int, dtype: torch.dtype) -> Tensor:
        """`scatter_sum(...).t()` as a contiguous `[d, n]` tensor of `dtype`. On CPU it is built
        block by block, each block transposed while cache-resident: about half the cost of a
        whole-matrix strided copy."""
        if rows.device.type != "cpu":
            return self.scatter_sum(indices, weights, rows, n).to(dtype).t().contiguous()
        ext = _ext_for(weights, rows)
        if ext is not None:
            order, bounds = self.sorts.get(indices, n)
            out = ext.scatter_t(order, bounds, weights.reshape(-1).contiguous(), rows.contiguous(),
                                indices.shape[1], n)
            return out.to(dtype)
        bag_rows, w, offsets, table = self._bags(indices, weights, rows, n)
        out = torch.empty(rows.shape[1], n, dtype=dtype, device=rows.device)
        for i0 in range(0, n, SCATTER_T_BLOCK):
            i1 = min(n, i0 + SCATTER_T_BLOCK)
            s, e = int(offsets[i0]), int(offsets[i1]) if i1 < n else bag_rows.numel()
            block = F.embedding_bag(bag_rows[s:e], table, offsets[i0:i1] - s, per_sample_weights=w[s:e], mode="sum")
            out[:, i0:i1].copy_(block.t())
        return out

    def decode_backward(
        self, indices: Tensor, values: Tensor, grad_out: Tensor, W_dec: Tensor, need_values: bool, need_weight: bool
    ) -> tuple[Tensor | None, Tensor | None] | None:
        """`(gather_dot(indices, grad_out, W_dec), scatter_sum(indices, values, grad_out, n))` in
        one pass over the latent-sorted entries (C++ CPU kernel), or None where it does not apply."""
        ext = _ext_for(values, grad_out, W_dec)
        if ext is None or indices.numel() == 0:
            return None
        order, bounds = self.sorts.get(indices, W_dec.shape[0])
        g_values, g_W = ext.decode_backward(
            order, bounds, values.reshape(-1).contiguous(), grad_out.contiguous(), W_dec.contiguous(),
            indices.shape[1], need_values, need_weight,
        )  # fmt: skip
        return (g_values.view(indices.shape) if need_values else None), (g_W if need_weight else None)


__all__ = ["TorchPrimitives"]
