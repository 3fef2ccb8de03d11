"""A word-level caption vocabulary: the generated captions use a few dozen words, so words are the tokens.

Ids 0-3 are reserved: padding, start, end, unknown. Words are lower-cased and split on spaces, with commas kept
as their own token so a caption decodes back to the same text.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PAD, START, END, UNKNOWN = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNKNOWN)


def words_of(caption: str) -> list[str]:
    return caption.lower().replace(",", " ,").split()


@dataclass(frozen=True)
class CaptionVocabulary:
    words: tuple[str, ...]  # index = token id; the first four are SPECIAL_TOKENS

    @classmethod
    def from_captions(cls, captions: Iterable[str], min_count: int = 1) -> CaptionVocabulary:
        counts = Counter(word for caption in captions for word in words_of(caption))
        kept = sorted(word for word, count in counts.items() if count >= min_count)
        return cls((*SPECIAL_TOKENS, *kept))

    @property
    def size(self) -> int:
        return len(self.words)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def start_id(self) -> int:
        return 1

    @property
    def end_id(self) -> int:
        return 2

    def encode(self, caption: str) -> list[int]:
        """<start> words... <end>"""
        index = {word: i for i, word in enumerate(self.words)}
        return [self.start_id, *(index.get(word, 3) for word in words_of(caption)), self.end_id]

    def decode(self, tokens: Iterable[int]) -> str:
        """Token ids -> text, stopping at <end> and dropping special tokens."""
        words = []
        for token in tokens:
            if token == self.end_id:
                break
            if token >= len(SPECIAL_TOKENS):
                words.append(self.words[token])
        return " ".join(words).replace(" ,", ",")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"words": list(self.words)}))

    @classmethod
    def load(cls, path: Path) -> CaptionVocabulary:
        words = tuple(json.loads(path.read_text())["words"])
        if words[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
            raise ValueError(f"{path}: a caption vocabulary starts with {SPECIAL_TOKENS}")
        return cls(words)
