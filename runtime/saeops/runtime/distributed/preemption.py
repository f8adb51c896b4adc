"""SIGTERM handling: Kubernetes sends SIGTERM before killing a pod (preemption, eviction,
node drain). The handler only sets a flag; the training loop checks it at the next step
boundary (agreed across ranks), writes a checkpoint and raises `Preempted`."""

from __future__ import annotations

import signal
import threading
from types import FrameType

EXIT_PREEMPTED = 143
"""Exit status after a SIGTERM-triggered checkpoint (128 + SIGTERM, the conventional status of
a process stopped by SIGTERM; the operator treats it as preemption, not failure)."""

PREEMPTED_MARKER = "preempted.json"
"""Written by rank 0 under the checkpoint prefix when the run stopped on SIGTERM; the local
launcher reads it to tell preemption from failure (torchrun's own status cannot)."""


class Preempted(Exception):
    """The run stopped on SIGTERM after checkpointing at `step`."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped on SIGTERM after checkpointing step {step}")
        self.step = step


class StopFlag:
    """Set by SIGTERM (or by hand); installing it needs the main thread."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous: object = None
        self._installed = False

    def install(self) -> StopFlag:
        """Route SIGTERM to this flag (no-op outside the main thread, e.g. in test threads)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._event.set()

    def set(self) -> None:
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Block until set or `timeout` seconds pass; True when set."""
        return self._event.wait(timeout)

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)  # type: ignore[arg-type]
            self._installed = False
