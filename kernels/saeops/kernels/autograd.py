"""Autograd functions for the sparse decoder and the TopK/BatchTopK encoders.

Both are written once against `backend.Primitives`; the backend object and the workspace are
arguments (owned by the caller's `Kernels`). The encoder's dense matmul and the top-k
selection (`select`) are the same on every backend (cuBLAS/MKL beat a hand-written GEMM);
only the sparse parts differ.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from saeops.kernels import select
from saeops.kernels.backend import Primitives
from saeops.kernels.buffers import Workspace

FUSABLE_SCALE_DTYPES = (torch.float32, torch.float64)


def _fusable_scale(score_scale: Tensor | None, W_enc: Tensor) -> tuple[bool, Tensor | None]:
    """(whether the scale can be folded into the encoder, the scale in W_enc's dtype): a
    positive fp32/fp64 scale selects the same latents as `pre * s` when folded into W_enc."""
    if score_scale is None:
        return True, None
    s = score_scale.detach().to(W_enc.dtype)
    return W_enc.dtype in FUSABLE_SCALE_DTYPES and bool((s > 0).all()), s


def _scaled_columns(W: Tensor, s: Tensor, workspace: Workspace) -> Tensor:
    """`W * s` in W's own layout (row-major or latent-major), into a reused CPU buffer."""
    buf = workspace.get("scaled_W_enc", (W.numel(),), W.dtype, W.device)
    if buf is None:
        return W * s
    if W.is_contiguous():
        out = buf.view(W.shape)
    elif W.t().is_contiguous():
        out = buf.view(W.shape[1], W.shape[0]).t()
    else:
        return W * s
    return torch.mul(W, s, out=out)


def _select(
    x_c: Tensor, W_enc: Tensor, b_enc: Tensor, score_scale: Tensor | None, k: int, batch_topk: bool,
    workspace: Workspace,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """`(pre at the selection, indices, keep)` of `pre = x_c @ W_enc + b_enc`, selected on
    `pre * score_scale`.

    A positive fp32/fp64 scale (or none) is folded into the weights, `x_c @ (W_enc * s) +
    b_enc * s` (a [d_in, d_sae] product instead of a pass over [B, d_sae]); `pre` at the
    selection is then `score / s` (within an ulp). Where `select.topk` adds the bias while it
    selects (the C++ kernel), the GEMM leaves it out: no bias pass over the [B, d_sae] scores.
    """
    fused, s = _fusable_scale(score_scale, W_enc)
    out = workspace.get("scores", (x_c.shape[0], W_enc.shape[1]), W_enc.dtype, W_enc.device)
    if not fused:
        pre = torch.addmm(b_enc, x_c, W_enc)
        scores = torch.mul(pre, s, out=out) if out is not None else pre * s
        if batch_topk:
            indices, keep = select.batchtopk(scores, pre, k)
        else:
            indices, keep = select.topk(scores, k)[1], None
        return pre.gather(1, indices), indices, keep
    W_eff = W_enc if s is None else _scaled_columns(W_enc, s, workspace)
    b_eff = (b_enc if s is None else b_enc * s).detach()
    if not batch_topk and select.adds_bias(W_enc):
        scores = torch.mm(x_c, W_eff, out=out) if out is not None else torch.mm(x_c, W_eff)
        sel, indices = select.topk(scores, k, bias=b_eff)
        keep = None
    else:
        scores = torch.addmm(b_eff, x_c, W_eff, out=out) if out is not None else torch.addmm(b_eff, x_c, W_eff)
        if batch_topk:
            indices, keep = select.batchtopk(scores, scores, k)
        else:
            indices, keep = select.topk(scores, k)[1], None
        sel = scores.gather(1, indices)
    return (sel if s is None else sel / s[indices]), indices, keep


class SparseDecode(torch.autograd.Function):
    """`out[b] = sum_j values[b, j] * W_dec[indices[b, j]] + b_dec`."""

    @staticmethod
    def forward(
        ctx: Any,
        indices: Tensor,
        values: Tensor,
        W_dec: Tensor,
        b_dec: Tensor | None,
        prims: Primitives,
    ) -> Tensor:
        out = prims.gather_sum(indices, values, W_dec)
        if b_dec is not None:
            out += b_dec
        ctx.save_for_backward(indices, values, W_dec)
        ctx.prims, ctx.has_bias = prims, b_dec is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        indices, values, W_dec = ctx.saved_tensors
        prims: Primitives = ctx.prims
        grad_out = grad_out.contiguous()
        g_values = g_W = g_b = None
        need_v, need_w = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        both = prims.decode_backward(indices, values, grad_out, W_dec, need_v, need_w) if need_v or need_w else None
        if both is not None:
            g_values, g_W = both
        else:
            if need_v:
                g_values = prims.gather_dot(indices, grad_out, W_dec).to(values.dtype)
            if need_w:
                # Padding entries have value 0, so they scatter nothing.
                g_W = prims.scatter_sum(indices, values, grad_out, W_dec.shape[0]).to(W_dec.dtype)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            g_b = grad_out.sum(0, dtype=torch.float32).to(grad_out.dtype)
        return None, g_values, g_W, g_b, None


class SparseEncode(torch.autograd.Function):
    """TopK / BatchTopK encoder: dense forward matmul, sparse backward.

    Returns `(values, indices)`; `values = relu(pre)` at the selected entries (0 on padding).
    The backward touches only the selected entries: `grad W_enc[:, i] += x_c[b] * g[b, j]`
    (a scatter into a transposed [d_sae, d_in] buffer), `grad b_enc` an index_add, `grad x`
    a gather of W_enc columns, and `grad input_bias = -W_enc @ grad b_enc` (the batch sum of
    `-grad x`, a matrix-vector product instead of a [B, d_in] gather).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        score_scale: Tensor | None,
        input_bias: Tensor | None,
        k: int,
        batch_topk: bool,
        prims: Primitives,
        workspace: Workspace,
    ) -> tuple[Tensor, Tensor]:
        x_c = x if input_bias is None else x - input_bias
        pre_sel, indices, keep = _select(x_c, W_enc, b_enc, score_scale, k, batch_topk, workspace)
        active = pre_sel > 0
        if keep is not None:
            active &= keep
        values = torch.where(active, pre_sel, torch.zeros((), dtype=pre_sel.dtype, device=pre_sel.device))
        ctx.save_for_backward(x_c, W_enc, indices, active)
        ctx.prims, ctx.has_input_bias = prims, input_bias is not None
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_values: Tensor, _grad_indices: Tensor | None) -> tuple[Tensor | None, ...]:
        x_c, W_enc, indices, active = ctx.saved_tensors
        prims: Primitives = ctx.prims
        d_sae = W_enc.shape[1]
        # relu' and padding: only active entries pass gradient to the pre-activations.
        g = torch.where(
            active, grad_values, torch.zeros((), dtype=grad_values.dtype, device=grad_values.device)
        )
        g_x = g_W = g_b = g_bias = None
        if ctx.needs_input_grad[1]:
            if W_enc.stride(0) == 1:
                # W_enc is a transposed view of a [d_sae, d_in] tensor: the [d_sae, d_in]
                # scatter's transpose is its layout.
                g_W = prims.scatter_sum(indices, g, x_c, d_sae).to(W_enc.dtype).t()
            else:
                # Row-major W_enc: build the gradient in that layout directly; a transposed
                # gradient would be copied by autograd to the parameter's layout (a slow
                # strided pass over d_in x d_sae).
                g_W = prims.scatter_sum_t(indices, g, x_c, d_sae, W_enc.dtype)
        need_b = ctx.needs_input_grad[2] or (ctx.has_input_bias and ctx.needs_input_grad[4])
        if need_b:
            gb32 = torch.zeros(d_sae, dtype=torch.float32, device=g.device)
            gb32.index_add_(0, indices.reshape(-1), g.reshape(-1).to(torch.float32))
            g_b = gb32.to(W_enc.dtype)
            if ctx.has_input_bias and ctx.needs_input_grad[4]:
                g_bias = -(W_enc @ g_b)
        if ctx.needs_input_grad[0]:
            g_x = prims.gather_sum(indices, g, W_enc.t()).to(x_c.dtype)
        return g_x, g_W, g_b if ctx.needs_input_grad[2] else None, None, g_bias, None, None, None, None
