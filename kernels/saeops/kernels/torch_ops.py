"""Torch fast path for the three sparse primitives (CPU default, CUDA without Triton).

Every primitive works on the padded sparse format `indices[B, k]` (int64), `weights[B, k]`:

- `gather_sum(indices, weights, table)[b] = sum_j weights[b, j] * table[indices[b, j]]`
- `gather_dot(indices, rows, table)[b, j] = <rows[b], table[indices[b, j]]>`
- `scatter_sum(indices, weights, rows, n)[i] = sum_{(b, j): indices[b, j] = i} weights[b, j] * rows[b]`
- `scatter_sum_t(indices, weights, rows, n, dtype)`: the same, transposed to `[d, n]` (optional
  in a backend; the encoder uses it for a row-major W_enc's gradient)
- `decode_backward(...)`: gather_dot and scatter_sum of the decoder in one pass (optional;
  None where it does not apply)

On CPU with fp32/fp64 tensors the last two, and the encoder's selection, run C++ kernels
(`cpu_ext`, compiled on first use) when they can be built; everything else is torch.

All three avoid the dense `[B, n]` matrix and any `[B, k, d]` intermediate on the hot path:
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

LOW_PRECISION = (torch.float16, torch.bfloat16)
# Bytes allowed for a gathered [rows, k, d] block in the chunked fallback of gather_dot: cache
# sized on CPU; on a GPU small chunks only multiply kernel launches (bf16 at d_sae 131072 took
# 500+ launches per call with 8 MB).
CHUNK_BYTES = 8 << 20
CHUNK_BYTES_GPU = 512 << 20
# Use aten's fused per-sample-weight gradient for gather_dot (private; tests switch it off).
USE_FUSED_DOT = True


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision sums run in fp32, like the Triton kernels (CPU bag kernels may not).
    return torch.float32 if dtype in LOW_PRECISION else dtype


def gather_sum(indices: Tensor, weights: Tensor, table: Tensor) -> Tensor:
    """`[B, d]` weighted sum of gathered table rows, in the table's dtype."""
    acc = _acc_dtype(table.dtype)
    tbl = table if acc == table.dtype else table.to(acc)
    out = F.embedding_bag(indices, tbl.contiguous(), per_sample_weights=weights.to(acc), mode="sum")
    return out.to(table.dtype)


def _offsets(indices: Tensor) -> tuple[Tensor, Tensor]:
    B, k = indices.shape
    offsets = torch.arange(0, B * k, k, device=indices.device)
    bag_of = torch.arange(B, device=indices.device).repeat_interleave(k)
    return offsets, bag_of


def gather_dot(indices: Tensor, rows: Tensor, table: Tensor) -> Tensor:
    """`[B, k]` dot products of each row with its gathered table rows."""
    B, k = indices.shape
    acc = _acc_dtype(table.dtype)
    # CUDA's kernel accumulates half types in fp32 (at::acc_type); the CPU one is used for fp32 only.
    fused_ok = acc == table.dtype or rows.device.type == "cuda"
    if USE_FUSED_DOT and fused_ok and rows.dtype == table.dtype and B * k > 0:
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


