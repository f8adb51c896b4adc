"""`saeops run` on a broken local model directory (issue #19, item 5): no tokenizer files, no
config.json, weights that do not fit the config. Each is one `error:` line naming the path and
what is missing, exit 2, before any forward and with nothing written to the output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.hub.test_cli_errors import manifest, run_cli


def _broken(tiny_gpt2: Path, dst: Path, drop: tuple[str, ...] = (), config: dict | None = None) -> Path:
    shutil.copytree(tiny_gpt2, dst, ignore=shutil.ignore_patterns(*drop))
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**cfg, **config}))
    return dst


@pytest.mark.parametrize("backend", ["transformer-lens", "huggingface"])
@pytest.mark.parametrize(("case", "drop", "config", "words"), [
    ("no-tokenizer", ("tokenizer*", "vocab*", "merges*", "special_tokens_map.json"), None, ["has no tokenizer files"]),
    ("no-config", ("config.json",), None, ["has no config.json"]),
    ("wide-config", (), {"n_embd": 64}, ["model.safetensors does not match", "the config implies ["]),
    ("deep-config", (), {"n_layer": 3}, ["lack", "transformer.h.2."]),
])
def test_broken_model_dir_is_one_error_line(tiny_gpt2: Path, corpus: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str], backend: str, case: str,
                                            drop: tuple[str, ...], config: dict | None, words: list[str]) -> None:
    model = _broken(tiny_gpt2, tmp_path / case, drop, config)
    line = run_cli(capsys, manifest(tmp_path, {"path": str(model), "backend": backend}, str(corpus)))
    assert str(model) in line and all(w in line for w in words), line
    assert "Traceback" not in line and "No module" not in line  # not the transformers error it used to be
    out = tmp_path / "out"
    assert not out.exists() or not any(out.rglob("*.safetensors")), "nothing trained or written"
