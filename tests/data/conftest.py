import json

import pytest

from saeops.api.common import DatasetSpec, ModelSpec, NativeModelSpec
from saeops.runtime.lm import load_language_model
from tests.threads import one_thread  # noqa: F401 (autouse fixture: one intra-op thread)

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega"]


def make_docs(n: int = 40) -> list[str]:
    # Deterministic, varied documents of 20-120 characters.
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + (i % 15))) for i in range(n)]




@pytest.fixture(scope="session")
def tiny():
    spec = ModelSpec(name="tiny", native=NativeModelSpec(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32,
                                                         d_vocab=300, n_ctx=64), tokenizer="bytes", batch_size=4)
    return load_language_model(spec, device="cpu")


@pytest.fixture(scope="session")
def docs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(make_docs())))
    return path


@pytest.fixture
def ds_spec(docs_file):
    return DatasetSpec(path=str(docs_file), context_size=32)
