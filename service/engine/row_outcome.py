"""What comes back for a row: an answer, or the typed reason it has none (DESIGN 6: rows leave for one reason,
counted once where they leave, by `RowLedger`)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class RowFate(StrEnum):
    """Why a row left. The `outcome` label of `beem_rows_total`."""

    ANSWERED = "answered"
    CLIENT_GONE = "client_gone"  # the client closed the connection
    TIMEOUT = "timeout"  # its deadline passed before it was answered
    SHED = "shed"  # refused at admission: the queue was full or its expected wait too long (429)
    SHUTDOWN = "shutdown"  # refused or abandoned because the server is stopping (503)
    ERROR = "error"  # the step that ran it failed (500)


@dataclass(frozen=True)
class ExitTrace:
    """What one computed exit said (returned when a request asks for `return_exits`)."""

    layer: int
    label: int
    confidence: float


@dataclass(frozen=True)
class ClassAnswer:
    """A classified row: the label of the exit that answered, its probability, and where it left."""

    label: int
    score: float  # probability of `label` at the exit
    exit_layer: int
    probabilities: tuple[float, ...] | None = None  # every label's, when the request asked for the distribution
    logits: tuple[float, ...] | None = None  # the exit's raw scores, likewise
    exits: tuple[ExitTrace, ...] = ()  # every computed exit, when the request asked for them

    @property
    def exit_layers(self) -> tuple[int, ...]:
        return (self.exit_layer,)

    def agreement_key(self) -> Hashable:
        return self.label


@dataclass(frozen=True)
class CaptionAnswer:
    """A generated caption: token ids (the end token included when produced) and each token's exit layer."""

    tokens: tuple[int, ...]
    exit_layers: tuple[int, ...]

    def agreement_key(self) -> Hashable:
        return self.tokens


@dataclass(frozen=True)
class Dropped:
    """A row that was not answered, and why."""

    fate: RowFate
    detail: str = ""


class RowAnswer(Protocol):
    """What every task's answer tells the ledger and the shadow monitor."""

    @property
    def exit_layers(self) -> Sequence[int]:
        """One layer per exit it answered with: a classified row's one, a caption's one per token."""
        ...

    def agreement_key(self) -> Hashable:
        """What must match between an early answer and the same row at full depth: a label, a caption's tokens."""
        ...


RowOutcome = RowAnswer | Dropped
