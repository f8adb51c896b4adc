"""The trainer on synthetic activations with known sparse features (no language model)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from saeops.api import DictionarySpec, InitializerSpec, TrainerSpec
from saeops.runtime.models import Initializer, build_dictionary
from saeops.runtime.train.trainer import Trainer


def synthetic_batches(d: int, n_feat: int, active: int, batch: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Activations that are sparse non-negative combinations of `n_feat` unit directions."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(n_feat, d, generator=g), dim=-1)
    while True:
        idx = torch.rand(batch, n_feat, generator=g).argsort(-1)[:, :active]
        codes = torch.zeros(batch, n_feat).scatter_(1, idx, torch.rand(batch, active, generator=g) + 0.5)
        yield {"h": codes @ feats, "features": feats}


def train(seed: int = 0, steps: int = 400, act_fn: str = "topk") -> tuple[torch.nn.Module, dict[str, float], Trainer]:
    torch.manual_seed(seed)
    sae = DictionarySpec(hook_point_in="h", act_fn=act_fn, top_k=4, d_sae=128)
    tr = TrainerSpec(total_training_tokens=steps * 256, batch_size=256, lr=3e-3, log_frequency=50,
                     progress_bar=False, seed=seed)
    model = build_dictionary(sae, 32, 32)
    stream = synthetic_batches(32, 64, 3, 256, seed=123)
    Initializer(InitializerSpec(bias_init_method="geometric_median", grid_search_init_norm=True)).initialize(
        model, next(stream)["h"], None
    )
    trainer = Trainer(model, tr)
    final = trainer.fit(stream)
    return model, final, trainer


def test_topk_trainer_recovers_features_and_reports_metrics() -> None:
    model, final, trainer = train()
    assert final["l0"] == 4.0  # TopK: exactly k active latents per token
    assert final["explained_variance"] > 0.9
    assert 0.0 <= final["dead_fraction"] <= 1.0
    assert trainer.state.step == 400 and final["tokens"] == 400 * 256
    assert len(trainer.state.history) == 8  # every 50 steps
    feats = next(synthetic_batches(32, 64, 3, 8, seed=123))["features"]
    dec = torch.nn.functional.normalize(model.W_dec.detach(), dim=-1)
    assert (feats @ dec.T).max(-1).values.mean() > 0.9


def test_same_seed_gives_identical_weights() -> None:
    a, _, _ = train(seed=7, steps=30)
    b, _, _ = train(seed=7, steps=30)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), na
    c, _, _ = train(seed=8, steps=30)
    assert not torch.equal(a.W_dec, c.W_dec)


def test_relu_with_l1_penalty_trains_and_reports_sparsity_loss() -> None:
    _, final, _ = train(steps=60, act_fn="relu")
    assert "loss_sparsity" in final and final["loss_sparsity"] > 0
    assert final["explained_variance"] > 0.5
