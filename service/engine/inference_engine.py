"""The classification engine: continuous depth batching (DESIGN 6).

Rows carry their own depth and policy state. Queued rows join between any two steps as a new group at depth 0
(embedded together). Each step picks one group (`group_selection`), runs the next encoder layer and, where some
row can use it, that layer's exit head; the array-form policies decide for the whole group in one call; the rows
that exit are answered at once (only their label and score are read back, and the distribution or the exit trace
when they asked); the survivors move one layer deeper, where they merge with any group already there. Rows whose
client left or whose deadline passed leave between steps. Host work per step is a fixed number of calls, plus one
answer per row that leaves.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from beem.bundle.bundle_reader import LoadedBundle, load_bundle
from beem.bundle.manifest import Manifest
from beem.policies.array_policies import ExitObservations, RowPolicies, RowStates, decide
from beem.policies.exit_policies import ExitPolicy
from beem.policies.policy_table import RULE_OF_CLASS
from service.engine.group_selection import pick_group
from service.engine.row_group import RowGroup, new_traces
from service.engine.row_outcome import ClassAnswer, ExitTrace, RowFate
from service.engine.step_engine import StepEngine
from service.engine.work_item import WorkItem

TASK = "classification"
POLICY_ROW_CACHE_SIZE = 1024  # (policy, depth limit) pairs whose parameter rows are kept ready


class InferenceEngine(StepEngine[LoadedBundle, WorkItem]):
    """The classification engine."""

    task = TASK

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.groups: list[RowGroup] = []  # waiting for their next step, at most one per depth unless too wide
        self._current: RowGroup | None = None  # the group the running step took out of `groups`
        self._policy_row_cache: dict[tuple[ExitPolicy, int], RowPolicies] = {}
        self._layer_batch_size: dict[int, Any] = {}  # per layer, the labelled histogram (looked up once)

    def _load_bundle(self, bundle_path: Path, manifest: Manifest | None) -> LoadedBundle:
        bundle = load_bundle(bundle_path, device=str(self.device), dtype=self.dtype, manifest=manifest)
        self._layer_batch_size = {
            layer: self.metrics.layer_batch_size.labels(str(layer)) for layer in range(1, bundle.num_layers + 1)
        }
        return bundle

    @torch.inference_mode()
    def _warm_up(self) -> None:
        assert self.bundle is not None
        encoded = self.bundle.tokenizer(["warm up the engine", "and its padded batches, twice"], padding=True,
                                        return_tensors="pt")  # fmt: skip
        for rows in (slice(0, 1), slice(0, 2)):
            self.bundle.model.all_exit_logits(
                encoded["input_ids"][rows].to(self.device), encoded["attention_mask"][rows].to(self.device)
            )

    @property
    def inflight_rows(self) -> int:
        return sum(group.num_rows for group in self.groups) + (self._current.num_rows if self._current else 0)

    @property
    def inflight_tokens(self) -> int:
        return sum(group.padded_tokens for group in self.groups)

    def _all_rows(self) -> Sequence[tuple[WorkItem, int]]:
        return [(item, group.depth) for group in self.groups for item in group.items]

    def _rows_of_failed_step(self) -> Sequence[tuple[WorkItem, int]]:
        group, self._current = self._current, None
        return [] if group is None else [(item, group.depth) for item in group.items]

    # -- joining ----------------------------------------------------------------------------------------------

    def _policy_rows(self, item: WorkItem) -> RowPolicies:
        """One row of policy parameters, made once per (policy, depth limit): requests reuse the bundle's
        calibrated policies, so joining rows mostly concatenates ready tensors."""
        key = (item.policy, item.last_layer)
        rows = self._policy_row_cache.get(key)
        if rows is None:
            assert self.bundle is not None
            if len(self._policy_row_cache) >= POLICY_ROW_CACHE_SIZE:
                self._policy_row_cache.clear()
            num_layers = self.bundle.num_layers
            # Built on the host and moved without waiting (a blocking copy would stall the GPU path's stream).
            rows = RowPolicies.of([item.policy], [item.last_layer], num_layers, "cpu")
            rows = rows.to(self.device, non_blocking=True)
            self._policy_row_cache[key] = rows
        return rows

    @torch.inference_mode()
    def _join(self, items: list[WorkItem]) -> None:
        """Pad the new rows to their longest, embed them: a new group at depth 0."""
        assert self.bundle is not None
        model, num_layers, count = self.bundle.model, self.bundle.num_layers, len(items)
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
        move = (lambda t: t.to(self.device, non_blocking=True)) if self.device.type == "cuda" else (lambda t: t)
        encoder = model.embed(move(input_ids), move(attention_mask), None if token_types is None else move(token_types))
        first, *more = [self._policy_rows(item) for item in items]
        policies = first.cat(*more)  # (R,) per field
        group = RowGroup(
            encoder=encoder,
            states=RowStates.fresh(count, self.device),
            policies=policies,
            traces=new_traces(count, num_layers, self.device) if any(i.return_exits for i in items) else None,
            items=object_array(items),
            lengths=lengths,
            deadlines=np.fromiter((item.deadline for item in items), dtype=np.float64, count=count),
            head_from=np.fromiter((_first_exit_head_needed(item) for item in items), dtype=np.int64, count=count),
            rule_codes=np.fromiter((RULE_OF_CLASS[type(item.policy)] for item in items), dtype=np.int64, count=count),
            oldest_at=time.monotonic(),
            cancellations_seen=self._cancellations,
            shadow_only=all(item.shadow for item in items),
        )
        self._place(group)

    def _place(self, group: RowGroup) -> None:
        """Merge into the group already at this depth when the token budget allows, else wait beside it."""
        for index, other in enumerate(self.groups):
            if other.depth == group.depth:
                width = max(other.encoder.hidden.shape[1], group.encoder.hidden.shape[1])
                if (other.num_rows + group.num_rows) * width <= self.budget.max_tokens:
                    assert self.bundle is not None
                    self.groups[index] = other.merged(group, self.bundle.model.backbone, self.bundle.num_layers)
                    return
        self.groups.append(group)

    # -- one step ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _step(self) -> None:
        assert self.bundle is not None
        picked = pick_group(self.groups, self.budget.group_selection)
        self._current = picked
        self.groups = [group for group in self.groups if group is not picked]
        group = self._without_abandoned(picked)
        self._current = group
        advanced = None if group is None else self._advance(group)
        self._current = advanced  # until it is placed: a failed merge fails these rows, it does not lose them
        if advanced is not None:
            self._place(advanced)
        self._current = None

    def _without_abandoned(self, group: RowGroup) -> RowGroup | None:
        """Rows whose deadline passed or whose client left leave before this step spends anything on them."""
        now = time.monotonic()
        if group.earliest_deadline > now and group.cancellations_seen == self._cancellations:
            return group  # the usual case: nothing to look at
        timed_out = group.deadlines <= now
        cancelled = np.zeros_like(timed_out)
        if group.cancellations_seen != self._cancellations:  # a client left somewhere since this group was looked at
            cancelled = np.fromiter((item.cancelled for item in group.items), dtype=bool, count=group.num_rows)
            group.cancellations_seen = self._cancellations
        if not (timed_out.any() or cancelled.any()):
            return group
        for item in group.items[cancelled]:
            self._drop([item], item.cancelled_as, group.depth)
        self._drop(group.items[timed_out & ~cancelled], RowFate.TIMEOUT, group.depth)
        keep = ~(timed_out | cancelled)
        assert self.bundle is not None
        return group.take(keep, self.bundle.model.backbone) if keep.any() else None

    def _advance(self, group: RowGroup) -> RowGroup | None:
        """Layer `depth + 1` and its exit head for the whole group; the rows that exit are answered now."""
        assert self.bundle is not None
        model = self.bundle.model
        layer = group.depth + 1
        self._layer_batch_size[layer].observe(group.num_rows)
        if layer < group.next_head_layer:  # only depth-only rows that do not leave here: skip the head
            group.encoder = model.run_layer(group.encoder)
            return group
        states = group.current_states()  # caught up to `depth` before this layer
        group.encoder = model.run_layer(group.encoder)
        logits = model.exit_logits(group.encoder)  # (R, C)
        observed = ExitObservations.from_logits(logits, with_entropy=group.reads_entropy)
        group.states, exits = decide(states, observed, group.policies, group.rules)
        group.states_layers = layer
        if group.traces is not None:
            group.traces[0][:, layer - 1] = observed.labels
            group.traces[1][:, layer - 1] = observed.confidences
        exit_now = exits.cpu().numpy()  # (R,) the step's one read back (a view on CPU)
        if not exit_now.any():
            return group
        self._answer_exited(group, exit_now, observed, logits, layer)
        keep = ~exit_now
        return group.take(keep, model.backbone) if keep.any() else None

    def _answer_exited(
        self, group: RowGroup, exit_now: np.ndarray, observed: ExitObservations, logits: torch.Tensor, layer: int
    ) -> None:
        """Read back what the exited rows need, and answer each: label and score, plus the distribution and the
        exit trace for rows that asked for them."""
        rows = np.flatnonzero(exit_now)
        items = group.items[rows]
        if len(rows) == group.num_rows:  # everyone leaves: no gather needed
            labels, scores, exited_logits = observed.labels.tolist(), observed.confidences.tolist(), logits
            index = None
        else:
            index = torch.from_numpy(rows).to(logits.device)
            labels, scores = observed.labels[index].tolist(), observed.confidences[index].tolist()
            exited_logits = logits[index]
        probabilities: list[list[float]] | None = None
        raw: list[list[float]] | None = None
        if any(item.wants_distribution for item in items):
            raw_logits = exited_logits.float()  # (E, C)
            probabilities, raw = torch.softmax(raw_logits, dim=-1).tolist(), raw_logits.tolist()
        traces: list[list[int]] | None = None
        trace_confidences: list[list[float]] | None = None
        if group.traces is not None:
            trace_labels, trace_values = group.traces
            if index is not None:
                trace_labels, trace_values = trace_labels[index], trace_values[index]
            traces, trace_confidences = trace_labels[:, :layer].tolist(), trace_values[:, :layer].tolist()
        for slot, item in enumerate(items):
            exits: tuple[ExitTrace, ...] = ()
            if item.return_exits and traces is not None and trace_confidences is not None:
                exits = tuple(ExitTrace(i + 1, label, confidence)
                              for i, (label, confidence) in enumerate(zip(traces[slot], trace_confidences[slot],
                                                                          strict=True)))  # fmt: skip
            distribution = probabilities is not None and raw is not None and item.wants_distribution
            answer = ClassAnswer(
                label=labels[slot],
                score=scores[slot],
                exit_layer=layer,
                probabilities=tuple(probabilities[slot]) if distribution and probabilities else None,
                logits=tuple(raw[slot]) if distribution and raw else None,
                exits=exits,
            )
            self._answer(item, answer, (layer,))


def _first_exit_head_needed(item: WorkItem) -> int:
    """Policies that read exits, and rows that return them, need every exit head; depth-only policies (static,
    full) only the one at the layer they leave."""
    if item.policy.reads_exits or item.return_exits:
        return 1
    return int(min(item.policy.threshold, item.last_layer))


def object_array(items: list[WorkItem]) -> np.ndarray:
    """(R,) object array of the items (numpy selects rows of it with a mask in one call)."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array
