"""Fixtures for models and data from the hub, S3 and local directories, all on loopback.

- `tiny_gpt2`: a randomly initialised 2-layer GPT-2 with a byte-level BPE tokenizer trained
  here (a real `transformers` model directory: config, safetensors, tokenizer.json);
- `corpus`: text documents as two jsonl shards (and a parquet copy);
- `hub`: the fake hub serving `org/tiny-gpt2` (public), `org/private-gpt2` (token `hf_good`),
  `org/gated-gpt2` (gated), datasets `org/docs` (jsonl) and `org/docs-parquet`;
- `hub_env`: HF_ENDPOINT at the hub, an empty cache, no token, online.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures_s3 import s3_bucket, s3_server  # noqa: F401 (pytest fixtures)
from tests.hub.fake_hub import FakeHub
from tests.threads import one_thread  # noqa: F401 (autouse fixture: one intra-op thread)

TOKEN = "hf_good"
WORDS = ["the", "river", "runs", "past", "the", "old", "mill", "where", "children", "count", "stones", "and",
         "the", "miller", "keeps", "a", "ledger", "of", "flour", "sacks", "grain", "prices", "weather", "notes",
         "and", "letters", "from", "a", "sister", "who", "sails", "north"]


def make_documents(n: int = 240) -> list[str]:
    """Deterministic documents of 8-60 words."""
    return [" ".join(WORDS[(i * 7 + j * 5 + j * j) % len(WORDS)] for j in range(8 + (i * 13) % 53))
            for i in range(n)]


def build_tiny_gpt2(out: Path) -> Path:
    """A 2-layer GPT-2 (d_model 32) with its own 300-token byte-level BPE tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(make_documents(), trainer)
    fast = GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>")
    fast.save_pretrained(out)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cfg = GPT2Config(vocab_size=len(fast), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                         bos_token_id=0, eos_token_id=0)
        GPT2LMHeadModel(cfg).save_pretrained(out)
    return out


def build_tiny_causal(out: Path, family: str, tokenizer_from: Path) -> Path:
    """A random 2-layer Llama or Gemma-2 (post-norms around attention and MLP) with the tokenizer
    of `tokenizer_from`: the architectures' module layout, nothing downloaded."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    cfg_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "gemma2": (Gemma2Config, Gemma2ForCausalLM)}[family]
    out.mkdir(parents=True, exist_ok=True)
    for f in tokenizer_from.glob("tokenizer*"):
        (out / f.name).write_bytes(f.read_bytes())
    vocab = len(json.loads((tokenizer_from / "tokenizer.json").read_text())["model"]["vocab"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cfg = cfg_cls(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
        model_cls(cfg).save_pretrained(out)
    return out


def model_files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of two jsonl shards, `train-00000-of-00002.jsonl` and `...-00001-...`."""
    root = tmp_path_factory.mktemp("corpus")
    docs = make_documents()
    half = len(docs) // 2
    for i, part in enumerate((docs[:half], docs[half:])):
        (root / f"train-0000{i}-of-00002.jsonl").write_text(
            "".join(json.dumps({"text": t, "id": n}) + "\n" for n, t in enumerate(part)))
    return root


@pytest.fixture(scope="session")
def hub(tiny_gpt2: Path, corpus: Path) -> Iterator[FakeHub]:
    import datasets

    server = FakeHub().start()
    files = model_files(tiny_gpt2)
    server.add_repo("org/tiny-gpt2", files)
    server.add_repo("org/private-gpt2", files, token=TOKEN)
    server.add_repo("org/gated-gpt2", files, gated=True, token=TOKEN)
    shards = {f"data/{p.name}": p.read_bytes() for p in sorted(corpus.glob("*.jsonl"))}
    server.add_repo("org/docs", shards, repo_type="dataset")
    tmp = corpus.parent / "parquet"
    tmp.mkdir(exist_ok=True)
    ds = datasets.Dataset.from_list([json.loads(line) for p in sorted(corpus.glob("*.jsonl"))
                                     for line in p.read_text().splitlines()])
    ds.to_parquet(str(tmp / "train-00000-of-00001.parquet"))
    server.add_repo("org/docs-parquet", {"data/train-00000-of-00001.parquet":
                                         (tmp / "train-00000-of-00001.parquet").read_bytes()}, repo_type="dataset")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hub_env(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeHub:
    """The fake hub as HF_ENDPOINT, a fresh cache directory, no token, network allowed."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("SAEOPS_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return hub


def upload_dir(bucket_uri: str, prefix: str, local: Path) -> str:
    """Copy a local directory under `bucket_uri/prefix`; returns the `s3://` URI of the copy."""
    from saeops.runtime.storage import open_storage

    storage = open_storage(f"{bucket_uri}/{prefix}")
    for p in sorted(local.rglob("*")):
        if p.is_file():
            storage.put_file(p.relative_to(local).as_posix(), str(p))
    return f"{bucket_uri}/{prefix}"


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
