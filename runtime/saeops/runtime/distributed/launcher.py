"""`saeops run` with `parallelism.data * parallelism.tensor > 1`: start torchrun on this machine.

The already-overridden manifest (--set, --output applied) goes to a temporary JSON file that
every worker reads through `saeops-runtime --spec`. SIGTERM/SIGINT are forwarded to torchrun,
which forwards them to the workers; those checkpoint and stop. torchrun's own exit status
cannot say "preempted", so the preemption marker rank 0 leaves in the checkpoint folder
decides between `EXIT_PREEMPTED` and a failure.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

from saeops.api import SAETrainingRun
from saeops.runtime.distributed.preemption import EXIT_PREEMPTED, PREEMPTED_MARKER

log = logging.getLogger("saeops.distributed")


def torchrun_command(spec_path: str, procs: int, max_restarts: int, *, progress: bool = True) -> list[str]:
    """The single-node torchrun command line (a free rendezvous port via --standalone)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
           f"--max-restarts={max_restarts}", "-m", "saeops.runtime.entrypoint", "--spec", spec_path]
    return cmd if progress else [*cmd, "--no-progress"]


def _preempted(res: SAETrainingRun) -> bool:
    from saeops.runtime.runner import open_output

    try:
        return open_output(res.spec.output).child("checkpoints").exists(PREEMPTED_MARKER)
    except Exception:  # an unreadable output just means "not known to be preempted"
        return False


def launch_torchrun(res: SAETrainingRun, procs: int, *, progress: bool = True,
                    metrics_port: int | None = None) -> int:
    """Run `res` under torchrun with `procs` workers; returns the exit status to report."""
    env = dict(os.environ)
    if metrics_port is not None:
        env["SAEOPS_METRICS_PORT"] = str(metrics_port)
    with tempfile.TemporaryDirectory(prefix="saeops-launch-") as tmp:
        spec_path = str(Path(tmp) / "spec.json")
        Path(spec_path).write_text(json.dumps(res.to_manifest()))
        cmd = torchrun_command(spec_path, procs, res.spec.failure_policy.max_restarts, progress=progress)
        log.info("launching %s", " ".join(cmd))
        proc = subprocess.Popen(cmd, env=env)

        def forward(signum: int, frame: FrameType | None) -> None:
            proc.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            rc = proc.wait()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
    if rc != 0 and _preempted(res):
        return EXIT_PREEMPTED
    return rc
