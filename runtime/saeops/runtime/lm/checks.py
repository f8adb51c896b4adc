"""Checks on a model directory before anything heavy is loaded, so a broken one fails in one line.

- `config.json` present and valid JSON;
- a weights file present, and (for safetensors) every tensor the config implies present with the
  shape the config implies: read from the files' headers and compared with the architecture
  built on the meta device, so nothing is allocated;
- tokenizer files present, and the tokenizer's vocabulary no larger than the embedding.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saeops.runtime.sources import SourceError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger("saeops.lm")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                   "vocab.txt", "vocab.json", "tokenizer.tiktoken")
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "model*.bin", "*.pt")
_LEGACY = ((re.compile(r"\.gamma$"), ".weight"), (re.compile(r"\.beta$"), ".bias"))


class ModelLoadError(SourceError):
    """A model or tokenizer directory that cannot be loaded (one line: the path and what is wrong)."""


@dataclass
class ModelFiles:
    """What the checks learned about a model directory."""

    config: dict[str, Any]
    embedding_rows: int | None
    """Rows of the input embedding (the largest token id + 1 the model accepts), when known."""


def read_config(path: Path, field: str) -> dict[str, Any]:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ModelLoadError(f"{field}: {path} has no config.json; point it at a saved model directory "
                             "(config.json, weights, tokenizer files)")
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{field}: {cfg} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{field}: {cfg} holds no JSON object")
    return data


def safetensors_shapes(files: list[Path]) -> dict[str, tuple[tuple[int, ...], Path]]:
    """Tensor name -> (shape, file) from the safetensors headers (no tensor data read)."""
    out: dict[str, tuple[tuple[int, ...], Path]] = {}
    for f in files:
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise ModelLoadError(f"spec.model.path: {f} is truncated (no safetensors header)")
            (n,) = struct.unpack("<Q", head)
            try:
                header = json.loads(fh.read(n))
            except ValueError:
                raise ModelLoadError(f"spec.model.path: {f} has a corrupt safetensors header") from None
        for name, meta in header.items():
            if name != "__metadata__":
                out[name] = (tuple(int(d) for d in meta["shape"]), f)
    return out


def _meta_model(path: Path, has_head: bool) -> PreTrainedModel | None:
    """The architecture `config.json` describes, on the meta device (None if it cannot be built)."""
    try:
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(str(path))
        cls = AutoModelForCausalLM if has_head else AutoModel
        with torch.device("meta"):
            try:
                return cls.from_config(config)
            except ValueError:
                return AutoModel.from_config(config)
    except Exception as e:  # remote code, exotic configs: the library's own load decides
        log.debug("no meta model for %s: %s", path, e)
        return None


def hf_backend_modules(path: Path) -> set[str] | None:
    """Module names the `huggingface` backend would have for the model in `path` (meta device)."""
    from saeops.runtime.lm.tl_backend import checkpoint_has_lm_head

    model = _meta_model(path, checkpoint_has_lm_head(path))
    return None if model is None else {n for n, _ in model.named_modules() if n}


def _lookup(name: str, prefix: str, shapes: dict[str, Any]) -> str | None:
    candidates = [name, name.removeprefix(prefix + ".") if prefix else name, f"{prefix}.{name}" if prefix else name]
    for c in list(candidates):
        for pat, rep in _LEGACY:
            candidates.append(pat.sub(rep, c))
    legacy = {pat.sub(rep, k): k for k in shapes for pat, rep in _LEGACY if pat.search(k)}
    for c in candidates:
        if c in shapes:
            return c
        if c in legacy:
            return legacy[c]
    return None


def check_weights(path: Path, field: str, has_head: bool) -> int | None:
    """Raise ModelLoadError when the weights do not fit config.json; returns the embedding rows."""
    files = sorted(p for g in WEIGHT_GLOBS for p in path.glob(g))
    if not files:
        raise ModelLoadError(f"{field}: {path} has no weights file (model.safetensors or pytorch_model.bin)")
    model = _meta_model(path, has_head)
    if model is None:
        return None
    try:
        emb = model.get_input_embeddings()
    except NotImplementedError:  # an architecture that does not say which module embeds
        emb = None
    rows = int(emb.num_embeddings) if isinstance(emb, torch.nn.Embedding) else None
    st = [f for f in files if f.suffix == ".safetensors"]
    if not st:
        return rows  # pickled weights: read only by the library's own load
    shapes = safetensors_shapes(st)
    prefix = model.base_model_prefix or ""
    missing: list[str] = []
    for name, param in model.named_parameters():
        key = _lookup(name, prefix, shapes)
        if key is None:
            missing.append(name)
            continue
        got, where = shapes[key]
        if tuple(got) != tuple(param.shape):
            raise ModelLoadError(
                f"{field}: {where} does not match {path / 'config.json'}: tensor {key} has shape "
                f"{list(got)}, the config implies {list(param.shape)}; use the config the weights were saved with"
            )
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelLoadError(
            f"{field}: the weights in {path} lack {len(missing)} tensor(s) {path / 'config.json'} needs "
            f"({', '.join(missing[:3])}{more}); the files are incomplete or from another architecture"
        )
    return rows


def check_model_dir(path: Path, field: str, *, has_head: bool) -> ModelFiles:
    """config.json, weights and their shapes; returns the config and the embedding size."""
    config = read_config(path, field)
    rows = check_weights(path, field, has_head)
    return ModelFiles(config=config, embedding_rows=rows)


def check_tokenizer_dir(path: Path, field: str) -> None:
    """A tokenizer needs its vocabulary files, not just a config."""
    if not path.is_dir():
        raise ModelLoadError(f"{field}: {path} is not a directory with tokenizer files")
    if not any((path / f).is_file() for f in TOKENIZER_FILES) and not any(path.glob("*.tiktoken")):
        raise ModelLoadError(
            f"{field}: {path} has no tokenizer files (one of {', '.join(TOKENIZER_FILES[:5])}, ...); add them, "
            "set spec.model.tokenizer to a model that has them, or use tokenizer: bytes"
        )


def check_vocabulary(tokenizer: Any, rows: int | None, tokenizer_at: str, model_at: str) -> None:
    """Token ids the tokenizer can produce must exist in the embedding."""
    if rows is None:
        return
    try:
        size = len(tokenizer)
    except TypeError:
        size = int(getattr(tokenizer, "vocab_size", 0) or 0)
    if size > rows:
        raise ModelLoadError(
            f"spec.model.tokenizer: the tokenizer at {tokenizer_at} has {size} tokens but the model at "
            f"{model_at} embeds only {rows}; use the model's own tokenizer"
        )
