"""Sparse kernels for TopK-family dictionaries: Triton on CUDA, fast torch elsewhere.

Only k of d_sae latents are non-zero, so activations travel in a padded sparse format:
`values[B, k]` and `indices[B, k]` (int64); padding entries have value 0 (index 0) and get
no gradient.

Public ops (autograd-aware; leading batch dimensions are flattened and restored):

- `sparse_decode(indices, values, W_dec, b_dec)` -> `[B, d_model]`
- `topk_encode(x, W_enc, b_enc, k, score_scale=None)` -> `(values, indices)`
- `batchtopk_encode(x, W_enc, b_enc, k, score_scale=None)` -> `(values, indices)`
- `dense_to_sparse(acts)` -> `(values, indices)`; `should_use_sparse(acts_or_density, threshold)`

`score_scale` (decoder norms) only steers the selection and gets no gradient. The encoders
also accept `input_bias` (`x - input_bias` is encoded, SAE decoder-bias centring): its
gradient is then one matrix-vector product instead of a per-row gather.

Backends (`backend=` on every op, or process-wide with `configure()`):

- `"auto"` (default): `"triton"` when the tensors are on CUDA, Triton imports and Triton is
  wanted (`use_triton=True` on the call, or `configure(use_triton_kernel=True)`, mirroring
  the spec's `use_triton_kernel`); `"torch"` otherwise (the CPU default).
- `"triton"`: Triton kernels (`triton_ops`); on CPU tensors only under `TRITON_INTERPRET=1`.
- `"torch"`: embedding bags and sorted scatters (`torch_ops`), no dense [B, d_sae] gradient.
- `"reference"`: dense torch with autograd (`reference`): the definition the tests use.

`SAEOPS_KERNEL_BACKEND` and `SAEOPS_USE_TRITON=1` set the process defaults from the environment.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saeops.kernels import reference, select
from saeops.kernels._backend import CONFIG, Backend, configure, primitives, resolve, triton_available
from saeops.kernels.autograd import WORKSPACE, SparseDecode, SparseEncode

DEFAULT_SPARSITY_THRESHOLD = 0.996


def _flat(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


def sparse_decode(
    indices: Tensor,
    values: Tensor,
    W_dec: Tensor,
    b_dec: Tensor | None = None,
    *,
    backend: Backend | None = None,
    use_triton: bool | None = None,
) -> Tensor:
    """`sum_j values[..., j] * W_dec[indices[..., j]] (+ b_dec)` -> `[..., d_model]`."""
    if indices.shape != values.shape:
        raise ValueError(f"indices {tuple(indices.shape)} and values {tuple(values.shape)} differ")
    lead = indices.shape[:-1]
    idx, val = _flat(indices).to(torch.int64), _flat(values)
    name = resolve(W_dec.device, backend, use_triton)
    if name == "reference":
        out = reference.sparse_decode(idx, val, W_dec, b_dec)
    else:
        out = SparseDecode.apply(idx, val, W_dec, b_dec, primitives(name))
    return out.reshape(*lead, W_dec.shape[1])


def _encode(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    k: int,
    score_scale: Tensor | None,
    input_bias: Tensor | None,
    batch_topk: bool,
    backend: Backend | None,
    use_triton: bool | None,
) -> tuple[Tensor, Tensor]:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    lead = x.shape[:-1]
    xf = _flat(x)
    name = resolve(W_enc.device, backend, use_triton)
    if name == "reference":
        fn = reference.batchtopk_encode if batch_topk else reference.topk_encode
        values, indices = fn(xf, W_enc, b_enc, k, score_scale, input_bias)
    else:
        values, indices = SparseEncode.apply(
            xf, W_enc, b_enc, score_scale, input_bias, k, batch_topk, primitives(name)
        )
    return values.reshape(*lead, -1), indices.reshape(*lead, -1)


def topk_encode(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    k: int,
    score_scale: Tensor | None = None,
    *,
    input_bias: Tensor | None = None,
    backend: Backend | None = None,
    use_triton: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-row TopK of `pre = (x - input_bias) @ W_enc + b_enc`, selected on `pre * score_scale`;
    returns `(relu(pre) at the selection, indices)`, both `[..., k]`."""
    return _encode(x, W_enc, b_enc, k, score_scale, input_bias, False, backend, use_triton)


def batchtopk_encode(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    k: int,
    score_scale: Tensor | None = None,
    *,
    input_bias: Tensor | None = None,
    backend: Backend | None = None,
    use_triton: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """BatchTopK: the top `k * B` scores of the whole batch (positive `pre` only); rows hold
    variable counts, padded to the widest row with value 0 / index 0."""
    return _encode(x, W_enc, b_enc, k, score_scale, input_bias, True, backend, use_triton)


def dense_to_sparse(acts: Tensor) -> tuple[Tensor, Tensor]:
    """Dense `[..., d_sae]` activations -> padded `(values, indices)` of their nonzeros
    (differentiable w.r.t. the nonzero entries)."""
    lead = acts.shape[:-1]
    values, indices = reference.dense_to_sparse(_flat(acts))
    return values.reshape(*lead, -1), indices.reshape(*lead, -1)


def sparse_to_dense(indices: Tensor, values: Tensor, d_sae: int) -> Tensor:
    """Padded `(values, indices)` -> dense `[..., d_sae]` (duplicates add up)."""
    lead = indices.shape[:-1]
    return reference.sparse_to_dense(_flat(indices), _flat(values), d_sae).reshape(*lead, d_sae)


def should_use_sparse(acts_or_density: Tensor | float, threshold: float = DEFAULT_SPARSITY_THRESHOLD) -> bool:
    """Whether a ReLU/JumpReLU dictionary should decode through the sparse path.

    `acts_or_density` is either the activations (their fraction of exact zeros is measured)
    or an already measured density, the fraction of NON-zeros (e.g. a running L0 / d_sae).
    True when the zero fraction is >= `threshold` (the spec's
    `sparsity_threshold_for_triton_spmm_kernel`, 0.996 by default).
    """
    if isinstance(acts_or_density, Tensor):
        zeros = select.zero_fraction(acts_or_density.detach())
    else:
        if not 0.0 <= acts_or_density <= 1.0:
            raise ValueError(f"density must be in [0, 1], got {acts_or_density}")
        zeros = 1.0 - float(acts_or_density)
    return zeros >= threshold


__all__ = [
    "CONFIG",
    "DEFAULT_SPARSITY_THRESHOLD",
    "WORKSPACE",
    "Backend",
    "batchtopk_encode",
    "configure",
    "dense_to_sparse",
    "should_use_sparse",
    "sparse_decode",
    "sparse_to_dense",
    "topk_encode",
    "triton_available",
]
