"""Process groups of one run: the world, and the data x tensor mesh inside it."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from saeops.api import SpecError

log = logging.getLogger("saeops.distributed")

DEFAULT_TIMEOUT_S = 600
"""Collective timeout: a rank that died or hangs makes the others fail after this long
instead of waiting forever (`SAEOPS_DIST_TIMEOUT_S` overrides it)."""


@dataclass
class Group:
    """One process group as seen from this rank; collectives on a group of size 1 are no-ops."""

    ranks: list[int]
    rank: int
    pg: Any = None
    """torch ProcessGroup (None: the default world group)."""

    @property
    def size(self) -> int:
        return len(self.ranks)

    def all_reduce_(self, t: torch.Tensor, op: Any = None) -> torch.Tensor:
        """In-place sum (or `op`) over the group; returns `t`."""
        if self.size > 1:
            dist.all_reduce(t, op=op or dist.ReduceOp.SUM, group=self.pg)
        return t

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `t` (same shape everywhere), in group-rank order."""
        if self.size == 1:
            return [t]
        out = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(out, t.contiguous(), group=self.pg)
        return out

    def broadcast_(self, t: torch.Tensor, src_group_rank: int = 0) -> torch.Tensor:
        if self.size > 1:
            dist.broadcast(t, src=self.ranks[src_group_rank], group=self.pg)
        return t


@dataclass
class DistContext:
    """This process's place in the run. The default is a single process (no torch.distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    world: Group = field(default_factory=lambda: Group([0], 0))
    data: Group = field(default_factory=lambda: Group([0], 0))
    """Ranks holding the same dictionary slice and reading disjoint activations."""
    tensor: Group = field(default_factory=lambda: Group([0], 0))
    """Ranks sharing one activation batch, each holding a slice of d_sae."""
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints and artifacts and serves metrics."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank (one tiny all-reduce)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        return bool(self.world.all_reduce_(t, dist.ReduceOp.MAX).item())

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Tear down the process group this context created (after a clean finish only:
        after an error, exiting is what tells the peers)."""
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_process_group = False


def timeout_seconds() -> float:
    return float(os.environ.get("SAEOPS_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))


def mesh_ranks(data: int, tensor: int) -> tuple[list[list[int]], list[list[int]]]:
    """(data groups, tensor groups) of a data x tensor mesh with tensor ranks contiguous."""
    data_groups = [[d * tensor + t for d in range(data)] for t in range(tensor)]
    tensor_groups = [[d * tensor + t for t in range(tensor)] for d in range(data)]
    return data_groups, tensor_groups


def _make_group(all_groups: list[list[int]], rank: int, world_size: int) -> Group:
    mine: Group | None = None
    for ranks in all_groups:
        # Every rank must call new_group for every group, in the same order.
        pg = None if len(ranks) == world_size or len(ranks) == 1 else dist.new_group(ranks)
        if rank in ranks:
            mine = Group(ranks, ranks.index(rank), pg)
    assert mine is not None
    return mine


def _attempt_store(rank: int, world_size: int, timeout: timedelta) -> Any:
    """The rendezvous store, under a prefix per torchrun attempt.

    After an elastic restart torchrun hands the new workers the same agent store; with the
    plain `env://` init the new group can read the dead attempt's gloo addresses (and fail with
    "connection refused"). A per-attempt prefix keeps every attempt's keys apart."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"]), world_size,
                          is_master=not agent and rank == 0, timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"saeops/attempt-{attempt}/", store)


def init_distributed(data: int = 1, tensor: int = 1, device: torch.device | str = "cpu") -> DistContext:
    """Join the torchrun group (from RANK/WORLD_SIZE/LOCAL_RANK) and build the mesh.

    nccl on CUDA, gloo on CPU, with a timeout on every collective so a lost rank becomes an
    error on the others. Without torchrun (WORLD_SIZE unset or 1) returns a single-process
    context; `data * tensor` must equal the world size either way.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(device)
    if data * tensor != world_size:
        how = "launch it with `saeops run` (which starts torchrun)" if world_size == 1 else \
            f"torchrun started {world_size} processes"
        raise SpecError(f"spec.parallelism: data={data} x tensor={tensor} needs {data * tensor} processes; {how}")
    if world_size == 1:
        return DistContext(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    owns = not dist.is_initialized()
    if owns:
        timeout = timedelta(seconds=timeout_seconds())
        dist.init_process_group(backend, store=_attempt_store(rank, world_size, timeout), rank=rank,
                                world_size=world_size, timeout=timeout)
    data_groups, tensor_groups = mesh_ranks(data, tensor)
    ctx = DistContext(
        rank=rank, world_size=world_size, local_rank=local_rank, device=device,
        world=Group(list(range(world_size)), rank, None),
        data=_make_group(data_groups, rank, world_size),
        tensor=_make_group(tensor_groups, rank, world_size),
        owns_process_group=owns,
    )
    log.info("rank %d/%d (%s): data %d/%d, tensor %d/%d", rank, world_size, backend, ctx.data.rank, data,
             ctx.tensor.rank, tensor)
    return ctx
