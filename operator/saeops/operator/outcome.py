"""A run's outcome from its pods' termination messages (what rank 0 wrote to
`layout.TERMINATION_LOG`, or the tail of its log when it died first).

The operator reads no object storage: final metrics, the last checkpoint and the one-line
error of a failed run all come from here. Contract with the runtime (rank 0 writes one of):

- a finished run: `{"final": {l0, explained_variance, ...}, "lastCheckpoint": URI | null}`;
- a finished cache: `{"cache": {...}}`;
- a preempted pod: `{"preempted": true, "step": N}`;
- a failure: the plain `error: ...` line;
- a sweep group (several trials trained from one stream): `{"members": {"<trial>": {"final": {...},
  "lastCheckpoint": URI | null} | {"error": "error: ..."}, ...}}`, on success and on failure
  alike (an optional top-level `"error"` says why the group itself failed).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
MAX_LINE = 512
"""Longest error line copied into a condition message (Kubernetes keeps 4 KiB of a message)."""
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_MEMBERS = 64


@dataclass(frozen=True)
class Outcome:
    """What one pod reported when it ended."""

    final: Obj | None = None
    cache: Obj | None = None
    last_checkpoint: str | None = None
    preempted_step: int | None = None
    error: str | None = None
    members: dict[str, Outcome] | None = None
    """A group's pod: each member trial's own outcome (final metrics, or its error line)."""


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def completion_index(pod: Obj) -> int | None:
    """The pod's Job completion index (its node rank), from the annotation the Job controller sets."""
    meta = _dict(pod.get("metadata"))
    raw = _dict(meta.get("annotations")).get("batch.kubernetes.io/job-completion-index")
    if raw is None:
        raw = _dict(meta.get("labels")).get("batch.kubernetes.io/job-completion-index")
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def termination_message(pod: Obj) -> str | None:
    """The termination message of the pod's (first) container, current or last state."""
    for status in _dict(pod.get("status")).get("containerStatuses") or []:
        for state in ("state", "lastState"):
            message = _dict(_dict(_dict(status).get(state)).get("terminated")).get("message")
            if isinstance(message, str) and message.strip():
                return message
    return None


def one_line(text: str) -> str:
    """The line that says what went wrong: the last `error:` line, else the last non-empty one
    (a traceback ends with the exception), control characters removed, cut at MAX_LINE."""
    lines = [_CONTROL.sub("", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:")]
    line = (errors or lines)[-1]
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


def _numbers(raw: Any, limit: int = 16) -> Obj:
    """Finite numbers under short snake_case keys, at most `limit` of them (a pod cannot grow
    the status with what it writes)."""
    out: Obj = {}
    for key, value in _dict(raw).items():
        if len(out) >= limit:
            break
        if not isinstance(key, str) or not _KEY.match(key) or isinstance(value, bool):
            continue
        if isinstance(value, int | float) and math.isfinite(value):
            out[key] = value
    return out


def _finished(doc: Obj) -> Outcome:
    ckpt = doc.get("lastCheckpoint")
    return Outcome(
        final=_numbers(doc["final"]) if isinstance(doc.get("final"), dict) else None,
        cache=_numbers(doc["cache"]) if isinstance(doc.get("cache"), dict) else None,
        last_checkpoint=ckpt if isinstance(ckpt, str) and ckpt else None,
    )


def _members(raw: Obj) -> dict[str, Outcome]:
    """Each member's entry (at most MAX_MEMBERS; anything unreadable is left out)."""
    out: dict[str, Outcome] = {}
    for name, entry in raw.items():
        if len(out) >= MAX_MEMBERS:
            break
        if not isinstance(name, str) or not isinstance(entry, dict):
            continue
        if isinstance(entry.get("error"), str):
            out[name] = Outcome(error=one_line(entry["error"]) or "error: failed")
        elif isinstance(entry.get("final"), dict):
            out[name] = _finished(entry)
    return out


def parse(message: str | None) -> Outcome | None:
    """Parse a termination message (None when there is none)."""
    if not message or not message.strip():
        return None
    text = message.strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            if doc.get("preempted") is True:
                step = doc.get("step")
                ok = isinstance(step, int) and not isinstance(step, bool) and step >= 0
                return Outcome(preempted_step=step if ok else None)
            if isinstance(doc.get("final"), dict) or isinstance(doc.get("cache"), dict):
                return _finished(doc)
            if isinstance(doc.get("members"), dict):
                error = doc.get("error")
                return Outcome(members=_members(doc["members"]),
                               error=(one_line(error) or None) if isinstance(error, str) else None)
    return Outcome(error=one_line(text) or None)


def _by_index(pods: tuple[Obj, ...]) -> list[Obj]:
    return sorted(pods, key=lambda p: (completion_index(p) if completion_index(p) is not None else 1 << 30,
                                       str(_dict(p.get("metadata")).get("creationTimestamp") or "")))


def success(pods: tuple[Obj, ...]) -> Outcome | None:
    """What the succeeded rank-0 pod reported (final metrics or the cache summary)."""
    for pod in _by_index(pods):
        if completion_index(pod) == 0 and _dict(pod.get("status")).get("phase") == "Succeeded":
            out = parse(termination_message(pod))
            if out is not None and (out.final is not None or out.cache is not None):
                return out
    return None


def failure_line(pods: tuple[Obj, ...]) -> str | None:
    """The one-line reason of a failed run: from the failed pods (rank 0 first), or None."""
    preempted = None
    for pod in _by_index(pods):
        if _dict(pod.get("status")).get("phase") != "Failed":
            continue
        out = parse(termination_message(pod))
        if out is None:
            continue
        if out.error:
            return out.error
        if out.preempted_step is not None and preempted is None:
            preempted = f"preempted at step {out.preempted_step}"
    return preempted


def group_report(pods: tuple[Obj, ...]) -> Outcome | None:
    """What a group's rank-0 pod reported when it ended, when it is the members' report (the
    latest such pod: the Job may have replaced earlier ones)."""
    for pod in reversed(_by_index(pods)):
        if completion_index(pod) != 0 or _dict(pod.get("status")).get("phase") not in ("Succeeded", "Failed"):
            continue
        out = parse(termination_message(pod))
        return out if out is not None and out.members is not None else None
    return None