class _SortCache:
    """The sort of one indices tensor, reused by the encoder and decoder backward of a step.

    Keyed on the storage address, shape, strides and version counter (views share it), and
    holding a reference so the address cannot be recycled while cached.
    """

    def __init__(self) -> None:
        self.tensor: Tensor | None = None
        self.key: tuple[object, ...] = ()
        self.value: tuple[Tensor, Tensor] | None = None

    def get(self, indices: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """`(order, bounds)`: entry ids (flat `b * k + j`) sorted by index, stably, and the
        n + 1 bag boundaries (index i's entries are `order[bounds[i]:bounds[i + 1]]`)."""
        key = (
            indices.data_ptr(),
            indices.device,
            tuple(indices.shape),
            indices.stride(),
            indices._version,
            n,
        )
        if self.value is not None and self.key == key:
            return self.value
        flat = indices.reshape(-1)
        order = torch.argsort(flat, stable=True)  # stable: a fixed summation order per bag
        counts = torch.bincount(flat, minlength=n)
        if counts.numel() != n:
            raise IndexError(f"indices out of range for {n} rows")
        bounds = torch.zeros(n + 1, dtype=torch.int64, device=flat.device)
        torch.cumsum(counts, 0, out=bounds[1:])
        self.tensor, self.key, self.value = indices, key, (order, bounds)
        return order, bounds


def _ext_for(*tensors: Tensor) -> ModuleType | None:
    """The C++ CPU extension when every tensor is a CPU fp32/fp64 tensor of one dtype."""
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1 or dtypes.pop() not in (torch.float32, torch.float64):
        return None
    if any(t.device.type != "cpu" for t in tensors):
        return None
    return cpu_ext.module()


_SORTS = _SortCache()


def _bags(indices: Tensor, weights: Tensor, rows: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Entries sorted by index as embedding bags: (batch row of each entry, its weight, bag
    offsets, the table of rows in the accumulation dtype)."""
    order, bounds = _SORTS.get(indices, n)
    acc = _acc_dtype(rows.dtype)
    # Bag i holds the batch rows whose entries point at i (entries sorted by index).
    bag_rows = torch.div(order, indices.shape[1], rounding_mode="floor")
    return bag_rows, weights.reshape(-1).to(acc)[order], bounds[:-1], rows.to(acc).contiguous()


def scatter_sum(indices: Tensor, weights: Tensor, rows: Tensor, n: int) -> Tensor:
    """`[n, d]` (fp32 for half inputs) sum of weighted rows into their indices' slots."""
    bag_rows, w, offsets, table = _bags(indices, weights, rows, n)
    return F.embedding_bag(bag_rows, table, offsets, per_sample_weights=w, mode="sum")


# Output rows per block in `scatter_sum_t`: a [512, d] block stays in L2 while it is transposed.
SCATTER_T_BLOCK = 512


def scatter_sum_t(indices: Tensor, weights: Tensor, rows: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """`scatter_sum(...).t()` as a contiguous `[d, n]` tensor of `dtype` (a row-major W_enc's
    gradient). On CPU it is built block by block, each block transposed while cache-resident:
    about half the cost of a whole-matrix strided copy."""
    if rows.device.type != "cpu":
        return scatter_sum(indices, weights, rows, n).to(dtype).t().contiguous()
    ext = _ext_for(weights, rows)
    if ext is not None:
        order, bounds = _SORTS.get(indices, n)
        out = ext.scatter_t(order, bounds, weights.reshape(-1).contiguous(), rows.contiguous(), indices.shape[1], n)
        return out.to(dtype)
    bag_rows, w, offsets, table = _bags(indices, weights, rows, n)
    out = torch.empty(rows.shape[1], n, dtype=dtype, device=rows.device)
    for i0 in range(0, n, SCATTER_T_BLOCK):
        i1 = min(n, i0 + SCATTER_T_BLOCK)
        s, e = int(offsets[i0]), int(offsets[i1]) if i1 < n else bag_rows.numel()
        block = F.embedding_bag(bag_rows[s:e], table, offsets[i0:i1] - s, per_sample_weights=w[s:e], mode="sum")
        out[:, i0:i1].copy_(block.t())
    return out


def decode_backward(
    indices: Tensor, values: Tensor, grad_out: Tensor, W_dec: Tensor, need_values: bool, need_weight: bool
) -> tuple[Tensor | None, Tensor | None] | None:
    """`(gather_dot(indices, grad_out, W_dec), scatter_sum(indices, values, grad_out, n))` in one
    pass over the latent-sorted entries (C++ CPU kernel), or None where it does not apply."""
    ext = _ext_for(values, grad_out, W_dec)
    if ext is None or indices.numel() == 0:
        return None
    order, bounds = _SORTS.get(indices, W_dec.shape[0])
    g_values, g_W = ext.decode_backward(
        order, bounds, values.reshape(-1).contiguous(), grad_out.contiguous(), W_dec.contiguous(),
        indices.shape[1], need_values, need_weight,
    )  # fmt: skip
    return (g_values.view(indices.shape) if need_values else None), (g_W if need_weight else None)
