"""Hub datasets streamed through `datasets` (fake hub), pre-tokenized columns, and the disjoint,
resumable split of one stream over data-parallel ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saeops.api.common import DatasetSpec, ModelSpec
from saeops.runtime.data import ActivationStream, DatasetError, dataset_identity, load_text_dataset
from saeops.runtime.lm import load_language_model
from saeops.runtime.sources import SourceError
from tests.hub.conftest import upload_dir
from tests.hub.fake_hub import FakeHub


@pytest.fixture(scope="module")
def lm(tiny_gpt2: Path):
    return load_language_model(ModelSpec(name="tiny", path=str(tiny_gpt2), batch_size=4), device="cpu")


def test_hub_dataset_streams_the_rows_of_the_local_files_at_a_pinned_commit(hub_env: FakeHub, corpus: Path) -> None:
    local = list(load_text_dataset(DatasetSpec(path=str(corpus)))["text"])
    spec = DatasetSpec(path="hf://datasets/org/docs")
    assert [r["text"] for r in load_text_dataset(spec)] == local
    parquet = load_text_dataset(DatasetSpec(path="org/docs-parquet"))  # the bare form
    assert [r["text"] for r in parquet] == local
    commit = dataset_identity(spec)["commit"]
    assert commit == hub_env.repos[("dataset", "org/docs")].refs["main"]
    reads = [p for m, p in hub_env.requests if m == "GET" and "/resolve/" in p and p.endswith(".jsonl")]
    assert reads and all(f"/resolve/{commit}/" in p for p in reads), "every file is read at the pinned commit"
    first = load_text_dataset(DatasetSpec(path="hf://datasets/org/docs", max_documents=3))
    assert [r["text"] for r in first] == local[:3]


def test_hub_dataset_errors_are_one_line(hub_env: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetError) as e:
        list(load_text_dataset(DatasetSpec(path="hf://datasets/org/docs", split="validation")))
    assert "validation" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SourceError) as e:
        load_text_dataset(DatasetSpec(path="hf://datasets/org/docs", revision="nope"))
    assert "revision 'nope' of hf://datasets/org/docs does not exist" in str(e.value)
    with pytest.raises(SourceError, match="was not found"):
        load_text_dataset(DatasetSpec(path="hf://datasets/org/absent"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="HF_HUB_OFFLINE=1; put the files on a volume"):
        load_text_dataset(DatasetSpec(path="hf://datasets/org/other"))


def test_pretokenized_column_gives_the_windows_of_the_text(lm, corpus: Path, tmp_path: Path) -> None:
    texts = list(load_text_dataset(DatasetSpec(path=str(corpus)))["text"])
    ids = lm.encode_batch(texts)
    tok_file = tmp_path / "tokens.jsonl"
    tok_file.write_text("".join(json.dumps({"input_ids": i}) + "\n" for i in ids))
    text = ActivationStream(lm, DatasetSpec(path=str(corpus), context_size=32), ["blocks.1.hook_resid_post"],
                            batch_size=64)
    pre_spec = DatasetSpec(path=str(tok_file), context_size=32, token_field="input_ids",
                           tokenized_with=lm.spec.path)
    pre = ActivationStream(lm, pre_spec, ["blocks.1.hook_resid_post"], batch_size=64)
    a, b = list(text.windows()), list(pre.windows())
    assert len(a) == len(b) > 10
    assert all((x.tokens == y.tokens).all() for x, y in zip(a, b, strict=True))
    assert dataset_identity(pre_spec)["tokenizedWith"] == lm.spec.path
    with pytest.raises(DatasetError, match="were made with gpt2, but the model's tokenizer is"):
        ActivationStream(lm, pre_spec.model_copy(update={"tokenized_with": "gpt2"}), ["blocks.1.hook_resid_post"],
                         batch_size=64)
    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"input_ids": [1, 2, 50000]}) + "\n")
    bad = ActivationStream(lm, DatasetSpec(path=str(big), context_size=8, token_field="input_ids"),
                           ["blocks.1.hook_resid_post"], batch_size=4)
    with pytest.raises(DatasetError, match=r"token id 50000 .* outside the model's vocabulary of 300"):
        list(bad.windows())


def test_ranks_read_disjoint_windows_of_one_stream_and_resume_in_place(lm, s3_bucket: str, corpus: Path) -> None:
    uri = upload_dir(s3_bucket, "data/docs", corpus)
    spec = DatasetSpec(path=uri, context_size=32)
    docs = load_text_dataset(spec)

    def stream(rank: int, world: int, skip: int = 0) -> ActivationStream:
        return ActivationStream(lm, spec, ["blocks.1.hook_resid_post"], batch_size=32, rank=rank,
                                world_size=world, skip_batches=skip, documents=docs, seed=3)

    whole = {w.index for w in stream(0, 1).windows()}
    r0 = {w.index for w in stream(0, 2).windows()}
    r1 = {w.index for w in stream(1, 2).windows()}
    assert r0 and r1 and not r0 & r1 and r0 | r1 == whole
    full = list(stream(1, 2))
    resumed = list(stream(1, 2, skip=3))
    assert len(resumed) == len(full) - 3
    for x, y in zip(full[3:], resumed, strict=True):
        assert torch.equal(x["blocks.1.hook_resid_post"], y["blocks.1.hook_resid_post"])
