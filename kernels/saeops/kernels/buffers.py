"""The caches a `Kernels` object owns: reusable CPU buffers and the sort of one step's indices."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Workspace:
    """Reusable CPU buffers for the forward's large temporaries (the [B, d_sae] scores, the
    scaled encoder): fresh 30+ MB allocations are mmapped and page-faulted on every step,
    which costs as much as a fifth of the GEMM. Buffers are named; a name's buffer is
    overwritten by the next call that asks for it, so only temporaries live here."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype], Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor | None:
        """A `shape` view of the buffer `name`, or None off the CPU (the CUDA caching allocator
        already reuses memory)."""
        if device.type != "cpu":
            return None
        numel = math.prod(shape)
        buf = self.buffers.get((name, dtype))
        if buf is None or buf.numel() < numel:
            buf = self.buffers[(name, dtype)] = torch.empty(numel, dtype=dtype)
        return buf[:numel].view(shape)


class SortCache:
    """The latent sort of one indices tensor, shared by the encoder and decoder backward of a
    step: both receive the very tensor object the step's selection produced (autograd hands
    saved tensors back as the same objects), so the object itself, and its version counter
    (an in-place change), are the key. Holding it keeps the entry valid."""

    def __init__(self) -> None:
        self.tensor: Tensor | None = None
        self.key: tuple[int, int] = (-1, -1)
        self.value: tuple[Tensor, Tensor] | None = None

    def get(self, indices: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """`(order, bounds)`: entry ids (flat `b * k + j`) sorted by index, stably, and the
        n + 1 bag boundaries (index i's entries are `order[bounds[i]:bounds[i + 1]]`)."""
        key = (indices._version, n)
        if self.value is not None and self.tensor is indices and self.key == key:
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


__all__ = ["SortCache", "Workspace"]
