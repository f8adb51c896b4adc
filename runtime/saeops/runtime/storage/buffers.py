"""Reusable large byte buffers for readers of big objects (cache shards).

A fresh 50 MB allocation is mmapped by the C library and page-faulted page by page on first
write, every time: for a shard already in the page cache that doubles the cost of reading it,
and again for the shuffled copy. `BufferPool` hands a buffer out again only once nothing
references it any more: a tensor from `torch.frombuffer`/`torch.from_numpy`, any view of one,
or a memoryview all hold a reference to the numpy array under them, so the array's reference
count says whether it is idle.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

__all__ = ["BufferPool"]

# sys.getrefcount of a pooled array that nothing else references, as seen inside `_idle`:
# the pool's list, the loop variable and getrefcount's own argument.
_IDLE_REFS = 3


class BufferPool:
    """Up to `max_buffers` byte arrays, reused when idle; thread-safe."""

    def __init__(self, max_buffers: int = 8) -> None:
        self.max_buffers = max_buffers
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """An uninitialised uint8 array of `nbytes` (a view of a pooled array when one is idle).

        The caller may wrap it in tensors freely: the pool reuses it only after every such
        tensor, view and memoryview is gone.
        """
        with self._lock:
            for arr in self._buffers:
                if arr.nbytes >= nbytes and sys.getrefcount(arr) <= _IDLE_REFS:
                    return arr[:nbytes]
            arr = np.empty(nbytes, dtype=np.uint8)  # numpy.empty: no zero-fill
            if len(self._buffers) < self.max_buffers:
                self._buffers.append(arr)
            return arr[:nbytes]

    def __len__(self) -> int:
        return len(self._buffers)
