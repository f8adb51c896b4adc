"""Fixtures shared across test packages."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest


@pytest.fixture
def forwards(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[str, ...]]:
    """Model forwards of live activation streams, counted by the hook points each one reads."""
    from saeops.runtime.data.stream import ActivationStream

    seen: Counter[tuple[str, ...]] = Counter()
    original = ActivationStream._rows

    def counted(self: ActivationStream, *args: Any, **kwargs: Any) -> Any:
        seen[tuple(self.hook_points)] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ActivationStream, "_rows", counted)
    return seen
