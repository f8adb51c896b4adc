"""Shared helpers for the dictionary tests: tiny specs and seeded data."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from saeops.api.training import DictionarySpec, TrainerSpec


def make_spec(**overrides: Any) -> DictionarySpec:
    """A small SAE spec; keyword overrides use the python (snake_case) names."""
    base: dict[str, Any] = {"hook_point_in": "blocks.0.hook_resid_post", "expansion_factor": 4, "top_k": 4}
    base.update(overrides)
    return DictionarySpec(**base)


def trainer_spec(**overrides: Any) -> TrainerSpec:
    """A trainer spec whose loss settings `compute_loss` reads (`LossContext(trainer_spec(), ...)`)."""
    return TrainerSpec(**{"total_training_tokens": 10_000, "batch_size": 100, **overrides})


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def to_float64(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy for gradcheck (specs only allow training dtypes; `dtype` is the cast target)."""
    model = model.double()
    model.dtype = torch.float64  # type: ignore[assignment]
    return model
