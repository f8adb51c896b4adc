"""Checkpoints: weights, optimizer, schedules (a function of the step), RNG states, data cursor
and metric accumulators, written atomically: the state file first, then the `latest` pointer.
A checkpoint interrupted mid-write is never pointed at, so it is never resumed from."""

from __future__ import annotations

import io
import logging
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from saeops.runtime.distributed.context import DistContext
from saeops.runtime.distributed.faults import maybe_fail
from saeops.runtime.models import SparseDictionary
from saeops.runtime.storage import KeyNotFound, Storage
from saeops.runtime.train.trainer import Trainer

log = logging.getLogger("saeops.checkpoint")
LATEST = "latest.json"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Writes `step-NNNNNNNN/state.pt` under a storage prefix and moves `latest.json` to it.

    With a `DistContext` every rank takes part (sharded weights and optimizer moments are
    gathered, each rank's RNG state is collected) and rank 0 alone writes; the others wait at
    a barrier until the checkpoint is durable. State is saved unsharded, so it loads into any
    world size (RNG states are restored per rank when the world size matches).
    """

    def __init__(self, storage: Storage, keep: int = 2, ctx: DistContext | None = None) -> None:
        self.storage = storage
        self.keep = keep
        self.ctx = ctx

    @property
    def _is_writer(self) -> bool:
        return self.ctx is None or self.ctx.is_main

    def save(self, model: SparseDictionary, trainer: Trainer, extra: dict[str, Any] | None = None) -> str:
        step = trainer.state.step
        key = f"step-{step:08d}/state.pt"
        model_state = model.full_state_dict()
        trainer_state = trainer.state_dict()
        rngs = self.ctx.all_gather_object(rng_state()) if self.ctx is not None else [rng_state()]
        if self._is_writer:
            buf = io.BytesIO()
            torch.save({"model": model_state, "trainer": trainer_state, "rng": rngs,
                        "world_size": len(rngs), "extra": extra or {}}, buf)
            self.storage.put_bytes(key, buf.getvalue())
            # Test hook: die between the state file and the pointer (a crash mid-checkpoint).
            maybe_fail("checkpoint-written", step)
            self.storage.put_json(LATEST, {"step": step, "key": key})
            self._prune(step)
            log.info("checkpoint at step %d -> %s", step, self.storage.url(key))
        if self.ctx is not None:
            self.ctx.barrier()
        return self.storage.url(key)

    def _prune(self, current: int) -> None:
        """Keep the newest `keep` checkpoints up to `current`; never the one `latest` names.
        Directories after `current` are leftovers of a crashed attempt and are removed."""
        mine = f"step-{current:08d}"
        steps = sorted({k.split("/")[0] for k in self.storage.list("step-")})
        kept = [s for s in steps if s <= mine][-self.keep:]
        for old in steps:
            if old not in kept and old != mine:
                self.storage.delete_prefix(old + "/")

    def latest(self) -> dict[str, Any] | None:
        try:
            return self.storage.get_json(LATEST)
        except KeyNotFound:
            return None

    def read_latest(self) -> dict[str, Any] | None:
        """The latest checkpoint's contents, read by rank 0 and shared with every rank (so all
        ranks agree on what they resume from, whatever storage each of them can see)."""
        state = None
        if self._is_writer:
            pointer = self.latest()
            if pointer is not None:
                state = torch.load(io.BytesIO(self.storage.get_bytes(pointer["key"])), weights_only=False)
                state["step"] = int(pointer["step"])
        if self.ctx is not None and self.ctx.distributed:
            box = [state]
            dist.broadcast_object_list(box, src=0)
            state = box[0]
        return state

    def restore(self, state: dict[str, Any], model: SparseDictionary, trainer: Trainer) -> int:
        """Load a checkpoint read by `read_latest` into model and trainer; returns its step."""
        model.load_full_state_dict(state["model"])
        trainer.load_state_dict(state["trainer"])
        rngs = state["rng"]
        if isinstance(rngs, dict):  # written by a single-process run before per-rank states
            rngs = [rngs]
        rank = self.ctx.rank if self.ctx is not None else 0
        if len(rngs) != (self.ctx.world_size if self.ctx is not None else 1):
            log.warning("checkpoint has RNG states of %d ranks; this run has a different world size", len(rngs))
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
        return int(state["step"])
