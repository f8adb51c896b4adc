"""The k, lr and sparsity-coefficient schedules."""

from __future__ import annotations

import itertools
import math

from saeops.api import DictionarySpec, TrainerSpec
from saeops.runtime.train.schedules import k_at, l1_coefficient_at, lr_factor


def trainer(**kw) -> TrainerSpec:
    return TrainerSpec(total_training_tokens=100 * 10, batch_size=10, **kw)  # 100 steps


def sae(**kw) -> DictionarySpec:
    return DictionarySpec(hook_point_in="h", act_fn="topk", top_k=10, **kw)


def test_k_constant_without_initial_k() -> None:
    assert all(k_at(s, sae(), trainer()) == 10 for s in range(100))


def test_k_linear_with_cold_boot() -> None:
    t = trainer(initial_k=50, k_cold_booting_steps=10, k_warmup_steps=40)
    ks = [k_at(s, sae(), t) for s in range(100)]
    assert ks[:10] == [50] * 10  # held during cold boot
    assert ks[10] == 50 and ks[30] == 30  # halfway down after 20 of 40 warm-up steps
    assert ks[50:] == [10] * 50
    assert all(a >= b for a, b in itertools.pairwise(ks))  # never increases


def test_k_exponential_fraction_steps() -> None:
    t = trainer(initial_k=110, k_warmup_steps=0.5, k_schedule_type="exponential", k_exponential_factor=3.0)
    ks = [k_at(s, sae(), t) for s in range(100)]
    assert ks[0] == 110 and ks[50] == 10
    # Exponential decays faster early than linear: at 25% of warm-up it is below the linear value.
    expected = 10 + 100 * (math.exp(-3 * 0.5) - math.exp(-3)) / (1 - math.exp(-3))
    assert ks[25] == round(expected) < 10 + 100 * 0.5


def test_l1_warmup_fraction_and_int() -> None:
    t = trainer(l1_coefficient=1.0, l1_coefficient_warmup_steps=0.1)
    assert l1_coefficient_at(0, t) == 0.1 and l1_coefficient_at(4, t) == 0.5 and l1_coefficient_at(10, t) == 1.0
    t = trainer(l1_coefficient=2.0, l1_coefficient_warmup_steps=4)
    assert [l1_coefficient_at(s, t) for s in range(5)] == [0.5, 1.0, 1.5, 2.0, 2.0]
    assert l1_coefficient_at(0, trainer(l1_coefficient=3.0, l1_coefficient_warmup_steps=0)) == 3.0


def test_lr_warmup_and_cosine_decay() -> None:
    t = trainer(lr_warm_up_steps=10, lr_scheduler="cosine", lr_cool_down_steps=20, lr_end_ratio=0.1)
    f = [lr_factor(s, t) for s in range(100)]
    assert f[0] == 0.1 and f[9] == 1.0
    assert f[10:80] == [1.0] * 70
    assert abs(f[90] - (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))) < 1e-12
    assert f[99] < 0.12


def test_lr_constant() -> None:
    assert {lr_factor(s, trainer()) for s in range(100)} == {1.0}
