"""Rows at one depth of the encoder, travelling together: their hidden states, their policy state and parameters
(device tensors, one row each), and what the host needs of them (numpy arrays, so selecting rows is a constant
number of calls, not a loop over rows, plus a few scalars the step loop reads without touching an array).

Groups from different arrivals at the same depth merge (re-padded to the longer one); rows that leave are cut out
and the padding trimmed to the longest row left.

A step's Python runs right after a layer has streamed megabytes of weights through the caches, so every operation
on the hot path costs many times its micro-benchmark: what a step asks of a group is kept as plain scalars
(`next_head_layer`, `earliest_deadline`), and the policy states of depth-only rows are not stepped while their exit
heads are skipped (`states_layers` lags; `current_states` catches them up in one call when a head next runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from beem.model.layerwise_backbone import EncoderState, LayerwiseBackbone
from beem.policies.array_policies import RowPolicies, RowStates
from beem.policies.policy_table import rules_read_entropy, rules_read_margin
from service.engine.abandoned_rows import CancellationWatch
from service.engine.queued_row import only_shadow_rows


@dataclass(eq=False)  # a group is itself: never compared by its tensors
class RowGroup:
    encoder: EncoderState  # hidden (R, T, H) after `depth` layers, attention mask (R, T)
    states: RowStates  # (R,) policy state after `states_layers` exits
    policies: RowPolicies  # (R,) exit parameters
    traces: tuple[torch.Tensor, torch.Tensor] | None  # (R, L) labels and confidences of every computed exit, kept
    # only while some row returns its exits
    items: np.ndarray  # (R,) object: the TokenizedRows
    lengths: np.ndarray  # (R,) int64: tokens per row
    deadlines: np.ndarray  # (R,) float64: time.monotonic() deadlines
    head_from: np.ndarray  # (R,) int64: the first layer whose exit head this row needs (1: every layer)
    rule_codes: np.ndarray  # (R,) int64: each row's rule code
    oldest_at: float  # when its oldest row joined the engine
    watch: CancellationWatch  # when its rows were last searched for cancelled ones
    states_layers: int = 0  # the exits `states` has folded in (< depth after skipped heads)
    next_head_layer: int = 0  # min(head_from): no exit head is needed before this layer
    earliest_deadline: float = 0.0  # min(deadlines)
    shadow_only: bool = False  # every row is a shadow row: it steps only when no other group is waiting

    def __post_init__(self) -> None:
        self.next_head_layer = int(self.head_from.min())
        self.earliest_deadline = float(self.deadlines.min())
        self.rules: frozenset[int] = frozenset(np.unique(self.rule_codes).tolist())  # among its rows

    @property
    def depth(self) -> int:
        return self.encoder.layers_done

    @property
    def num_rows(self) -> int:
        return len(self.items)

    @property
    def padded_tokens(self) -> int:
        return self.num_rows * int(self.encoder.hidden.shape[1])

    @property
    def reads_entropy(self) -> bool:
        return rules_read_entropy(self.rules)

    @property
    def reads_margin(self) -> bool:
        return rules_read_margin(self.rules)

    def current_states(self) -> RowStates:
        """The states after every layer run so far. Heads are skipped only while every row is depth-only (no
        other rule can do without its exit), so lagging states are those of depth-only rows."""
        if self.states_layers != self.depth:
            self.states = RowStates.after_skipped_heads(self.num_rows, self.depth, self.encoder.hidden.device)
            self.states_layers = self.depth
        return self.states

    def take(self, keep: np.ndarray, backbone: LayerwiseBackbone) -> RowGroup:
        """The rows where `keep` (R,) is True; padding trimmed to the longest of them."""
        rows = torch.from_numpy(np.flatnonzero(keep)).to(self.encoder.hidden.device)
        longest = int(self.lengths[keep].max())
        encoder = self.encoder.select_rows(rows)
        if longest < encoder.hidden.shape[1]:
            encoder = backbone.regroup(
                encoder.hidden[:, :longest], encoder.attention_mask[:, :longest], encoder.layers_done
            )
        items = self.items[keep]
        keeps_traces = self.traces is not None and any(item.return_exits for item in items)
        return RowGroup(
            encoder=encoder,
            states=self.current_states().take(rows),
            policies=self.policies.take(rows),
            traces=(self.traces[0][rows], self.traces[1][rows]) if keeps_traces and self.traces else None,
            items=items,
            lengths=self.lengths[keep],
            deadlines=self.deadlines[keep],
            head_from=self.head_from[keep],
            rule_codes=self.rule_codes[keep],
            oldest_at=self.oldest_at,
            watch=CancellationWatch(self.watch.seen),
            states_layers=self.depth,
            # Requests' rows left early and shadow rows ran on: from here the group waits for the others.
            shadow_only=self.shadow_only or only_shadow_rows(items),
        )

    def merged(self, other: RowGroup, backbone: LayerwiseBackbone, num_layers: int) -> RowGroup:
        """This group and `other` (same depth) as one, padded to the longer of the two."""
        assert other.depth == self.depth
        width = max(self.encoder.hidden.shape[1], other.encoder.hidden.shape[1])
        hidden = torch.cat([_pad_tokens(g.encoder.hidden, width) for g in (self, other)])  # (R1 + R2, T, H)
        mask = torch.cat([_pad_tokens(g.encoder.attention_mask, width) for g in (self, other)])  # (R1 + R2, T)
        traces = None
        if self.traces is not None or other.traces is not None:
            parts = [g.traces or new_traces(g.num_rows, num_layers, hidden.device) for g in (self, other)]
            traces = (torch.cat((parts[0][0], parts[1][0])), torch.cat((parts[0][1], parts[1][1])))
        return RowGroup(
            encoder=backbone.regroup(hidden, mask, self.depth),
            states=self.current_states().cat(other.current_states()),
            policies=self.policies.cat(other.policies),
            traces=traces,
            items=np.concatenate((self.items, other.items)),
            lengths=np.concatenate((self.lengths, other.lengths)),
            deadlines=np.concatenate((self.deadlines, other.deadlines)),
            head_from=np.concatenate((self.head_from, other.head_from)),
            rule_codes=np.concatenate((self.rule_codes, other.rule_codes)),
            oldest_at=min(self.oldest_at, other.oldest_at),
            watch=CancellationWatch(min(self.watch.seen, other.watch.seen)),
            states_layers=self.depth,
            shadow_only=self.shadow_only and other.shadow_only,
        )


def new_traces(count: int, num_layers: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty exit traces for `count` rows: labels (R, L) and confidences (R, L)."""
    return (torch.zeros((count, num_layers), dtype=torch.int64, device=device),
            torch.zeros((count, num_layers), dtype=torch.float64, device=device))  # fmt: skip


def _pad_tokens(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad dimension 1 (tokens) of (R, T, ...) to `width`; a zero mask marks the new positions as padding."""
    missing = width - tensor.shape[1]
    if not missing:
        return tensor
    return functional.pad(tensor, (0, 0) * (tensor.dim() - 2) + (0, missing))
