"""Autograd functions for the sparse decoder and the TopK/BatchTopK encoders.

Both are written once against the primitive contract of `torch_ops` (`gather_sum`,
`gather_dot`, `scatter_sum`); the backend module (`torch_ops` or `triton_ops`) is an argument.
The encoder's dense matmul and the top-k selection are torch on every backend (cuBLAS/MKL
beat a hand-written GEMM); only the sparse parts differ.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from saeops.kernels import cpu_ext, select

FUSABLE_SCALE_DTYPES = (torch.float32, torch.float64)
# Group size of the C++ selection (cpu_ext.topk_bias): 32 measured ~10% faster than 16 at
# d_sae 12288 (fewer group maxima to threshold); rows too narrow for it take an exact path.
EXT_TOPK_MEMBERS = 32


class _Workspace:
    """Reusable CPU buffers for the forward's large temporaries (the [B, d_sae] scores, the
    scaled encoder): fresh 30+ MB allocations are mmapped and page-faulted on every step,
    which costs as much as a fifth of the GEMM. Buffers are named; a name's buffer is
    overwritten by the next call that asks for it, so only temporaries live here."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype], Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor | None:
        if device.type != "cpu":
            return None  # the CUDA caching allocator already reuses memory
        numel = math.prod(shape)
        buf = self.buffers.get((name, dtype))
        if buf is None or buf.numel() < numel:
            buf = self.buffers[(name, dtype)] = torch.empty(numel, dtype=dtype)
        return buf[:numel].view(shape)

    def clear(self) -> None:
        self.buffers.clear()


WORKSPACE = _Workspace()


