"""Parameter assignments of a sweep: grid (cartesian) and seeded random search.

Assignment `i` depends only on (parameters, algorithm, seed, i), never on which trials
exist, so trial names and values are reproducible and raising maxTrials only appends.
"""

from __future__ import annotations

import math
import random
from typing import Any

from saeops.api import SAESweepSpec, SweepParameter

Assignment = dict[str, Any]


def _grid_values(p: SweepParameter) -> list[Any]:
    if p.categorical is not None:
        return list(p.categorical)
    rng = p.uniform or p.log_uniform
    assert rng is not None  # the model guarantees exactly one
    steps = rng.steps or 2
    if steps == 1:
        values = [rng.min]
    elif p.uniform is not None:
        values = [rng.min + (rng.max - rng.min) * i / (steps - 1) for i in range(steps)]
    else:
        lo, hi = math.log(rng.min), math.log(rng.max)
        values = [math.exp(lo + (hi - lo) * i / (steps - 1)) for i in range(steps)]
    if p.integer:
        values = list(dict.fromkeys(round(v) for v in values))
    else:
        values = [float(f"{v:.6g}") for v in values]
    return values


def space_size(spec: SAESweepSpec) -> int | None:
    """Number of distinct grid points (None for random search: unbounded)."""
    if spec.search_algorithm.type != "grid":
        return None
    return math.prod(len(_grid_values(p)) for p in spec.parameters)


def grid_missing_steps(spec: SAESweepSpec) -> list[str]:
    """Names of ranges that grid search cannot enumerate (no `steps`)."""
    if spec.search_algorithm.type != "grid":
        return []
    return [p.name for p in spec.parameters if (p.uniform or p.log_uniform) is not None and (p.uniform or p.log_uniform).steps is None]


def _sample(p: SweepParameter, rnd: random.Random) -> Any:
    if p.categorical is not None:
        return p.categorical[rnd.randrange(len(p.categorical))]
    if p.uniform is not None:
        v = rnd.uniform(p.uniform.min, p.uniform.max)
    else:
        assert p.log_uniform is not None
        v = math.exp(rnd.uniform(math.log(p.log_uniform.min), math.log(p.log_uniform.max)))
    return round(v) if p.integer else float(f"{v:.6g}")


def assignment(spec: SAESweepSpec, index: int) -> Assignment:
    """Parameter values of trial `index` (dotted path -> value)."""
    if spec.search_algorithm.type == "grid":
        axes = [_grid_values(p) for p in spec.parameters]
        # Row-major: the last parameter varies fastest (like itertools.product).
        values = []
        rest = index
        for axis in reversed(axes):
            values.append(axis[rest % len(axis)])
            rest //= len(axis)
        values.reverse()
        return {p.name: v for p, v in zip(spec.parameters, values, strict=True)}
    rnd = random.Random(f"{spec.search_algorithm.seed}:{index}")
    return {p.name: _sample(p, rnd) for p in spec.parameters}

