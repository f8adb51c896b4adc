"""The language-model interface the activation pipeline, evaluation and steering use."""

from __future__ import annotations

import difflib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from saeops.api.common import ModelSpec

log = logging.getLogger("saeops.lm")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class UnknownHookPointError(ValueError):
    """A hook point the model does not have. The message gives this backend's equivalent when the
    name is the other backend's, else the closest name, and says how to list them."""

    def __init__(self, hook_point: str, available: Sequence[str], model_name: str, *,
                 backend: str | None = None, equivalent: str | None = None) -> None:
        close = difflib.get_close_matches(hook_point, list(available), n=1, cutoff=0.5)
        if equivalent is not None:
            other = "huggingface" if backend == "transformer-lens" else "transformer-lens"
            hint = (f"; hook names depend on the backend: that is the {other} name of "
                    f"{equivalent!r}, its name with backend {backend}")
        else:
            hint = f"; did you mean {close[0]!r}?" if close else ""
        on = f" (backend {backend})" if backend else ""
        super().__init__(
            f"unknown hook point {hook_point!r} for model {model_name}{on}{hint} "
            f"({len(available)} available: list them with `saeops hooks`)"
        )
        self.hook_point = hook_point
        self.suggestion = equivalent or (close[0] if close else None)


class StopForward(Exception):
    """Raised from a hook once every requested activation is captured, to skip the rest of the model."""


def resolve_local_path(location: str) -> Path:
    """A local directory with the files of `location` (`package:NAME`, a directory, a hub id or
    an `s3://` prefix; remote ones are fetched into the default cache)."""
    from saeops.runtime.sources import resolve_source

    return resolve_source(location, "spec.model.path").path


def resolve_device(device: str | None, spec: ModelSpec) -> torch.device:
    """`device` argument, else the spec's; `auto` picks CUDA when available."""
    want = device or spec.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


