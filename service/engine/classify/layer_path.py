"""The contract between the classification engine and a layer path: how rows run through the encoder's layers.

The engine (`classification_engine.py`) owns what the task needs once: the bundle, the policy rows, the answers,
the ledger. A path owns only how rows travel: it takes rows in (`join`), runs one step (`step`) and hands back the
rows that left through the `RowExits` it was built with, at once (a row answered in a step that later fails is not
lost). Two paths implement it: `host/` (groups of any shape, decisions read back every step: cheapest on the CPU)
and `device/` (fixed-shape groups, CUDA graphs, one read back per step, one step ahead). A third (a compiled or
other runtime) is one new module that implements `LayerPath` and one entry in `layer_paths.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from prometheus_client import Histogram

from beem.bundle.bundle_reader import LoadedBundle
from beem.policies.array_policies import RowPolicies
from service.engine.classify.tokenized_row import TokenizedRow
from service.engine.row_outcome import RowFate
from service.engine.step_engine import EngineBudget
from service.metrics import ServiceMetrics


@dataclass(frozen=True)
class LeftRows:
    """Rows that left at an exit in one step, with what their answers are made of (`class_answers.py`)."""

    rows: Sequence[TokenizedRow]  # (E,)
    layers: Sequence[int]  # (E,) the exit each left at, 1-based
    labels: Sequence[int]  # (E,)
    scores: Sequence[float]  # (E,) the exit's max probability
    logits: torch.Tensor | None  # (E, C) float32 on the CPU; None when no row wants its distribution
    trace_labels: Sequence[Sequence[int]] | None  # (E, >= layer) every exit computed so far; None when no row asked
    trace_confidences: Sequence[Sequence[float]] | None  # likewise


class RowExits(Protocol):
    """Where a path hands the rows that leave it (the engine: through the ledger, counted once)."""

    def answered(self, left: LeftRows) -> None: ...

    def abandoned(self, row: TokenizedRow, fate: RowFate, layers_run: int) -> None: ...


@dataclass(frozen=True)
class PathSetting:
    """What a path is built from, once the bundle is loaded: everything it needs, nothing to fill in later."""

    bundle: LoadedBundle
    device: torch.device
    dtype: torch.dtype
    budget: EngineBudget
    metrics: ServiceMetrics
    exits: RowExits

    def layer_batch_sizes(self) -> dict[int, Histogram]:
        """Per layer, `beem_layer_batch_size`'s labelled child (looked up once, not per step)."""
        return {
            layer: self.metrics.layer_batch_size.labels(str(layer)) for layer in range(1, self.bundle.num_layers + 1)
        }


class LayerPath(Protocol):
    @property
    def inflight_rows(self) -> int: ...

    @property
    def inflight_tokens(self) -> int:
        """Padded tokens in flight (rows x their group's width), what the token budget counts."""
        ...

    def warm_up(self) -> None:
        """Run every kind of step once in the serving thread (torch's lazy initialisation, graph capture)."""
        ...

    def join(self, rows: Sequence[TokenizedRow], policies: Sequence[RowPolicies], cancellations: int) -> None:
        """Rows enter at depth 0 (embedded), each with its one row of policy parameters on the device."""
        ...

    def step(self, cancellations: int) -> None:
        """One step: drop the abandoned rows of what it runs, run a layer, hand back the rows that left."""
        ...

    def rows_of_failed_step(self) -> list[tuple[TokenizedRow, int]]:
        """After `step` raised: the rows it was running, with the layers each had run; they leave the path."""
        ...

    def all_rows(self) -> list[tuple[TokenizedRow, int]]:
        """Every row in flight, with the layers it has run."""
        ...
