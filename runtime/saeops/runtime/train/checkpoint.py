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
from saeops.runtime.storage import KeyNotFound, Storage

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
    """Writes `step-NNNNNNNN/state.pt` under a storage prefix and moves `latest.json` to it."""

    def __init__(self, storage: Storage, keep: int = 2) -> None:
        self.storage = storage
        self.keep = keep

    def save(self, model: torch.nn.Module, trainer: Any, extra: dict[str, Any] | None = None) -> str:
        step = trainer.state.step
        key = f"step-{step:08d}/state.pt"
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "trainer": trainer.state_dict(), "rng": rng_state(),
                    "extra": extra or {}}, buf)
        self.storage.put_bytes(key, buf.getvalue())
        self.storage.put_json(LATEST, {"step": step, "key": key})
        self._prune(step)
        log.info("checkpoint at step %d -> %s", step, self.storage.url(key))
        return self.storage.url(key)

    def _prune(self, current: int) -> None:
        steps = sorted({k.split("/")[0] for k in self.storage.list("step-")})
        for old in steps[: max(0, len(steps) - self.keep)]:
            if old != f"step-{current:08d}":
                self.storage.delete_prefix(old + "/")

    def latest(self) -> dict[str, Any] | None:
        try:
            return self.storage.get_json(LATEST)
        except KeyNotFound:
            return None

    def load_latest(self, model: torch.nn.Module, trainer: Any) -> int | None:
        """Restore the latest checkpoint into model and trainer; returns its step or None."""
        pointer = self.latest()
        if pointer is None:
            return None
        state = torch.load(io.BytesIO(self.storage.get_bytes(pointer["key"])), weights_only=False)
        model.load_state_dict(state["model"])
        trainer.load_state_dict(state["trainer"])
        set_rng_state(state["rng"])
        return int(pointer["step"])
