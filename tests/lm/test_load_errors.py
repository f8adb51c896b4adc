"""A broken model directory fails before any forward with one line naming the path and what is
wrong: no tokenizer, no config.json, weights that do not fit the config, a tokenizer larger than
the embedding. A tokenizer without BOS warns once and frames windows the same on both backends."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from saeops.api.common import DatasetSpec, ModelSpec
from saeops.runtime.lm import load_language_model
from saeops.runtime.lm.checks import ModelLoadError
from tests.hub.conftest import build_tiny_gpt2


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("m") / "tiny-gpt2")


def _copy(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
    return dst


def _fails(path: Path, backend: str, tokenizer: str | None = None) -> str:
    with pytest.raises(ModelLoadError) as e:
        load_language_model(ModelSpec(name="m", path=str(path), backend=backend, tokenizer=tokenizer), device="cpu")
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("backend", ["transformer-lens", "huggingface"])
def test_missing_files_are_named(gpt2_dir: Path, tmp_path: Path, backend: str) -> None:
    no_tok = _copy(gpt2_dir, tmp_path / "no-tok", ("tokenizer*", "vocab*", "merges*", "special_tokens_map.json"))
    assert f"{no_tok} has no tokenizer files" in _fails(no_tok, backend)
    no_cfg = _copy(gpt2_dir, tmp_path / "no-cfg", ("config.json",))
    assert f"{no_cfg} has no config.json" in _fails(no_cfg, backend)
    no_w = _copy(gpt2_dir, tmp_path / "no-weights", ("*.safetensors",))
    assert f"{no_w} has no weights file" in _fails(no_w, backend)


@pytest.mark.parametrize("backend", ["transformer-lens", "huggingface"])
def test_weights_that_do_not_fit_the_config(gpt2_dir: Path, tmp_path: Path, backend: str) -> None:
    wide = _copy(gpt2_dir, tmp_path / "wide")
    cfg = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**cfg, "n_embd": 64}))
    msg = _fails(wide, backend)
    assert "model.safetensors does not match" in msg and "has shape [" in msg and "the config implies [" in msg
    deep = _copy(gpt2_dir, tmp_path / "deep")
    (deep / "config.json").write_text(json.dumps({**cfg, "n_layer": 3}))
    msg = _fails(deep, backend)
    assert "lack" in msg and "transformer.h.2." in msg


def test_tokenizer_larger_than_the_embedding(gpt2_dir: Path, tmp_path: Path) -> None:
    small = _copy(gpt2_dir, tmp_path / "small")
    cfg = json.loads((small / "config.json").read_text())
    from safetensors.torch import load_file, save_file

    w = load_file(str(small / "model.safetensors"))
    rows = cfg["vocab_size"] - 50
    w = {k: (v[:rows].clone() if k in ("transformer.wte.weight", "lm_head.weight") else v) for k, v in w.items()}
    save_file(w, str(small / "model.safetensors"), metadata={"format": "pt"})
    (small / "config.json").write_text(json.dumps({**cfg, "vocab_size": rows}))
    msg = _fails(small, "huggingface")
    assert f"has {cfg['vocab_size']} tokens but the model at {small} embeds only {rows}" in msg


def test_prepend_bos_without_bos_warns_once_same_on_both_backends(gpt2_dir: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    nobos = _copy(gpt2_dir, tmp_path / "nobos")
    tc = json.loads((nobos / "tokenizer_config.json").read_text())
    tc["bos_token"] = None
    (nobos / "tokenizer_config.json").write_text(json.dumps(tc))
    frames = []
    for backend in ("transformer-lens", "huggingface"):
        lm = load_language_model(ModelSpec(name="m", path=str(nobos), backend=backend), device="cpu")
        assert lm.bos_token_id is None
        with caplog.at_level(logging.WARNING, logger="saeops.lm"):
            caplog.clear()
            frames.append([lm.window_frame(True) for _ in range(3)])
            warned = [r for r in caplog.records if "has no BOS" in r.getMessage()]
        assert len(warned) == 1
    assert frames[0] == frames[1] == [([], [])] * 3
    assert DatasetSpec(path="x").prepend_bos  # the default that triggers it
