"""Best trial and a bounded Pareto front over (objective, paretoMetric)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

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


@dataclass(frozen=True)
class Scored(Generic[T]):
    """A finished trial's objective (`value`) and Pareto metric (`pareto`, minimised; None when
    the sweep has none or the trial did not report it)."""

    name: str
    value: float
    pareto: float | None
    item: T


def best_and_front(scored: list[Scored[T]], goal: str) -> tuple[Scored[T] | None, list[Scored[T]]]:
    """The best trial (ties: the greater name, so the answer never depends on list order) and
    the Pareto front of (objective towards `goal`, paretoMetric minimised)."""
    sign = 1.0 if goal == "maximize" else -1.0
    best = max(scored, key=lambda s: (sign * s.value, s.name), default=None)
    pts = [(sign * s.value, s.pareto, s) for s in scored if s.pareto is not None]
    return best, [p[2] for p in front(pts)]


def reached(value: float, target: float, goal: str) -> bool:
    """Whether an objective value meets the sweep's target."""
    return value >= target if goal == "maximize" else value <= target
