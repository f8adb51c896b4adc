"""Fault injection for the distributed tests, driven by `SAEOPS_FAULT` (unset: nothing happens).

`SAEOPS_FAULT="<kind>@<point>:step=<n>[,rank=<r>]"`, several separated by `;`. Points:
`step` (after optimiser step n) and `checkpoint-written` (step n's state file is written, the
`latest` pointer not yet). Kinds:

- `raise`: raise RuntimeError (a crashing rank),
- `hang`: block forever (a stuck rank; the others must time out),
- `kill`: SIGKILL this process (kill -9), only in torchrun's first attempt so the restarted
  group gets past it,
- `exit`: `os._exit(1)` at once (a crash mid-checkpoint),
- `sigterm`: SIGTERM to this process; `sigterm-parent`: to the parent (under torchrun: the
  agent, as Kubernetes signals a pod's main process).
"""

from __future__ import annotations

import os
import signal
import threading


def _faults() -> list[tuple[str, str, dict[str, int]]]:
    spec = os.environ.get("SAEOPS_FAULT", "").strip()
    out = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        head, _, args = item.partition(":")
        kind, _, point = head.partition("@")
        params = {k: int(v) for k, v in (a.split("=") for a in args.split(",") if a)}
        out.append((kind, point, params))
    return out


def maybe_fail(point: str, step: int) -> None:
    """Fire the faults configured for `point` at `step` on this rank (see the module doc)."""
    if "SAEOPS_FAULT" not in os.environ:
        return
    rank = int(os.environ.get("RANK", "0"))
    for kind, where, params in _faults():
        if where != point or params.get("step") != step or params.get("rank", rank) != rank:
            continue
        if kind == "raise":
            raise RuntimeError(f"injected fault at {point} step {step} on rank {rank}")
        if kind == "hang":
            threading.Event().wait()
        if kind == "kill" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "exit":
            os._exit(1)
        if kind == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        if kind == "sigterm-parent":
            os.kill(os.getppid(), signal.SIGTERM)
