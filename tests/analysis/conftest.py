"""Small fixtures for the analysis tests: the native tiny model, a corpus, untrained dictionaries."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saeops.api.common import DatasetSpec, ModelSpec, NativeModelSpec
from saeops.api.training import DictionarySpec
from saeops.runtime.data import ActivationStream
from saeops.runtime.lm import load_language_model
from saeops.runtime.models import build_dictionary
from tests.runtime.conftest import write_corpus
from tests.threads import one_thread  # noqa: F401 (autouse fixture: one intra-op thread)

HOOK = "blocks.1.hook_resid_post"




@pytest.fixture(scope="session")
def tiny_lm():
    spec = ModelSpec(name="tiny", native=NativeModelSpec(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64,
                                                         d_vocab=300, n_ctx=64, seed=3),
                     tokenizer="bytes", batch_size=4)
    return load_language_model(spec, device="cpu")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", n_docs=60)


def make_sae(act_fn: str = "relu", d_sae: int = 48, seed: int = 0, **kw) -> torch.nn.Module:
    """An untrained SAE on HOOK; ReLU fires on about half the features, so every buffer fills."""
    torch.manual_seed(seed)
    extra = {"top_k": 4} if act_fn == "topk" else {}
    spec = DictionarySpec(type="sae", hook_point_in=HOOK, d_sae=d_sae, act_fn=act_fn, **extra, **kw)
    return build_dictionary(spec, 32).eval()


def window_stream(lm, corpus: Path, context: int = 24) -> ActivationStream:
    ds = DatasetSpec(path=str(corpus), context_size=context)
    return ActivationStream(lm, ds, [HOOK], batch_size=1, shuffle=False)
