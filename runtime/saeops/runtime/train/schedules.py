"""Schedules of the learning rate, the TopK k and the sparsity coefficient (pure functions of the step)."""

from __future__ import annotations

import math

from saeops.api import DictionarySpec, TrainerSpec, resolve_steps


def lr_factor(step: int, trainer: TrainerSpec) -> float:
    """Multiplier of the peak lr at `step`: linear warm-up, then constant, or a cosine/linear
    decay over the last `lr_cool_down_steps` down to `lr_end_ratio`."""
    total = trainer.total_steps
    warm = resolve_steps(trainer.lr_warm_up_steps, total)
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if trainer.lr_scheduler == "constant":
        return 1.0
    cool = max(1, resolve_steps(trainer.lr_cool_down_steps, total))
    start = max(warm, total - cool)
    if step < start:
        return 1.0
    frac = min(1.0, (step - start) / max(1, total - start))
    end = trainer.lr_end_ratio
    if trainer.lr_scheduler == "cosine":
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * frac))
    return 1.0 - (1.0 - end) * frac


def k_at(step: int, sae: DictionarySpec, trainer: TrainerSpec) -> int:
    """k of the TopK family at `step`: held at initial_k for the cold-boot steps, then decayed to
    top_k over the warm-up steps, linearly or exponentially (curvature k_exponential_factor)."""
    target = sae.top_k
    start_k = trainer.initial_k
    if start_k is None or start_k <= target:
        return target
    total = trainer.total_steps
    cold = resolve_steps(trainer.k_cold_booting_steps, total)
    warm = resolve_steps(trainer.k_warmup_steps, total)
    if step < cold:
        return start_k
    if warm <= 0 or step >= cold + warm:
        return target
    frac = (step - cold) / warm
    if trainer.k_schedule_type == "linear":
        value = start_k + (target - start_k) * frac
    else:
        a = trainer.k_exponential_factor
        # Normalised exponential decay from 1 to 0 over frac in [0, 1].
        decay = (math.exp(-a * frac) - math.exp(-a)) / (1.0 - math.exp(-a))
        value = target + (start_k - target) * decay
    return max(target, round(value))


def l1_coefficient_at(step: int, trainer: TrainerSpec) -> float:
    """Sparsity coefficient at `step`, warmed up linearly from 0."""
    warm = resolve_steps(trainer.l1_coefficient_warmup_steps, trainer.total_steps)
    if warm <= 0 or step >= warm:
        return trainer.l1_coefficient
    return trainer.l1_coefficient * (step + 1) / warm
