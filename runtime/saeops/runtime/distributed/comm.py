"""What the Trainer asks of the process groups each step (`saeops.runtime.train.trainer.TrainerComm`).

Gradients are averaged over the data group with one flat all-reduce (equal local batches, so
the average of local means is the global mean: the single-process gradient up to rounding).
Fire counts are summed every step so the dead-latent tracker, and with it Aux-K, is identical
on every rank; metric sums are reduced only when logging.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from saeops.runtime.distributed.context import DistContext
from saeops.runtime.distributed.sharded import ShardedSAE
from saeops.runtime.models import SparseDictionary
from saeops.runtime.train.metrics import MetricWindow


class DistributedComm:
    """Data-parallel (and tensor-parallel aware) reductions for one Trainer."""

    def __init__(self, ctx: DistContext, model: SparseDictionary) -> None:
        self.ctx = ctx
        self.sharded = model if isinstance(model, ShardedSAE) else None
        """The model when its parameters are slices (gradient norms and optimizer state gather)."""

    @property
    def data_size(self) -> int:
        return self.ctx.data.size

    @property
    def data_rank(self) -> int:
        return self.ctx.data.rank

    def sync_grads(self, params: list[nn.Parameter]) -> None:
        """Average gradients over the data group (missing gradients count as zeros)."""
        if self.ctx.data.size == 1:
            return
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.ctx.data.all_reduce_(flat)
        flat.div_(self.ctx.data.size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip by the norm of the whole (unsharded) gradient."""
        grads: list[torch.Tensor] = []
        sharded: list[torch.Tensor] = []
        replicated: list[torch.Tensor] = []
        for p in params:
            if p.grad is not None:
                grads.append(p.grad)
                (sharded if self.sharded is not None and self.sharded.is_sharded(p) else replicated).append(p.grad)
        dev = grads[0].device
        sq_sharded = sum((g.float().pow(2).sum() for g in sharded), torch.zeros((), device=dev))
        self.ctx.tensor.all_reduce_(sq_sharded)
        sq = sq_sharded + sum((g.float().pow(2).sum() for g in replicated), torch.zeros((), device=dev))
        norm = sq.sqrt()
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.to(g.dtype))
        return norm

    def reduce_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """Per-latent fire counts summed over the data group."""
        return self.ctx.data.all_reduce_(counts.clone())

    def reduce_window(self, window: MetricWindow) -> None:
        """Sum a MetricWindow over the data group in place (before `compute`)."""
        if self.ctx.data.size == 1:
            return
        keys = sorted(window.terms)
        scalars = torch.stack([window.sse, window.sst, window.l0_sum,
                               torch.tensor(float(window.tokens), dtype=torch.float64, device=window.sse.device),
                               torch.tensor(float(window.steps), dtype=torch.float64, device=window.sse.device),
                               *[torch.as_tensor(window.terms[k], dtype=torch.float64, device=window.sse.device)
                                 for k in keys]])
        self.ctx.data.all_reduce_(scalars)
        self.ctx.data.all_reduce_(window.fire_counts)
        window.sse, window.sst, window.l0_sum = scalars[0].clone(), scalars[1].clone(), scalars[2].clone()
        window.tokens, window.steps = int(scalars[3].item()), int(scalars[4].item())
        window.terms = {k: scalars[5 + i].clone() for i, k in enumerate(keys)}

    def consolidate_window(self, window: MetricWindow) -> None:
        """Before a checkpoint: data rank 0 holds the group's sums, the others zero, so the saved
        (rank 0) window is the whole window and logging still sums to the same numbers."""
        self.reduce_window(window)
        if self.data_rank != 0:
            keys = list(window.terms)
            window.reset()
            # Keep the term names: every rank must send the same-length buffer when logging.
            window.terms = {k: torch.zeros((), dtype=torch.float64, device=window.sse.device) for k in keys}

    def window_has_steps(self, window: MetricWindow) -> bool:
        """Whether any data rank has unlogged steps (the same answer on every rank)."""
        return self.ctx.any(window.steps > 0)

    def export_optimizer(self, state: dict[str, Any]) -> dict[str, Any]:
        return state if self.sharded is None else self.sharded.gather_optimizer_state(state)

    def import_optimizer(self, state: dict[str, Any]) -> dict[str, Any]:
        return state if self.sharded is None else self.sharded.shard_optimizer_state(state)
