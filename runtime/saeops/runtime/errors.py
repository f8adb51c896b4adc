"""Errors as the user sees them: which ones mean bad input (exit 2), and the one line an error
becomes in a termination message, a group member's entry and the log."""

from __future__ import annotations

from saeops.api import SpecError


def error_line(e: BaseException) -> str:
    """One line for the termination message: bad input as is, anything else with its type."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, SpecError):
        return f"error: {text}"
    return f"error: {type(e).__name__}: {text}" if text else f"error: {type(e).__name__}"


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