def encoder_scores(
    x_c: Tensor, W_enc: Tensor, b_enc: Tensor, score_scale: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """`(scores, pre)` with `scores = (x_c @ W_enc + b_enc) * score_scale`.

    With a positive fp32/fp64 scale the scale is folded into the weights (`x_c @ (W_enc * s) +
    b_enc * s`, a [d_in, d_sae] product instead of a pass over [B, d_sae]) and `pre` is None:
    callers recover `pre` at the selected entries as `scores / s` (within an ulp).
    """
    shape = (x_c.shape[0], W_enc.shape[1])
    out = WORKSPACE.get("scores", shape, W_enc.dtype, W_enc.device)
    if score_scale is None:
        return torch.addmm(b_enc, x_c, W_enc, out=out) if out is not None else torch.addmm(
            b_enc, x_c, W_enc
        ), None
    s = score_scale.detach().to(W_enc.dtype)
    if W_enc.dtype in FUSABLE_SCALE_DTYPES and bool((s > 0).all()):
        if out is None:
            return torch.addmm(b_enc * s, x_c, W_enc * s), None
        return torch.addmm(b_enc * s, x_c, _scaled_columns(W_enc, s), out=out), None
    pre = torch.addmm(b_enc, x_c, W_enc)
    scores = torch.mul(pre, s, out=out) if out is not None else pre * s
    return scores, pre


def _fused_topk(
    x_c: Tensor, W_enc: Tensor, b_enc: Tensor, score_scale: Tensor | None, k: int
) -> tuple[Tensor, Tensor] | None:
    """`(pre at the selection, indices)` through the C++ CPU kernel, or None where it does not
    apply (not CPU, not fp32/fp64, a non-positive scale, or no compiled extension).

    The GEMM runs without the bias and `cpu_ext.topk_bias` adds it while selecting: no bias
    pass over the [B, d_sae] scores, and one read of each row instead of four passes.
    """
    if W_enc.device.type != "cpu" or W_enc.dtype not in FUSABLE_SCALE_DTYPES or x_c.dtype != W_enc.dtype:
        return None
    ext = cpu_ext.module()
    if ext is None:
        return None
    s = None if score_scale is None else score_scale.detach().to(W_enc.dtype)
    if s is not None and not bool((s > 0).all()):
        return None
    n = W_enc.shape[1]
    W_eff = W_enc if s is None else _scaled_columns(W_enc, s)
    b_eff = (b_enc if s is None else b_enc * s).detach().contiguous()
    scores = WORKSPACE.get("scores", (x_c.shape[0], n), W_enc.dtype, W_enc.device)
    scores = torch.mm(x_c, W_eff, out=scores)
    values, indices = ext.topk_bias(scores, b_eff, min(k, n), EXT_TOPK_MEMBERS)
    return (values if s is None else values / s[indices]), indices


def _scaled_columns(W: Tensor, s: Tensor) -> Tensor:
    """`W * s` in W's own layout (row-major or latent-major), into a reused CPU buffer."""
    buf = WORKSPACE.get("scaled_W_enc", (W.numel(),), W.dtype, W.device)
    if buf is None:
        return W * s
    if W.is_contiguous():
        out = buf.view(W.shape)
    elif W.t().is_contiguous():
        out = buf.view(W.shape[1], W.shape[0]).t()
    else:
        return W * s
    return torch.mul(W, s, out=out)


class SparseDecode(torch.autograd.Function):
    """`out[b] = sum_j values[b, j] * W_dec[indices[b, j]] + b_dec`."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        indices: Tensor,
        values: Tensor,
        W_dec: Tensor,
        b_dec: Tensor | None,
        prims: ModuleType,
    ) -> Tensor:
        out = prims.gather_sum(indices, values, W_dec)
        if b_dec is not None:
            out += b_dec
        ctx.save_for_backward(indices, values, W_dec)
        ctx.prims = prims  # type: ignore[attr-defined]
        ctx.has_bias = b_dec is not None  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        indices, values, W_dec = ctx.saved_tensors
        prims: ModuleType = ctx.prims
        grad_out = grad_out.contiguous()
        g_values = g_W = g_b = None
        need_v, need_w = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        fused = getattr(prims, "decode_backward", None)
        both = fused(indices, values, grad_out, W_dec, need_v, need_w) if fused and (need_v or need_w) else None
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
        ctx: FunctionCtx,
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        score_scale: Tensor | None,
        input_bias: Tensor | None,
        k: int,
        batch_topk: bool,
        prims: ModuleType,
    ) -> tuple[Tensor, Tensor]:
        x_c = x if input_bias is None else x - input_bias
        fused = None if batch_topk else _fused_topk(x_c, W_enc, b_enc, score_scale, k)
        keep = None
        if fused is not None:
            pre_sel, indices = fused
        else:
            scores, pre = encoder_scores(x_c, W_enc, b_enc, score_scale)
            if batch_topk:
                indices, keep = select.batchtopk_indices(scores, scores if pre is None else pre, k)
            else:
                indices = select.topk_indices(scores, k)
            if pre is not None:
                pre_sel = pre.gather(1, indices)
            elif score_scale is not None:
                s = score_scale.detach().to(scores.dtype)
                pre_sel = scores.gather(1, indices) / s[indices]
            else:
                pre_sel = scores.gather(1, indices)
        active = pre_sel > 0
        if keep is not None:
            active &= keep
        values = torch.where(active, pre_sel, torch.zeros((), dtype=pre_sel.dtype, device=pre_sel.device))
        ctx.save_for_backward(x_c, W_enc, indices, active)
        ctx.prims = prims  # type: ignore[attr-defined]
        ctx.has_input_bias = input_bias is not None  # type: ignore[attr-defined]
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_values: Tensor, _grad_indices: Tensor | None) -> tuple[Tensor | None, ...]:
        x_c, W_enc, indices, active = ctx.saved_tensors
        prims: ModuleType = ctx.prims
        d_sae = W_enc.shape[1]
        # relu' and padding: only active entries pass gradient to the pre-activations.
        g = torch.where(
            active, grad_values, torch.zeros((), dtype=grad_values.dtype, device=grad_values.device)
        )
        g_x = g_W = g_b = g_bias = None
        if ctx.needs_input_grad[1]:
            if W_enc.stride(0) == 1 or not hasattr(prims, "scatter_sum_t"):
                # W_enc is a transposed view of a [d_sae, d_in] tensor (or the backend has no
                # transposed scatter): the [d_sae, d_in] scatter's transpose is its layout.
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
        return g_x, g_W, g_b if ctx.needs_input_grad[2] else None, None, g_bias, None, None, None
