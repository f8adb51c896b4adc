"""Dispatch a resource to its local executor and report what happened: on stdout, and in a pod
also as the container's termination message (what the operator reads when the pod ends)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from saeops.api import ActivationCache, AnyResource, SAESweep, SAETrainingRun, SpecError, layout

log = logging.getLogger("saeops.run")

TERMINATION_LOG_ENV = "SAEOPS_TERMINATION_LOG"
MAX_TERMINATION_MESSAGE = 4096
"""Kubernetes keeps at most 4096 bytes of a termination message."""


def termination_log() -> Path | None:
    """Where the outcome goes: `$SAEOPS_TERMINATION_LOG`, else Kubernetes' default path when it
    exists and is writable (the kubelet creates it in every container), else nowhere."""
    named = os.environ.get(TERMINATION_LOG_ENV)
    if named:
        return Path(named)
    path = Path(layout.TERMINATION_LOG)
    return path if path.is_file() and os.access(path, os.W_OK) else None


def write_termination_message(message: str | dict[str, Any]) -> None:
    """Replace the termination message: a JSON object (compact) or one plain line, capped at
    what Kubernetes keeps. Never raises: a lost message must not turn success into failure."""
    path = termination_log()
    if path is None:
        return
    text = json.dumps(message, separators=(",", ":")) if isinstance(message, dict) else message
    data = text.encode()[:MAX_TERMINATION_MESSAGE]
    try:
        path.write_bytes(data)
    except OSError as e:
        log.warning("could not write the termination message to %s: %s", path, e)


def _global_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _local_rank0() -> bool:
    return os.environ.get("LOCAL_RANK", "0") == "0"


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
            if _local_rank0():  # one message per pod
                write_termination_message({"preempted": True, "step": e.step})
            return EXIT_PREEMPTED
        if _global_rank0():
            print(format_final(result.final, result.output_uri), file=sys.stdout)
            write_termination_message({"final": _final_summary(result.final),
                                       "lastCheckpoint": last_checkpoint(res)})
        return 0
    if isinstance(res, ActivationCache):
        from saeops.runtime.cache.generate import generate_cache

        summary: Any = generate_cache(res, progress=progress)
        print(summary)
        if _global_rank0():
            write_termination_message({"cache": cache_summary(res)})
        return 0
    if isinstance(res, SAESweep):
        from saeops.runtime.sweep_local import run_sweep

        return run_sweep(res, progress=progress)
    raise SpecError(f"kind {res.kind} cannot be run")


FINAL_KEYS = ("l0", "explained_variance", "mse", "dead_fraction", "dense_fraction", "tokens", "seconds")


def _final_summary(final: dict[str, float]) -> dict[str, float]:
    """The final metrics the termination message carries (the contract's keys, those present)."""
    return {k: float(final[k]) for k in FINAL_KEYS if k in final}


def last_checkpoint(res: SAETrainingRun) -> str | None:
    """URI of the checkpoint `checkpoints/latest.json` points at, if any."""
    from saeops.runtime.runner import open_output

    try:
        checkpoints = open_output(res.spec.output).child(layout.CHECKPOINTS)
        key = checkpoints.get_json(layout.LATEST).get("key")
    except Exception as e:  # the run succeeded; a missing pointer only leaves the field empty
        log.warning("no checkpoint pointer: %s", e)
        return None
    return checkpoints.url(key) if isinstance(key, str) else None


def cache_summary(res: ActivationCache) -> dict[str, Any]:
    """Tokens, shards (per hook point) and URI of a finished cache, from its manifest."""
    from saeops.runtime.cache import load_manifest
    from saeops.runtime.runner import open_output

    storage = open_output(res.spec.output)
    manifest = load_manifest(storage)
    shards = manifest.get("shards") or {}
    return {"tokens": int(manifest["total_tokens"]),
            "shards": max((len(v) for v in shards.values()), default=0), "uri": storage.uri}
