"""What comes back for a row: an answer, or the typed reason it has none (DESIGN 6: rows leave for one reason,
counted once where they leave, by `RowLedger`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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


@dataclass(frozen=True)
class CaptionAnswer:
    """A generated caption: token ids (the end token included when produced) and each token's exit layer."""

    tokens: tuple[int, ...]
    exit_layers: tuple[int, ...]


@dataclass(frozen=True)
class Dropped:
    """A row that was not answered, and why."""

    fate: RowFate
    detail: str = ""


RowOutcome = ClassAnswer | CaptionAnswer | Dropped
