"""Dispatch a resource to its local executor and print what happened."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from saeops.api import ActivationCache, AnyResource, SAESweep, SAETrainingRun, SpecError

log = logging.getLogger("saeops.run")


def format_final(final: dict[str, float], where: str) -> str:
    """The table `saeops run` prints at the end of a training run."""
    rows = [
        ("L0", f"{final['l0']:.2f}"),
        ("explained variance", f"{final['explained_variance']:.4f}"),
        ("MSE", f"{final['mse']:.6f}"),
        ("dead latents", f"{100 * final['dead_fraction']:.2f} %"),
        ("dense latents", f"{100 * final.get('dense_fraction', 0.0):.2f} %"),
        ("tokens", f"{int(final['tokens']):,}"),
        ("time", f"{final['seconds']:.1f} s ({final['tokens'] / max(final['seconds'], 1e-9):,.0f} tokens/s)"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(["final metrics:", *lines, f"artifacts: {where}"])


def bad_input_types() -> tuple[type[BaseException], ...]:
    """Errors that mean the user's input is wrong (exit 2, one line), gathered lazily."""
    types: list[type[BaseException]] = [SpecError]
    for mod, names in (
        ("saeops.runtime.storage", ("StorageError",)),
        ("saeops.runtime.lm", ("UnknownHookPointError",)),
        ("saeops.runtime.data", ("DatasetError",)),
        ("saeops.runtime.cache", ("CacheError", "IncompleteCacheError", "CacheMismatchError",
                                  "CacheCorruptError")),
    ):
        try:
            module = __import__(mod, fromlist=list(names))
        except ImportError:
            continue
        types.extend(getattr(module, n) for n in names if hasattr(module, n))
    return tuple(types)


def run_resource(res: AnyResource, *, progress: bool = True, metrics_port: int | None = None,
                 in_worker: bool = False) -> int:
    """Run a resource here. `in_worker`: already inside torchrun (never launch another)."""
    try:
        return _run(res, progress=progress, metrics_port=metrics_port, in_worker=in_worker)
    except bad_input_types() as e:
        if isinstance(e, SpecError):
            raise
        raise SpecError(str(e).splitlines()[0]) from None


def _run(res: AnyResource, *, progress: bool, metrics_port: int | None, in_worker: bool) -> int:
    if isinstance(res, SAETrainingRun):
        procs = res.spec.parallelism.data * res.spec.parallelism.tensor
        if procs > 1 and not in_worker:
            from saeops.runtime.distributed.launcher import launch_torchrun

            return launch_torchrun(res, procs, progress=progress, metrics_port=metrics_port)
        from saeops.runtime.distributed.preemption import EXIT_PREEMPTED, Preempted
        from saeops.runtime.train.job import TrainingJob

        try:
            result = TrainingJob(res, progress=progress, metrics_port=metrics_port).run_job()
        except Preempted as e:
            log.warning("%s; exiting with %d (resumes from the checkpoint)", e, EXIT_PREEMPTED)
            return EXIT_PREEMPTED
        if os.environ.get("RANK", "0") == "0":
            print(format_final(result.final, result.output_uri), file=sys.stdout)
        return 0
    if isinstance(res, ActivationCache):
        from saeops.runtime.cache.generate import generate_cache

        summary: Any = generate_cache(res, progress=progress)
        print(summary)
        return 0
    if isinstance(res, SAESweep):
        from saeops.runtime.sweep_local import run_sweep

        return run_sweep(res, progress=progress)
    raise SpecError(f"kind {res.kind} cannot be run")
