"""A byte-level tokenizer that needs no files (native test models, smoke runs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ByteTokenizer:
    """UTF-8 bytes shifted past three special ids: PAD=0, BOS=1, EOS=2, byte b -> b + 3.

    It mimics the slice of the Hugging Face tokenizer API the data pipeline uses
    (`__call__(texts)["input_ids"]`, `decode`, the special-token attributes).
    """

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    unk_token_id = None
    cls_token_id = None
    sep_token_id = None
    offset = 3
    vocab_size = 256 + offset
    is_fast = True

    @property
    def all_special_ids(self) -> list[int]:
        """PAD, BOS and EOS."""
        return [self.pad_token_id, self.bos_token_id, self.eos_token_id]

    def encode(self, text: str) -> list[int]:
        """Ids of one text (no special tokens)."""
        return [b + self.offset for b in text.encode("utf-8")]

    def __call__(self, texts: str | Sequence[str], add_special_tokens: bool = False, **_: Any) -> dict[str, Any]:
        """HF-style batch call; BOS is prepended only when add_special_tokens is set."""
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        prefix = [self.bos_token_id] if add_special_tokens else []
        ids = [prefix + self.encode(t) for t in batch]
        return {"input_ids": ids[0] if single else ids}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; special ids are dropped (or shown as <bos>/<eos>/<pad>)."""
        names = {0: "<pad>", 1: "<bos>", 2: "<eos>"}
        out = bytearray()
        parts: list[str] = []
        for i in (int(x) for x in ids):
            if i >= self.offset:
                out.append(i - self.offset)
                continue
            parts.append(out.decode("utf-8", errors="replace"))
            out.clear()
            if not skip_special_tokens:
                parts.append(names.get(i, ""))
        parts.append(out.decode("utf-8", errors="replace"))
        return "".join(parts)
