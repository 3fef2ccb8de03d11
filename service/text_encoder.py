"""Texts (and sentence pairs) -> token ids, with the bundle's fast tokenizer called at its Rust backend.

transformers' `tokenizer(...)` builds a BatchEncoding and re-applies truncation settings on every call (shared
state, so calls had to be serialised). Here each truncation setting has its own copy of the backend, configured
once, so encoding is one call, thread-safe (the backend encodes through a shared reference) and gives the same ids
(tests/unit/test_text_encoder.py holds it equal to the tokenizer's own call).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Encoding, Tokenizer
from transformers import PreTrainedTokenizerBase

SIDES = ("right", "left")


@dataclass(frozen=True)
class TokenSpan:
    """One token as TEI's /tokenize reports it (router/src/http/types.rs `SimpleToken`): its id; the text it
    covers (the token itself for a special token); and, for tokens from the text, the UTF-8 byte offsets
    [start, stop) of that text, as TEI's Rust tokenizer gives them."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class TextEncoder:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> None:
        backend: Tokenizer = tokenizer.backend_tokenizer
        self.max_tokens = max_tokens
        self.with_token_types = "token_type_ids" in tokenizer.model_input_names
        self._whole = _copy(backend)
        self._whole.no_truncation()
        self._truncating = {}
        for side in SIDES:
            truncating = _copy(backend)
            truncating.enable_truncation(max_tokens, strategy="longest_first", direction=side)
            self._truncating[side] = truncating

    def encode(
        self, texts: Sequence[str], pairs: Sequence[str] | None, truncate: bool, side: str = "right"
    ) -> list[tuple[list[int], list[int] | None]]:
        """(ids, token type ids or None) per text; `pairs` gives each text its second sentence."""
        backend = self._truncating[side] if truncate else self._whole
        inputs: list[str] | list[tuple[str, str]] = (
            list(texts) if pairs is None else list(zip(texts, pairs, strict=True))
        )
        encodings: list[Encoding] = (
            backend.encode_batch(inputs) if len(inputs) > 1 else [backend.encode(*_one(inputs[0]))]
        )
        return [(e.ids, e.type_ids if self.with_token_types else None) for e in encodings]

    def spans(self, texts: Sequence[str], add_special_tokens: bool) -> list[list[TokenSpan]]:
        """Every text's tokens, untruncated, with what each covers."""
        encodings: list[Encoding] = self._whole.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [_spans(text, encoding) for text, encoding in zip(texts, encodings, strict=True)]


def _spans(text: str, encoding: Encoding) -> list[TokenSpan]:
    # The Python binding's offsets count characters; TEI's count UTF-8 bytes: byte_at[c] is the byte offset of
    # character c, built in one pass (a per-token re-encode of the prefix would be quadratic in the text's length).
    byte_at = None if text.isascii() else list(itertools.accumulate((len(c.encode()) for c in text), initial=0))
    spans = []
    for token_id, token, (start, stop), special in zip(
        encoding.ids, encoding.tokens, encoding.offsets, encoding.special_tokens_mask, strict=True
    ):
        if special:
            spans.append(TokenSpan(token_id, token, True, None, None))
        else:
            byte_start, byte_stop = (start, stop) if byte_at is None else (byte_at[start], byte_at[stop])
            spans.append(TokenSpan(token_id, text[start:stop], False, byte_start, byte_stop))
    return spans


def _copy(backend: Tokenizer) -> Tokenizer:
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    return copy


def _one(single: str | tuple[str, str]) -> tuple[str] | tuple[str, str]:
    return (single,) if isinstance(single, str) else single
