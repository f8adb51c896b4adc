"""Pre-tokenized data: ids read from a column instead of text, checked against the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from saeops.api.common import DatasetSpec
from saeops.runtime.data.loading import DatasetError

if TYPE_CHECKING:
    from saeops.runtime.lm.base import LanguageModel


def _norm(location: str) -> str:
    return location.removeprefix("hf://").removeprefix("models/").rstrip("/")


def model_tokenizer_location(model: Any) -> str | None:
    """Where the model's tokenizer comes from: `model.tokenizer`, else `model.path`."""
    spec = model.spec
    return spec.tokenizer or spec.path


def check_tokenized_with(model: LanguageModel, dataset: DatasetSpec) -> None:
    """`dataset.tokenizedWith`, when given, must name the model's tokenizer."""
    made_with = dataset.tokenized_with
    ours = model_tokenizer_location(model)
    if made_with is None or ours is None:
        return
    if _norm(made_with) != _norm(ours):
        raise DatasetError(
            f"dataset.tokenizedWith: the ids in column {dataset.token_field!r} were made with {made_with}, "
            f"but the model's tokenizer is {ours}; re-tokenize with it, or read the text (textField)"
        )


def token_encoder(model: LanguageModel, dataset: DatasetSpec) -> Callable[[list[Any]], list[list[int]]]:
    """The "encoder" of pre-tokenized documents: ids pass through, checked against the embedding."""
    rows = model.embedding_rows

    def encode(docs: list[Any]) -> list[list[int]]:
        out: list[list[int]] = []
        for ids in docs:
            try:
                if isinstance(ids, str | bytes):
                    raise TypeError
                seq = [int(i) for i in ids]
            except (TypeError, ValueError):
                raise DatasetError(f"dataset.tokenField: column {dataset.token_field!r} holds "
                                   f"{type(ids).__name__}, not lists of token ids") from None
            if seq and rows is not None and (max(seq) >= rows or min(seq) < 0):
                bad = max(seq) if max(seq) >= rows else min(seq)
                raise DatasetError(
                    f"dataset.tokenField: token id {bad} in column {dataset.token_field!r} is outside the "
                    f"model's vocabulary of {rows}; the ids were made with another tokenizer"
                )
            out.append(seq)
        return out

    return encode


def document_encoder(model: LanguageModel, dataset: DatasetSpec) -> Callable[[list[Any]], list[list[int]]]:
    """How `pack_windows` turns this dataset's documents into ids: the tokenizer for text, the
    checked pass-through for a `tokenField` column."""
    if dataset.token_field:
        check_tokenized_with(model, dataset)
        return token_encoder(model, dataset)
    return model.encode_batch
