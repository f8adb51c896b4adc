"""Sparse kernels for TopK-family dictionaries: Triton on CUDA, fast torch (and C++) elsewhere.

Only k of d_sae latents are non-zero, so activations travel in a padded sparse format:
`values[B, k]` and `indices[B, k]` (int64); padding entries have value 0 (index 0) and get
no gradient.

- `Kernels`: `sparse_decode`, `topk_encode`, `batchtopk_encode` (autograd-aware), with the
  backend choice and the caches they reuse step after step. A dictionary holds one, built
  from its spec.
- `select.topk` / `select.batchtopk`: the one top-k selection (C++ on CPU, torch elsewhere).
- `dense_to_sparse`, `sparse_to_dense`, `should_use_sparse`: stateless conversions.
"""

from __future__ import annotations

from saeops.kernels import select
from saeops.kernels.backend import Backend, triton_available
from saeops.kernels.ops import (
    DEFAULT_SPARSITY_THRESHOLD,
    Kernels,
    dense_to_sparse,
    should_use_sparse,
    sparse_to_dense,
)

__all__ = [
    "DEFAULT_SPARSITY_THRESHOLD",
    "Backend",
    "Kernels",
    "dense_to_sparse",
    "select",
    "should_use_sparse",
    "sparse_to_dense",
    "triton_available",
]
