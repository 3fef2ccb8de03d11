"""Turn examples into padded tensors; the one place text meets the tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from beem.data.examples import Example


@dataclass(frozen=True)
class TokenizedBatch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    token_type_ids: torch.Tensor | None  # (B, T), for backbones that have segment embeddings

    def to(self, device: torch.device) -> TokenizedBatch:
        return TokenizedBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            None if self.token_type_ids is None else self.token_type_ids.to(device),
        )


def tokenize_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    pairs: Sequence[str | None] | None,
    max_length: int,
) -> TokenizedBatch:
    """Pad to the longest row of this batch (not to max_length): short batches stay cheap."""
    use_pairs = pairs is not None and any(pair is not None for pair in pairs)
    encoded = tokenizer(
        list(texts),
        [pair or "" for pair in pairs] if use_pairs and pairs is not None else None,
        truncation=True,
        max_length=max_length,
        padding="longest",
        return_tensors="pt",
    )
    token_types = encoded.get("token_type_ids")
    return TokenizedBatch(encoded["input_ids"], encoded["attention_mask"], token_types)


def tokenize_examples(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int
) -> TokenizedBatch:
    return tokenize_texts(tokenizer, [e.text for e in examples], [e.text_pair for e in examples], max_length)
