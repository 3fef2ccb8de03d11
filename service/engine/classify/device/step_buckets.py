"""The shapes a GPU step runs at: rows x tokens buckets (DESIGN 6).

A CUDA graph replays one fixed shape, so the GPU path pads every group up to a bucket: rows to the next row
bucket (placeholder rows that never count), tokens to the next token bucket. Rows join in groups of one token
bucket (length-bucketed groups: a short text does not pay for a long one's padding beyond its bucket). A group
whose rows or tokens are beyond the largest bucket runs at its own shape, eagerly (no graph).

Pure logic, table-driven tests (tests/engine/classify/device/test_step_buckets.py).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

DEFAULT_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
DEFAULT_TOKEN_BUCKETS = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class StepShape:
    rows: int
    tokens: int
    bucketed: bool  # both from the buckets (a graph may exist); False: the group's own shape, run eagerly


@dataclass(frozen=True)
class StepBuckets:
    rows: tuple[int, ...] = DEFAULT_ROW_BUCKETS  # ascending
    tokens: tuple[int, ...] = DEFAULT_TOKEN_BUCKETS  # ascending
    max_padded_tokens: int = 1 << 62  # bucket shapes with rows x tokens beyond this are never captured

    def __post_init__(self) -> None:
        for name, values in (("rows", self.rows), ("tokens", self.tokens)):
            if not values or list(values) != sorted(set(values)) or values[0] < 1:
                raise ValueError(f"{name} buckets must be distinct positive numbers in ascending order: {values}")

    @staticmethod
    def _ceiling(buckets: tuple[int, ...], value: int) -> int | None:
        index = bisect.bisect_left(buckets, value)
        return buckets[index] if index < len(buckets) else None

    def token_bucket(self, longest: int) -> int | None:
        """The token width a group whose longest row has `longest` tokens runs at; None beyond the buckets."""
        return self._ceiling(self.tokens, longest)

    def shape(self, rows: int, longest: int) -> StepShape:
        """The shape a group of `rows` rows, the longest of `longest` tokens, is padded to."""
        row_bucket, token_bucket = self._ceiling(self.rows, rows), self._ceiling(self.tokens, longest)
        if row_bucket is None or token_bucket is None or row_bucket * token_bucket > self.max_padded_tokens:
            return StepShape(rows, longest, bucketed=False)
        return StepShape(row_bucket, token_bucket, bucketed=True)

    def shapes(self) -> list[tuple[int, int]]:
        """Every bucket shape (rows, tokens) within `max_padded_tokens`: what warm-up captures."""
        return [(r, t) for t in self.tokens for r in self.rows if r * t <= self.max_padded_tokens]


def parse_buckets(text: str) -> tuple[int, ...]:
    """ "1,2,4" -> (1, 2, 4): how settings write them."""
    return tuple(int(part) for part in text.split(",") if part.strip())