class LanguageModel(ABC):
    """A frozen language model that yields activations at named hook points.

    Subclasses provide the forward machinery; token handling (BOS/CLS, special tokens, how context
    windows are framed) lives here so both backends treat data identically.
    """

    spec: ModelSpec
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype

    def __init__(self, spec: ModelSpec, tokenizer: Any, device: torch.device, source: Any = None) -> None:
        """`source`: the `ResolvedSource` of the weights (None for native models)."""
        self.spec = spec
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = DTYPES[spec.dtype]
        self.source = source
        self._d_model_cache: dict[str, int] = {}
        self._warned_no_bos = False

    # ---- hook points -------------------------------------------------------------------------
    @abstractmethod
    def hook_points(self) -> list[str]:
        """Every hook point name this model accepts."""

    @abstractmethod
    def has_hook_point(self, name: str) -> bool:
        """Whether `name` is a hook point of this model."""

    def check_hook_points(self, names: Sequence[str]) -> None:
        """Raise UnknownHookPointError for the first name the model lacks."""
        for name in names:
            if not self.has_hook_point(name):
                raise UnknownHookPointError(name, self._suggestion_pool(), self.spec.name, backend=self.backend,
                                            equivalent=self.equivalent_hook(name))

    def equivalent_hook(self, name: str) -> str | None:
        """This backend's name for `name` when it is the other backend's (None: not known)."""
        return None

    def _suggestion_pool(self) -> list[str]:
        return self.hook_points()

    def d_model(self, hook_point: str) -> int:
        """Width of the activation at `hook_point` (trailing dims flattened), probed once."""
        if hook_point not in self._d_model_cache:
            self.check_hook_points([hook_point])
            tok = self.bos_token_id if self.bos_token_id is not None else 0
            probe = torch.full((1, 2), tok, dtype=torch.long)
            self._d_model_cache[hook_point] = int(self.activations(probe, [hook_point])[hook_point].shape[-1])
        return self._d_model_cache[hook_point]

    # ---- tokens ------------------------------------------------------------------------------
    @property
    def bos_token_id(self) -> int | None:
        """Token that starts a context window: BOS, or CLS for BERT-like tokenizers."""
        tok = self.tokenizer
        bos = getattr(tok, "bos_token_id", None)
        return bos if bos is not None and not self.is_bert_like else getattr(tok, "cls_token_id", bos)

    @property
    def is_bert_like(self) -> bool:
        """Tokenizer frames inputs as [CLS] ... [SEP] (encoders such as BERT/MiniLM)."""
        tok = self.tokenizer
        return getattr(tok, "cls_token_id", None) is not None and getattr(tok, "sep_token_id", None) is not None

    @property
    def special_token_ids(self) -> set[int]:
        """Ids whose positions are dropped from training data (BOS/CLS/SEP/EOS/PAD...).

        UNK is kept: it marks real (if unusual) text, not framing.
        """
        tok = self.tokenizer
        ids = set(getattr(tok, "all_special_ids", []) or [])
        unk = getattr(tok, "unk_token_id", None)
        ids.discard(unk)
        return {int(i) for i in ids if i is not None}

    @property
    def separator_token_id(self) -> int | None:
        """Token put between packed documents: SEP for BERT-like, else EOS, else BOS."""
        tok = self.tokenizer
        if self.is_bert_like:
            return tok.sep_token_id
        eos = getattr(tok, "eos_token_id", None)
        return eos if eos is not None else self.bos_token_id

    def window_frame(self, prepend_bos: bool) -> tuple[list[int], list[int]]:
        """Tokens put before and after every context window.

        Decoder models get `[BOS] body`. BERT-like encoders get `[CLS] body [SEP]`: every
        sequence they saw in training ended with [SEP] and their attention is bidirectional,
        so a window without it is off-distribution at every position, not just the last. The
        framing tokens are special tokens and are filtered out of training data.
        """
        if prepend_bos and self.bos_token_id is None and not self._warned_no_bos:
            # Same on both backends: the windows start with text (TransformerLens would not add one either).
            log.warning("dataset.prependBos: the tokenizer of %s has no BOS (or CLS) token; context windows "
                        "start with text (set prependBos: false to silence this)", self.spec.name)
            self._warned_no_bos = True
        if not prepend_bos or self.bos_token_id is None:
            return [], []
        if self.is_bert_like:
            return [self.bos_token_id], [self.tokenizer.sep_token_id]
        return [self.bos_token_id], []

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (the packer adds the framing)."""
        out = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)
        return out["input_ids"]

    @property
    def max_context(self) -> int | None:
        """Longest sequence the model accepts (None: unknown)."""
        return None

    @property
    def embedding_rows(self) -> int | None:
        """Token ids the embedding accepts (0 .. rows-1); None when any id is accepted."""
        return None

    # ---- forward -----------------------------------------------------------------------------
    @abstractmethod
    def activations(
        self, tokens: torch.Tensor, hook_points: Sequence[str], attention_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Activations [B, T, D] at `hook_points`; the forward stops once all are captured."""

    @abstractmethod
    def logits(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Full forward. Logits [B, T, V] when the model has a trained LM head (`has_lm_head`),
        else the last hidden state [B, T, d] (encoders such as MiniLM)."""

    @abstractmethod
    def forward_with_replacement(
        self,
        tokens: torch.Tensor,
        hook_point: str,
        fn: Callable[[torch.Tensor], torch.Tensor],
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Like `logits`, with the activation at `hook_point` replaced by `fn(activation)`."""

    @property
    @abstractmethod
    def has_lm_head(self) -> bool:
        """Whether the model has a trained unembedding (so `logits` are next-token logits)."""

    @abstractmethod
    def unembed(self) -> torch.Tensor | None:
        """W_U [d_model, d_vocab], or None when the model has no trained LM head."""

    @property
    @abstractmethod
    def backend(self) -> str:
        """`transformer-lens` or `huggingface`."""

    def identity(self) -> dict[str, Any]:
        """What makes activations comparable across runs (recorded in artifacts and caches)."""
        ident: dict[str, Any] = {
            "name": self.spec.name,
            "backend": self.backend,
            "dtype": self.spec.dtype,
            "path": self.spec.path,
        }
        if self.spec.native is not None:
            ident["native"] = self.spec.native.model_dump(mode="json")
        if self.spec.tokenizer is not None:
            ident["tokenizer"] = self.spec.tokenizer
        if self.source is not None:
            ident.update(self.source.identity())  # pinned hub commit / S3 content hash
        return ident

    # ---- helpers for backends ----------------------------------------------------------------
    def _prepare(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[
        torch.Tensor, torch.Tensor | None
    ]:
        tokens = tokens.to(self.device, dtype=torch.long)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        return tokens, attention_mask

    @staticmethod
    def _per_token(name: str, x: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
        """[B, T, ...] -> [B, T, D]; attention patterns and other non per-token tensors are refused."""
        if x.dim() < 3 or x.shape[0] != batch or x.shape[1] != seq:
            raise ValueError(
                f"hook point {name!r} gives shape {tuple(x.shape)}, not a per-token activation [batch, pos, ...]"
            )
        return x.reshape(batch, seq, -1) if x.dim() > 3 else x
