"""The real operator process against kmock's KubernetesEmulator (see emulator.py for how the
emulator differs from a real API server), one scenario per operator (see scenarios.py).

The scenarios run once per session (`scenarios.run_all`): each test here reports one of them,
and tests/deploy/test_rbac.py derives the operator's RBAC verbs from the same runs.
"""

from __future__ import annotations

import pytest

from . import scenarios


@pytest.mark.parametrize("name", [s.__name__ for s in scenarios.ALL])
def test_scenario(name: str) -> None:
    outcome = scenarios.run_all()[name]
    if outcome.error is not None:
        raise outcome.error
    assert outcome.calls, "the operator made no API calls"
