"""Best trial and a bounded Pareto front over (objective, paretoMetric)."""

from __future__ import annotations

import math
from typing import Any

MAX_PARETO = 32


def front(points: list[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """Non-dominated points, maximising the first value and minimising the second.

    O(n log n): sort by the second value, keep points that beat every earlier first value.
    """
    ordered = sorted(points, key=lambda p: (p[1], -p[0]))
    out: list[tuple[float, float, Any]] = []
    best = -math.inf
    for p in ordered:
        if p[0] > best:
            out.append(p)
            best = p[0]
    return out


def bounded(points: list[Any], limit: int = MAX_PARETO) -> list[Any]:
    """At most `limit` points, evenly spread and keeping both ends."""
    if len(points) <= limit:
        return points
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]
