"""Where a run keeps things under its `spec.output.storageUri`: the runtime writes there, the
operator and the tools find things there, so the names live in the neutral layer."""

from __future__ import annotations

CHECKPOINTS = "checkpoints"
"""Prefix of a run's checkpoints."""
LATEST = "latest.json"
"""Pointer to the newest complete checkpoint, under CHECKPOINTS."""
TERMINATION_LOG = "/dev/termination-log"
"""Kubernetes' default terminationMessagePath: rank 0 writes the run's outcome there."""


def checkpoint_dir(step: int) -> str:
    """Directory of the checkpoint taken after `step` optimiser steps, under CHECKPOINTS."""
    return f"step-{step:08d}"


__all__ = ["CHECKPOINTS", "LATEST", "TERMINATION_LOG", "checkpoint_dir"]
