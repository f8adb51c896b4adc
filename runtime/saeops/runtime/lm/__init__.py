"""Language models behind one small interface: TransformerLens (TransformerBridge) or plain HF.

`load_language_model(spec)` is the only constructor callers need; hook point names are the
backend's own (TransformerLens names, or HF module paths with an optional `:input` suffix).
"""

from __future__ import annotations

from saeops.runtime.lm.base import (
    DTYPES,
    LanguageModel,
    StopForward,
    UnknownHookPointError,
    resolve_local_path,
)
from saeops.runtime.lm.loader import load_language_model, load_tokenizer
from saeops.runtime.lm.tokenizer import ByteTokenizer

__all__ = [
    "DTYPES",
    "ByteTokenizer",
    "HuggingFaceModel",
    "LanguageModel",
    "StopForward",
    "TransformerLensModel",
    "UnknownHookPointError",
    "load_language_model",
    "load_tokenizer",
    "resolve_local_path",
]


def __getattr__(name: str):  # backends import transformers/transformer-lens: load them lazily
    if name == "TransformerLensModel":
        from saeops.runtime.lm.tl_backend import TransformerLensModel

        return TransformerLensModel
    if name == "HuggingFaceModel":
        from saeops.runtime.lm.hf_backend import HuggingFaceModel

        return HuggingFaceModel
    raise AttributeError(name)
