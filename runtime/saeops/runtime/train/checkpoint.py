"""Checkpoints: weights, optimizer, schedules (a function of the step), RNG states, data cursor
and metric accumulators, written atomically: the checkpoint's files first, its manifest, then
the `latest` pointer. A checkpoint interrupted mid-write is never pointed at, so it is never
resumed from; a damaged one (truncated, bit rot) is skipped for the previous kept one. The
files hold tensors and plain data only (`checkpoint_format`): nothing is ever unpickled."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from saeops.api import SAETrainingRun, SpecError
from saeops.api.layout import LATEST, checkpoint_dir
from saeops.runtime.distributed.context import DistContext
from saeops.runtime.distributed.faults import maybe_fail
from saeops.runtime.models import SparseDictionary
from saeops.runtime.storage import Storage, StorageError
from saeops.runtime.train.checkpoint_format import (
    FORCE_NEW_HINT,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    CheckpointDamaged,
    read_checkpoint,
    read_pointer,
    step_of,
    write_checkpoint,
)
from saeops.runtime.train.identity import describe_mismatch, run_identity
from saeops.runtime.train.trainer import Trainer

log = logging.getLogger("saeops.checkpoint")
T = TypeVar("T")


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain data."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {"bit_generator": np_state["bit_generator"], "key": np_state["state"]["key"].tolist(),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def on_main(ctx: DistContext | None, fn: Callable[[], T]) -> T:
    """`fn()` on rank 0; every rank gets its result, or raises its `SpecError` (a bad-input
    verdict, e.g. a refused resume), so all ranks agree on what they resume from."""
    value: Any = None
    error: str | None = None
    if ctx is None or ctx.is_main:
        try:
            value = fn()
        except (SpecError, StorageError) as e:
            error = str(e)
    if ctx is not None and ctx.distributed:
        box = [value, error]
        dist.broadcast_object_list(box, src=0)
        value, error = box
    if error is not None:
        raise SpecError(error)
    return value


class Checkpointer:
    """Writes `step-NNNNNNNN/{tensors.safetensors,state.json,manifest.json}` under a storage
    prefix and moves `latest.json` to it.

    With a `DistContext` every rank takes part (sharded weights and optimizer moments are
    gathered, each rank's RNG state is collected) and rank 0 alone writes; the others wait at
    a barrier until the checkpoint is durable. State is saved unsharded, so it loads into any
    world size (RNG states are restored per rank when the world size matches). `run` gives the
    identity recorded with each checkpoint and required of the ones resumed from.
    """

    def __init__(self, storage: Storage, keep: int = 2, ctx: DistContext | None = None,
                 run: SAETrainingRun | None = None) -> None:
        self.storage = storage
        self.keep = keep
        self.ctx = ctx
        self.run = run
        self.identity = run_identity(run) if run is not None else {}

    @property
    def _is_writer(self) -> bool:
        return self.ctx is None or self.ctx.is_main

    def save(self, model: SparseDictionary, trainer: Trainer) -> str:
        step = trainer.state.step
        model_state = model.full_state_dict()
        trainer_state = trainer.state_dict()
        rngs = self.ctx.all_gather_object(rng_state()) if self.ctx is not None else [rng_state()]
        key = f"{checkpoint_dir(step)}/{MANIFEST}"
        if self._is_writer:
            state = {"model": model_state, "trainer": trainer_state, "rng": rngs, "world_size": len(rngs)}
            key = write_checkpoint(self.storage, step, state, self.identity)
            # Test hook: die between the checkpoint's files and the pointer (a crash mid-checkpoint).
            maybe_fail("checkpoint-written", step)
            self.storage.put_json(LATEST, {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step,
                                           "key": key, "identity": self.identity})
            self._prune(step)
            log.info("checkpoint at step %d -> %s", step, self.storage.url(key))
        if self.ctx is not None:
            self.ctx.barrier()
        return self.storage.url(key)

    # -- pruning ------------------------------------------------------------------------

    def _folders(self) -> tuple[list[int], set[int]]:
        """(every step folder, those with a manifest), from one listing."""
        steps: set[int] = set()
        complete: set[int] = set()
        for key in self.storage.list("step-"):
            folder, _, name = key.partition("/")
            step = step_of(folder)
            if step is None:
                continue
            steps.add(step)
            if name == MANIFEST:
                complete.add(step)
        return sorted(steps), complete

    def _prune(self, current: int) -> None:
        """Keep the newest `keep` complete checkpoints up to `current` (the one `latest` names).
        Everything else is a leftover: older checkpoints, folders after `current` (a crashed
        attempt), folders without a manifest (a crash mid-write, or the old pickled format),
        and temp files of interrupted writes older than the checkpoint just written."""
        for key in self.storage.remove_temp_files(older_than=f"{checkpoint_dir(current)}/{MANIFEST}"):
            log.info("removed the temp file of an interrupted write of %s", self.storage.url(key))
        steps, complete = self._folders()
        kept = [s for s in steps if s <= current and s in complete][-self.keep:]
        for step in steps:
            if step not in kept and step != current:
                self.storage.delete_prefix(checkpoint_dir(step) + "/")

    # -- reading ------------------------------------------------------------------------

    def read_latest(self) -> dict[str, Any] | None:
        """The latest usable checkpoint's contents, read by rank 0 and shared with every rank
        (so all ranks agree on what they resume from, whatever storage each of them can see).
        None when there is none; `SpecError` when checkpoints exist but none can be used."""
        return on_main(self.ctx, self._load)

    def _candidates(self) -> list[int]:
        """Steps to try, in order: the one `latest` names, then the older complete ones."""
        try:
            pointer = read_pointer(self.storage)  # SpecError: the old pickled format
        except CheckpointDamaged as e:
            log.warning("%s: %s; trying the checkpoint folders instead", self.storage.url(LATEST), e)
            return sorted(self._folders()[1], reverse=True)
        if pointer is None:  # nothing was ever committed (folders without a pointer are leftovers)
            return []
        latest = int(pointer["step"])
        return [latest, *sorted((s for s in self._folders()[1] if s < latest), reverse=True)]

    def _load(self) -> dict[str, Any] | None:
        failed: list[str] = []
        for step in self._candidates():
            try:
                state, manifest = read_checkpoint(self.storage, step)
                why = describe_mismatch(manifest.get("identity"), self.run) if self.run is not None else None
                if why is not None:
                    raise CheckpointDamaged(f"it belongs to another run: {why}")
            except CheckpointDamaged as e:
                failed.append(f"{self.storage.url(checkpoint_dir(step))} ({e})")
                continue
            if failed:
                log.warning("checkpoint %s is not usable; falling back to %s",
                            "; ".join(failed), self.storage.url(checkpoint_dir(step)))
            state["step"] = step
            return state
        if failed:
            raise SpecError(f"no usable checkpoint: {'; '.join(failed)}; {FORCE_NEW_HINT}")
        return None

    def restore(self, state: dict[str, Any], model: SparseDictionary, trainer: Trainer) -> int:
        """Load a checkpoint read by `read_latest` into model and trainer; returns its step."""
        model.load_full_state_dict(state["model"])
        trainer.load_state_dict(state["trainer"])
        rngs = state["rng"]
        rank = self.ctx.rank if self.ctx is not None else 0
        if len(rngs) != (self.ctx.world_size if self.ctx is not None else 1):
            log.warning("checkpoint has RNG states of %d ranks; this run has a different world size", len(rngs))
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
        return int(state["step"])
