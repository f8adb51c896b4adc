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
from saeops.runtime.errors import bad_input_types

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
        from saeops.api.groups import expand_run
        from saeops.runtime.distributed.preemption import EXIT_PREEMPTED, Preempted
        from saeops.runtime.train.job import TrainingJob

        if len(members := expand_run(res)) > 1:  # one dictionary per hook point: a group
            return run_group(members, progress=progress, metrics_port=metrics_port, label=res.metadata.name)
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


def run_group(runs: list[SAETrainingRun], *, progress: bool = True, metrics_port: int | None = None,
               label: str | None = None) -> int:
    """Train runs that share one activation stream together (a sweep's group in a pod, or one
    run's dictionaries). Exit 0 when every member ended, trained or failed alone (its entry in
    the termination message says why); 1 when the group failed (every member, or the stream)."""
    from saeops.runtime.distributed.preemption import EXIT_PREEMPTED, Preempted
    from saeops.runtime.errors import error_line
    from saeops.runtime.train.group import GroupFailed, GroupJob

    job = GroupJob(runs, progress=progress, metrics_port=metrics_port, label=label, alone_raises=False)
    try:
        members = job.run_group()
    except Preempted as e:
        log.warning("%s; exiting with %d (every member resumes from its checkpoint)", e, EXIT_PREEMPTED)
        if _local_rank0():
            write_termination_message({"preempted": True, "step": e.step})
        return EXIT_PREEMPTED
    except GroupFailed as e:
        if _global_rank0():
            print(str(e), file=sys.stderr)
            write_termination_message(group_message({m.key: {"error": m.error or "error: failed"}
                                                     for m in e.members}))
        return 1
    except bad_input_types() as e:  # the input is wrong (exit 2, one line)
        if isinstance(e, SpecError):
            raise
        raise SpecError(str(e).splitlines()[0]) from None
    except Exception as e:  # the stream or the process group broke: every member stops here
        log.exception("the group failed")
        if _global_rank0():
            line = error_line(e)
            print(line, file=sys.stderr)
            write_termination_message(group_message({m.key: {"error": m.error or line} for m in job.members})
                                      if job.members else line)
        return 1
    entries: dict[str, dict[str, Any]] = {}
    for key, m in members.items():
        if m.result is not None:
            entries[key] = {"final": _final_summary(m.result.final), "lastCheckpoint": last_checkpoint(m.run)}
            if _global_rank0():
                print(f"{key}:\n{format_final(m.result.final, m.result.output_uri)}", file=sys.stdout)
        else:
            entries[key] = {"error": m.error or "error: no result"}
            if _global_rank0():
                print(f"{key}: FAILED {m.error}", file=sys.stdout)
    if _global_rank0():
        message = group_message(entries)
        finals = [e["final"] for e in entries.values() if "final" in e]
        if label is not None and finals:
            # One run's dictionaries (perHookPoint): its status shows their mean; each is in members.
            mean = {k: _round(sum(f[k] for f in finals) / len(finals)) for k in finals[0]}
            message = {"final": mean, **message}
            if len(json.dumps(message, separators=(",", ":")).encode()) > MAX_TERMINATION_MESSAGE:
                # Many layers: the mean and the failed ones fit; each has its metrics.json.
                message = {"final": mean, "failed": [k for k, e in entries.items() if "error" in e][:16]}
        write_termination_message(message)
    return 0


def _round(v: float) -> float:
    return float(f"{v:.6g}")


def group_message(entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`{"members": {name: {"final", "lastCheckpoint"} | {"error"}}}` within the 4096 bytes
    Kubernetes keeps: floats to 6 significant digits; when still too long, long error lines are
    shortened, then checkpoint URIs left out (the operator knows each member's output), then
    errors cut short. Never cut mid-JSON."""
    members = {k: {**e, **({"final": {n: _round(v) for n, v in e["final"].items()}} if "final" in e else {})}
               for k, e in entries.items()}

    def fits() -> bool:
        return len(json.dumps({"members": members}, separators=(",", ":")).encode()) <= MAX_TERMINATION_MESSAGE

    for step in ("errors-200", "checkpoints", "errors-60", "errors-20"):
        if fits():
            break
        for e in members.values():
            if step.startswith("errors") and "error" in e:
                cap = int(step.split("-")[1])
                e["error"] = e["error"] if len(e["error"]) <= cap else e["error"][:cap - 3] + "..."
            if step == "checkpoints" and "lastCheckpoint" in e:
                e["lastCheckpoint"] = None
    return {"members": members}


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
