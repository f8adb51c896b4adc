"""Dense torch reference implementations: obviously correct, slow, autograd does the backward.

They define the semantics the fast paths (`torch_ops`, `triton_ops`) are tested against; the
selection is `select`'s, tested against `torch.topk` on its own.
"""

from __future__ import annotations

from torch import Tensor

from saeops.kernels import select


def sparse_to_dense(indices: Tensor, values: Tensor, n: int) -> Tensor:
    """Padded `(values, indices)` -> dense `[B, n]` (duplicates add up)."""
    return values.new_zeros(values.shape[0], n).scatter_add(1, indices, values)


def sparse_decode(indices: Tensor, values: Tensor, W_dec: Tensor, b_dec: Tensor | None) -> Tensor:
    out = sparse_to_dense(indices, values.to(W_dec.dtype), W_dec.shape[0]) @ W_dec
    return out if b_dec is None else out + b_dec


def encode(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    k: int,
    score_scale: Tensor | None,
    input_bias: Tensor | None,
    batch_topk: bool,
) -> tuple[Tensor, Tensor]:
    """TopK (per row) or BatchTopK (over the batch) of `pre = (x - input_bias) @ W_enc + b_enc`,
    selected on `pre * score_scale`: `(relu(pre) at the selection, indices)`."""
    x_c = x if input_bias is None else x - input_bias
    pre = x_c @ W_enc + b_enc
    scores = pre.detach() if score_scale is None else pre.detach() * score_scale.detach()
    if batch_topk:
        indices, keep = select.batchtopk(scores, pre.detach(), k)
        return pre.relu().gather(1, indices) * keep, indices
    indices = select.topk(scores, k)[1]
    return pre.relu().gather(1, indices), indices


def dense_to_sparse(acts: Tensor) -> tuple[Tensor, Tensor]:
    indices, keep = select.dense_to_sparse_indices(acts.detach())
    return acts.gather(1, indices) * keep, indices
