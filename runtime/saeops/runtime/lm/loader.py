"""Build a LanguageModel from its spec: fetch the files, check them, then load.

The order is what makes a broken model fail in one line before any forward: the weights and
tokenizer are fetched (hub, S3) or found (local, package), `config.json`, the weights' shapes
and the tokenizer files are checked, the tokenizer's vocabulary is compared with the
embedding, and only then is the backend built (from the local directory, hub access disabled).
"""

from __future__ import annotations

from typing import Any

from saeops.api.common import ModelSpec
from saeops.runtime.lm.base import LanguageModel, resolve_device
from saeops.runtime.lm.checks import (
    ModelLoadError,
    check_model_dir,
    check_tokenizer_dir,
    check_vocabulary,
)
from saeops.runtime.lm.tokenizer import ByteTokenizer
from saeops.runtime.sources import ResolvedSource, hub_disabled, parse_location, resolve_source


def resolve_weights(spec: ModelSpec) -> ResolvedSource | None:
    """The local directory of `spec.path` (fetched when remote); None for native models."""
    if spec.path is None:
        return None
    return resolve_source(spec.path, "spec.model.path", revision=spec.revision, cache_dir=spec.cache_dir)


def _tokenizer_source(spec: ModelSpec, weights: ResolvedSource | None) -> ResolvedSource | None:
    if spec.tokenizer is None:
        return weights
    if spec.tokenizer == "bytes":
        return None
    same_repo = spec.path is not None and parse_location(spec.tokenizer, "spec.model.tokenizer") == parse_location(
        spec.path, "spec.model.path")
    # `revision` pins the model repo; a tokenizer from another repo is read at its main branch.
    return resolve_source(spec.tokenizer, "spec.model.tokenizer",
                          revision=spec.revision if same_repo else None, cache_dir=spec.cache_dir)


def _tokenizer_from(src: ResolvedSource | None, field: str) -> Any:
    if src is None:
        return ByteTokenizer()
    check_tokenizer_dir(src.path, field)
    with hub_disabled():
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(src.path))
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"{field}: cannot load the tokenizer in {src.path}: {first}") from None


def load_tokenizer(spec: ModelSpec, weights: ResolvedSource | None = None) -> Any:
    """The spec's tokenizer: `bytes`, or the files at `spec.tokenizer` (default: the model's).

    Native models without a tokenizer get the byte tokenizer (they have no files of their own).
    """
    if weights is None and spec.tokenizer is None:
        weights = resolve_weights(spec)
    field = "spec.model.tokenizer" if spec.tokenizer else "spec.model.path"
    return _tokenizer_from(_tokenizer_source(spec, weights), field)


def load_language_model(spec: ModelSpec, device: str | None = None) -> LanguageModel:
    """Load (or, for `native`, build) the model in `spec.dtype` on `device` (default: the spec's)."""
    from saeops.runtime.lm.tl_backend import checkpoint_has_lm_head

    dev = resolve_device(device, spec)
    weights = resolve_weights(spec)
    files = None
    if weights is not None:
        files = check_model_dir(weights.path, "spec.model.path", has_head=checkpoint_has_lm_head(weights.path))
    tok_src = _tokenizer_source(spec, weights)
    tokenizer = _tokenizer_from(tok_src, "spec.model.tokenizer" if spec.tokenizer else "spec.model.path")
    if files is not None and tok_src is not None:
        check_vocabulary(tokenizer, files.embedding_rows, str(tok_src.path), str(weights.path))
    with hub_disabled():
        if spec.backend == "huggingface":
            from saeops.runtime.lm.hf_backend import HuggingFaceModel

            return HuggingFaceModel(spec, tokenizer, dev, weights)
        from saeops.runtime.lm.tl_backend import TransformerLensModel

        return TransformerLensModel(spec, tokenizer, dev, weights)
