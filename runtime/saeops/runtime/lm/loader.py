"""Build a LanguageModel from its spec."""

from __future__ import annotations

from typing import Any

from saeops.api.common import ModelSpec
from saeops.runtime.lm.base import LanguageModel, offline, resolve_device, resolve_local_path
from saeops.runtime.lm.tokenizer import ByteTokenizer


def load_tokenizer(spec: ModelSpec) -> Any:
    """The spec's tokenizer: `bytes`, a local directory / `package:NAME`, or the model's own path.

    Native models without a tokenizer get the byte tokenizer (they have no files of their own).
    """
    where = spec.tokenizer or spec.path
    if where is None or where == "bytes":
        return ByteTokenizer()
    offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_local_path(where)))


def load_language_model(spec: ModelSpec, device: str | None = None) -> LanguageModel:
    """Load (or, for `native`, build) the model in `spec.dtype` on `device` (default: the spec's).

    Weights are read from local disk only; Hugging Face libraries are switched to offline mode.
    """
    dev = resolve_device(device, spec)
    tokenizer = load_tokenizer(spec)
    if spec.backend == "huggingface":
        from saeops.runtime.lm.hf_backend import HuggingFaceModel

        return HuggingFaceModel(spec, tokenizer, dev)
    from saeops.runtime.lm.tl_backend import TransformerLensModel

    return TransformerLensModel(spec, tokenizer, dev)
