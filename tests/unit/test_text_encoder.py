"""The server's TextEncoder gives the ids (and token types) the tokenizer's own call gives, truncated or not."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from beem.data.examples import read_dataset
from beem.data.rotten_tomatoes import REPO_DATA_FILE
from beem.data.splits import split_dataset
from beem.model.pretrained_backbones import resolve_backbone
from service.text_encoder import TextEncoder

LIMIT = 24


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(str(resolve_backbone("minilm-l6")))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [e.text for e in split_dataset(read_dataset(REPO_DATA_FILE)).test.examples[:60]] + [
        "\u00e9t\u00e9 \U0001f600 !",
        "a",
    ]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("truncate", [False, True])
@pytest.mark.parametrize("paired", [False, True])
def test_the_encoder_equals_the_tokenizers_own_call(tokenizer, texts, side, truncate, paired) -> None:  # type: ignore[no-untyped-def]
    pairs = [text[::-1] for text in texts] if paired else None
    encoder = TextEncoder(tokenizer, LIMIT)
    tokenizer.truncation_side = side
    expected = tokenizer(texts, pairs, padding=False, truncation=truncate, max_length=LIMIT if truncate else None)
    tokenizer.truncation_side = "right"
    encoded = encoder.encode(texts, pairs, truncate, side)
    assert [ids for ids, _ in encoded] == expected["input_ids"]
    assert [types for _, types in encoded] == expected["token_type_ids"]
    assert any(len(ids) > LIMIT for ids, _ in encoded) != truncate
    single = encoder.encode(texts[:1], pairs[:1] if pairs else None, truncate, side)
    assert single == encoded[:1]
