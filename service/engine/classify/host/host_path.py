"""The host layer path: continuous depth batching with groups of any shape (DESIGN 6), cheapest on the CPU.

Rows carry their own depth and policy state. Queued rows join between any two steps as a new group at depth 0
(embedded together). Each step picks one group (`group_selection`), runs the next encoder layer and, where some
row can use it, that layer's exit head; the array-form policies decide for the whole group in one call; the rows
that exit leave at once (only their label and score are read back, and the distribution or the exit trace when
they asked); the survivors move one layer deeper, where they merge with any group already there. Rows whose client
left or whose deadline passed leave between steps. Host work per step is a fixed number of calls, plus one answer
per row that leaves.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import ClassVar, Protocol

import numpy as np
import torch

from beem.model.layerwise_backbone import EncoderState
from beem.policies.array_policies import ExitObservations, RowPolicies, RowStates, decide
from beem.policies.policy_table import RULE_OF_CLASS
from service.engine.abandoned_rows import CancellationWatch, abandoned_fate
from service.engine.classify.group_selection import pick_group
from service.engine.classify.host.row_group import RowGroup, new_traces
from service.engine.classify.layer_path import LeftRows, PathSetting
from service.engine.classify.tokenized_row import TokenizedRow
from service.engine.queued_row import object_array, only_shadow_rows


class HostPath:
    name: ClassVar[str] = "host"

    def __init__(self, setting: PathSetting) -> None:
        self.setting = setting
        self.bundle = setting.bundle
        self.groups: list[RowGroup] = []  # waiting for their next step, at most one per depth unless too wide
        self._current: RowGroup | None = None  # the group the running step took out of `groups`
        self._layer_batch_size = setting.layer_batch_sizes()
        # What runs a layer and an exit head (`run_layer`, `exit_logits`): the model itself here; the compiled
        # path (`compiled/compiled_path.py`) puts its compiled functions in its place.
        self.layers: LayerRunner = setting.bundle.model

    @property
    def inflight_rows(self) -> int:
        return sum(group.num_rows for group in self.groups) + (self._current.num_rows if self._current else 0)

    @property
    def inflight_tokens(self) -> int:
        return sum(group.padded_tokens for group in self.groups)

    def all_rows(self) -> list[tuple[TokenizedRow, int]]:
        return [(item, group.depth) for group in self.groups for item in group.items]

    def rows_of_failed_step(self) -> list[tuple[TokenizedRow, int]]:
        group, self._current = self._current, None
        return [] if group is None else [(item, group.depth) for item in group.items]

    @torch.inference_mode()
    def warm_up(self) -> None:
        device = self.setting.device
        encoded = self.bundle.tokenizer(["warm up the engine", "and its padded batches, twice"], padding=True,
                                        return_tensors="pt")  # fmt: skip
        for rows in (slice(0, 1), slice(0, 2)):
            self.bundle.model.all_exit_logits(
                encoded["input_ids"][rows].to(device), encoded["attention_mask"][rows].to(device)
            )

    # -- joining ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def join(self, items: Sequence[TokenizedRow], policies: Sequence[RowPolicies], cancellations: int) -> None:
        """Pad the new rows to their longest, embed them: a new group at depth 0."""
        model, num_layers, count, device = self.bundle.model, self.bundle.num_layers, len(items), self.setting.device
        lengths = np.fromiter((item.num_tokens for item in items), dtype=np.int64, count=count)
        longest = int(lengths.max())
        pad_id = self.bundle.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([item.input_ids + [pad_id] * (longest - item.num_tokens) for item in items])
        attention_mask = torch.ones((count, longest), dtype=torch.long)  # (R, T)
        if longest * count != int(lengths.sum()):
            attention_mask = (torch.arange(longest)[None, :] < torch.from_numpy(lengths)[:, None]).long()
        token_types = None
        if items[0].token_type_ids is not None:
            token_types = torch.tensor([(item.token_type_ids or []) + [0] * (longest - item.num_tokens)
                                        for item in items])  # fmt: skip
        move = (lambda t: t.to(device, non_blocking=True)) if device.type == "cuda" else (lambda t: t)
        encoder = model.embed(move(input_ids), move(attention_mask), None if token_types is None else move(token_types))
        first, *more = policies
        group = RowGroup(
            encoder=encoder,
            states=RowStates.fresh(count, device),
            policies=first.cat(*more),  # (R,) per field
            traces=new_traces(count, num_layers, device) if any(i.return_exits for i in items) else None,
            items=object_array(items),
            lengths=lengths,
            deadlines=np.fromiter((item.deadline for item in items), dtype=np.float64, count=count),
            head_from=np.fromiter((_first_exit_head_needed(item) for item in items), dtype=np.int64, count=count),
            rule_codes=np.fromiter((RULE_OF_CLASS[type(item.policy)] for item in items), dtype=np.int64, count=count),
            oldest_at=time.monotonic(),
            watch=CancellationWatch(cancellations),
            shadow_only=only_shadow_rows(items),
        )
        self._place(group)

    def _place(self, group: RowGroup) -> None:
        """Merge into the group already at this depth when the token budget allows, else wait beside it."""
        for index, other in enumerate(self.groups):
            if other.depth == group.depth:
                width = max(other.encoder.hidden.shape[1], group.encoder.hidden.shape[1])
                if (other.num_rows + group.num_rows) * width <= self.setting.budget.max_batch_tokens:
                    self.groups[index] = other.merged(group, self.bundle.model.backbone, self.bundle.num_layers)
                    return
        self.groups.append(group)

    # -- one step ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, cancellations: int) -> None:
        picked = pick_group(self.groups, self.setting.budget.group_selection)
        self._current = picked
        self.groups = [group for group in self.groups if group is not picked]
        group = self._without_abandoned(picked, cancellations)
        self._current = group
        advanced = None if group is None else self._advance(group)
        self._current = advanced  # until it is placed: a failed merge fails these rows, it does not lose them
        if advanced is not None:
            self._place(advanced)
        self._current = None

    def _without_abandoned(self, group: RowGroup, cancellations: int) -> RowGroup | None:
        """Rows whose deadline passed or whose client left leave before this step spends anything on them."""
        now = time.monotonic()
        if not group.watch.may_have_abandoned(group.earliest_deadline, now, cancellations):
            return group  # the usual case: nothing to look at
        gone = group.watch.abandoned(group.items, group.deadlines, now, cancellations)
        if not gone.any():
            return group
        for item in group.items[gone]:
            self.setting.exits.abandoned(item, abandoned_fate(item), group.depth)
        keep = ~gone
        return group.take(keep, self.bundle.model.backbone) if keep.any() else None

    def _advance(self, group: RowGroup) -> RowGroup | None:
        """Layer `depth + 1` and its exit head for the whole group; the rows that exit leave now."""
        layers = self.layers
        layer = group.depth + 1
        self._layer_batch_size[layer].observe(group.num_rows)
        if layer < group.next_head_layer:  # only depth-only rows that do not leave here: skip the head
            group.encoder = layers.run_layer(group.encoder)
            return group
        states = group.current_states()  # caught up to `depth` before this layer
        group.encoder = layers.run_layer(group.encoder)
        logits = layers.exit_logits(group.encoder)  # (R, C)
        observed = ExitObservations.from_logits(logits, group.reads_entropy, group.reads_margin)
        group.states, exits = decide(states, observed, group.policies, group.rules)
        group.states_layers = layer
        if group.traces is not None:
            group.traces[0][:, layer - 1] = observed.labels
            group.traces[1][:, layer - 1] = observed.confidences
        exit_now = exits.cpu().numpy()  # (R,) the step's one read back (a view on CPU)
        if not exit_now.any():
            return group
        self.setting.exits.answered(_left_rows(group, exit_now, observed, logits, layer))
        keep = ~exit_now
        return group.take(keep, self.bundle.model.backbone) if keep.any() else None


class LayerRunner(Protocol):
    """How a path runs the next layer and reads its exit head (a `MultiExitModel`, or compiled functions)."""

    def run_layer(self, state: EncoderState) -> EncoderState: ...

    def exit_logits(self, state: EncoderState) -> torch.Tensor: ...


def _left_rows(
    group: RowGroup, exit_now: np.ndarray, observed: ExitObservations, logits: torch.Tensor, layer: int
) -> LeftRows:
    """Read back what the exited rows (`exit_now`, (R,) bool) need: label and score, plus the logits and the exit
    traces when some row asked for them."""
    rows = np.flatnonzero(exit_now)
    items = group.items[rows]
    if len(rows) == group.num_rows:  # everyone leaves: no gather needed
        labels, scores, exited_logits = observed.labels.tolist(), observed.confidences.tolist(), logits
        index = None
    else:
        index = torch.from_numpy(rows).to(logits.device)
        labels, scores = observed.labels[index].tolist(), observed.confidences[index].tolist()
        exited_logits = logits[index]
    trace_labels = trace_confidences = None
    if group.traces is not None:
        all_labels, all_confidences = group.traces
        if index is not None:
            all_labels, all_confidences = all_labels[index], all_confidences[index]
        trace_labels, trace_confidences = all_labels[:, :layer].tolist(), all_confidences[:, :layer].tolist()
    wanted = any(item.wants_distribution for item in items)
    return LeftRows(rows=items.tolist(), layers=[layer] * len(rows), labels=labels, scores=scores,
                    logits=exited_logits.float().cpu() if wanted else None,
                    trace_labels=trace_labels, trace_confidences=trace_confidences)  # fmt: skip


def _first_exit_head_needed(item: TokenizedRow) -> int:
    """Policies that read exits, and rows that return them, need every exit head; depth-only policies (static,
    full) only the one at the layer they leave."""
    if item.policy.reads_exits or item.return_exits:
        return 1
    return int(min(item.policy.threshold, item.last_layer))
