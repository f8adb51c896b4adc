"""Autograd-aware collectives for dictionary (tensor) parallelism (Megatron's f and g).

`copy_to_group` is the identity forward and sums gradients over the group backward: put it on
a replicated input before a sharded op, so replicated parameters upstream (b_dec through the
centring) receive the gradient of every shard. `reduce_from_group` sums partial results
forward and passes the (replicated, identical) gradient straight through backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saeops.runtime.distributed.context import Group


class _CopyToGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Group) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.group.all_reduce_(grad.contiguous().clone()), None


class _ReduceFromGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Group) -> Tensor:
        return group.all_reduce_(x.contiguous().clone())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def copy_to_group(x: Tensor, group: Group) -> Tensor:
    """Identity forward; gradient summed over `group` backward."""
    return x if group.size == 1 else _CopyToGroup.apply(x, group)


def reduce_from_group(x: Tensor, group: Group) -> Tensor:
    """Sum over `group` forward; gradient passed through backward."""
    return x if group.size == 1 else _ReduceFromGroup.apply(x, group)


def gather_cat(t: Tensor, group: Group, dim: int) -> Tensor:
    """Concatenate every rank's `t` along `dim` (no gradient)."""
    return torch.cat(group.all_gather(t.detach()), dim=dim)
