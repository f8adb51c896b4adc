"""metav1-style conditions: every type always present, transitions timestamped."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

RUN_CONDITIONS = ("Admitted", "Running", "Succeeded", "Failed", "Suspended")
CACHE_READY = "CacheReady"
GROUPED = "Grouped"
"""On a sweep's trial packed into a group: True while its group's Job trains it, False once it left."""
SWEEP_CONDITIONS = ("Running", "Succeeded", "Failed", "Suspended")
SPEC_FAILURES = frozenset({"InvalidSpec", "Forbidden", "Rejected", "NameConflict"})
"""Failed reasons about the resource as written: terminal for its generation, retried on the next."""


def rfc3339(t: datetime) -> str:
    """RFC 3339 in UTC with a Z, second precision (what Kubernetes writes)."""
    return t.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(value: Any) -> datetime | None:
    """Parse an RFC 3339 timestamp; None for anything unparseable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


class Conditions:
    """A mutable view over a status' conditions list (copied in, written back by `as_list`)."""

    def __init__(self, existing: Any, types: tuple[str, ...], now: datetime, generation: int | None) -> None:
        self._now = rfc3339(now)
        self._gen = generation
        self._by_type: dict[str, dict[str, Any]] = {}
        if isinstance(existing, list):
            for c in existing:
                if isinstance(c, dict) and isinstance(c.get("type"), str):
                    self._by_type[c["type"]] = dict(c)
        for t in types:
            if t not in self._by_type:
                self._by_type[t] = self._make(t, "Unknown", "Initializing", "")

    def _make(self, type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
        cond: dict[str, Any] = {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message[:4096],
            "lastTransitionTime": self._now,
        }
        if self._gen is not None:
            cond["observedGeneration"] = self._gen
        return cond

    def set(self, type_: str, status: str, reason: str, message: str = "") -> bool:
        """Set a condition; True when status or reason changed (worth an Event).

        lastTransitionTime moves only when `status` changes, as metav1 prescribes.
        """
        old = self._by_type.get(type_)
        new = self._make(type_, status, reason, message)
        if old is not None and old.get("status") == status:
            new["lastTransitionTime"] = old.get("lastTransitionTime", self._now)
        self._by_type[type_] = new
        return old is None or old.get("status") != status or old.get("reason") != reason

    def get(self, type_: str) -> dict[str, Any] | None:
        """The condition of that type, if any."""
        return self._by_type.get(type_)

    def is_true(self, type_: str) -> bool:
        """Whether the condition is True."""
        c = self._by_type.get(type_)
        return c is not None and c.get("status") == "True"

    def as_list(self) -> list[dict[str, Any]]:
        """Conditions in a stable order (known types first)."""
        return sorted(self._by_type.values(), key=lambda c: c["type"])
