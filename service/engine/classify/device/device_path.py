"""The device layer path (DESIGN 6, the GPU bullet): the classification engine's steps with the rows' state and
decisions kept on the device.

What differs from the host path:
- A group is padded to a rows x tokens bucket (`step_buckets.py`) and rows join in groups of one token bucket,
  so every step has a shape a CUDA graph was captured for (`step_graphs.py`; others run eagerly).
- A step (`device_step.py`) runs the layer, the exit head, the array-form decision for every row, writes the
  answers of the rows that leave into the row table and compacts the rows still in flight to the front, all on the
  device. No index is built on the host.
- The host reads back one thing per step, the row table (R, K) in one non-blocking copy into pinned memory
  (`packet_reader.py`), and only at layers where some row can leave (`beem/policies/earliest_exit.py`). It reads a
  step's packet after queueing the next step, so the device works while the host answers rows: the engine runs
  one step ahead of what it has read. A row's answer leaves as soon as its packet is read.
- A group only changes shape (a smaller bucket, merged with another) when nothing of it is unread.
- A new group whose exits are not expected to pay (`exit_savings.py`) runs at full depth, its heads skipped.
The full-depth baseline runs through the same path (its groups are depth-only rows: layer-only steps and one
read back at the last layer), so a ratio between the two measures early exit, not engineering.

`engine_path` picks it: "auto" uses it on CUDA; the CPU keeps the host path (`host/host_path.py`), whose
per-step Python is cheaper there than padding to buckets. Tests run this path on the CPU too: same code, eager.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from beem.policies.array_policies import RowPolicies
from beem.policies.policy_table import earliest_exit_layer
from service.engine.abandoned_rows import CancellationWatch, abandoned_fate
from service.engine.classify.device.device_group import DeviceGroup, padded
from service.engine.classify.device.device_step import DeviceStep
from service.engine.classify.device.exit_savings import ExitSavings
from service.engine.classify.device.packet_reader import Packet, PacketReader
from service.engine.classify.device.row_columns import DROPPED, RowColumns
from service.engine.classify.device.step_buckets import StepBuckets
from service.engine.classify.device.step_graphs import StepGraphs
from service.engine.classify.group_selection import pick_group
from service.engine.classify.layer_path import LeftRows, PathSetting
from service.engine.classify.tokenized_row import TokenizedRow
from service.engine.queued_row import object_array, only_shadow_rows

COST_REPEATS = 5  # replays timed per bucket shape and kind at warm-up


@dataclass(frozen=True)
class DevicePathOptions:
    buckets: StepBuckets = field(default_factory=StepBuckets)
    cuda_graphs: bool = True
    skip_unprofitable_exits: bool = True
    compile_decisions: bool = True  # CUDA only: fuse the decision's kernels (torch.compile), eager if that fails


DEFAULT_DEVICE_PATH_OPTIONS = DevicePathOptions()


class DevicePath:
    name: ClassVar[str] = "device"

    def __init__(self, setting: PathSetting, options: DevicePathOptions = DEFAULT_DEVICE_PATH_OPTIONS) -> None:
        self.setting = setting
        self.options = options
        bundle, device = setting.bundle, setting.device
        self.bundle = bundle
        self.device, self.dtype = device, setting.dtype
        self.buckets = StepBuckets(options.buckets.rows, options.buckets.tokens,
                                   min(options.buckets.max_padded_tokens, setting.budget.max_batch_tokens))  # fmt: skip
        num_layers = bundle.num_layers
        self.columns = RowColumns(num_layers, bundle.model.num_labels)
        self.graphs = StepGraphs(DeviceStep(bundle.model, self.columns), self.buckets, num_layers)
        self.graphs.step.make_layer_values(num_layers, device)
        self.reader = PacketReader(device, self.columns.width, max(self.buckets.rows))
        self.savings = ExitSavings(num_layers)
        self.groups: list[DeviceGroup] = []
        self._current: DeviceGroup | None = None  # the group the running step works on
        self._unread_packet: tuple[DeviceGroup, Packet] | None = None  # the last step's packet, not read yet
        self.compile_error: str | None = None  # why decisions stayed eager on CUDA, if they did
        metrics = setting.metrics
        self._steps_run = {run: metrics.device_steps.labels(run) for run in ("graph", "eager")}
        self._layer_batch_size = setting.layer_batch_sizes()

    # -- warming up -------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def warm_up(self) -> None:
        model = self.bundle.model
        # One eager pass of each kind (lazy initialisation off the first request's clock).
        rows, tokens = self.buckets.rows[0], self.buckets.tokens[0]
        hidden = torch.zeros((rows, tokens, model.backbone.hidden_size), dtype=self.dtype, device=self.device)
        mask = torch.ones((rows, tokens), dtype=torch.long, device=self.device)
        table = self.columns.placeholders(rows, self.device)
        self.graphs.step.layer_only(1, hidden, mask, table)
        self.graphs.step.with_exit(1, hidden, mask, table)
        if self.device.type == "cuda" and self.options.compile_decisions:
            sample = torch.zeros((rows, model.num_labels), dtype=self.dtype, device=self.device)
            self.compile_error = self.graphs.step.compile_decisions(sample, table)
        if self.device.type == "cuda" and self.options.cuda_graphs:
            self.graphs.capture(model.backbone.hidden_size, self.dtype, self.device)
            if self.options.skip_unprofitable_exits:
                self.savings.costs = self._measure_step_costs(model.backbone.hidden_size)

    def _measure_step_costs(self, hidden_size: int) -> dict[tuple[str, int, int], float]:
        """Seconds per replay of layer 1's graphs at every bucket shape (CUDA events)."""
        costs = {}
        for rows, tokens in self.buckets.shapes():
            hidden = torch.zeros((rows, tokens, hidden_size), dtype=self.dtype, device=self.device)
            mask = torch.ones((rows, tokens), dtype=torch.long, device=self.device)
            table = self.columns.placeholders(rows, self.device)
            for kind in ("layer_only", "with_exit"):
                if not self.graphs.has_graph(kind, 1, rows, tokens):
                    continue
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(COST_REPEATS):
                    self.graphs.run(kind, 1, hidden, mask, table)
                end.record()
                end.synchronize()
                costs[(kind, rows, tokens)] = start.elapsed_time(end) / 1000 / COST_REPEATS
        self.graphs.replays = 0
        return costs

    # -- what the engine asks --------------------------------------------------------------------------------

    @property
    def inflight_rows(self) -> int:
        return sum(group.live for group in self.groups)

    @property
    def inflight_tokens(self) -> int:
        return sum(group.padded_tokens for group in self.groups if group.live)

    def all_rows(self) -> list[tuple[TokenizedRow, int]]:
        return [(item, group.depth) for group in self.groups for item in group.items if item is not None]

    def rows_of_failed_step(self) -> list[tuple[TokenizedRow, int]]:
        group, self._current = self._current, None
        if group is None:
            return []
        if group in self.groups:
            self.groups.remove(group)
        if self._unread_packet is not None and self._unread_packet[0] is group:
            self._unread_packet = None
        return [(item, group.depth) for item in group.items if item is not None]

    # -- joining ----------------------------------------------------------------------------------------------

    def join(self, items: Sequence[TokenizedRow], policies: Sequence[RowPolicies], cancellations: int) -> None:
        """Rows by length, cut into groups of one token bucket and at most the largest row bucket."""
        order = sorted(range(len(items)), key=lambda row: items[row].num_tokens)
        by_length = [(items[row], policies[row]) for row in order]
        largest_rows = self.buckets.rows[-1]
        start = 0
        while start < len(by_length):
            bucket = self.buckets.token_bucket(by_length[start][0].num_tokens)
            end = start + 1
            while end < len(by_length) and end - start < largest_rows:
                if self.buckets.token_bucket(by_length[end][0].num_tokens) != bucket:
                    break
                end += 1
            part = by_length[start:end]
            self._join_group([item for item, _ in part], [rows for _, rows in part], cancellations)
            start = end

    @torch.inference_mode()
    def _join_group(self, items: list[TokenizedRow], policies: list[RowPolicies], cancellations: int) -> None:
        model, count = self.bundle.model, len(items)
        lengths = np.fromiter((item.num_tokens for item in items), dtype=np.int64, count=count)
        shape = self.buckets.shape(count, int(lengths.max()))
        pad_id = self.bundle.tokenizer.pad_token_id or 0
        ids = torch.full((count, shape.tokens), pad_id, dtype=torch.long)
        mask = torch.zeros((shape.rows, shape.tokens), dtype=torch.long)
        mask[count:, 0] = 1  # placeholder rows attend to one token, so no softmax row is empty
        token_types = None if items[0].token_type_ids is None else torch.zeros((count, shape.tokens), dtype=torch.long)
        for row, item in enumerate(items):
            ids[row, : item.num_tokens] = torch.tensor(item.input_ids)
            mask[row, : item.num_tokens] = 1
            if token_types is not None and item.token_type_ids is not None:
                token_types[row, : item.num_tokens] = torch.tensor(item.token_type_ids)
        device = self.device
        on_device = None if token_types is None else token_types.to(device, non_blocking=True)
        hidden = model.backbone.embed_hidden(ids.to(device, non_blocking=True), on_device)  # (n, T, H)
        first, *more = policies
        table = self.columns.new_rows(first.cat(*more), torch.arange(count, device=device))
        table = torch.cat((table, self.columns.placeholders(shape.rows - count, device)))
        exit_layers = [earliest_exit_layer(item.policy, item.last_layer) for item in items]
        heads = [1 if item.policy.reads_exits or item.return_exits else exit_layers[i] for i, item in enumerate(items)]
        group = DeviceGroup(
            hidden=padded(hidden, shape.rows, shape.tokens), mask=mask.to(device, non_blocking=True), table=table,
            items=object_array(items), lengths=lengths,
            deadlines=np.fromiter((item.deadline for item in items), dtype=np.float64, count=count),
            live=count, depth=0, head_from=min(heads), exit_from=min(exit_layers),
            last_layer=max(item.last_layer for item in items), oldest_at=time.monotonic(),
            watch=CancellationWatch(cancellations), shadow_only=only_shadow_rows(items),
        )  # fmt: skip
        if self._exits_would_not_pay(group, items, shape.rows, shape.tokens):
            group.table = self.columns.as_full_depth(group.table)
            group.full_depth = True
            group.head_from = group.exit_from = min(
                item.last_layer if item.policy.reads_exits else layer
                for item, layer in zip(items, exit_layers, strict=True)
            )
            for item in items:
                if item.policy.reads_exits:
                    self.setting.metrics.exit_heads_skipped.labels(item.policy_name).inc()
        self.groups.append(group)

    def _exits_would_not_pay(self, group: DeviceGroup, items: list[TokenizedRow], rows: int, tokens: int) -> bool:
        if not self.options.skip_unprofitable_exits or any(item.return_exits for item in items):
            return False
        readers = [item.policy for item in items if item.policy.reads_exits]
        if not readers or any(item.last_layer != self.savings.num_layers for item in items):
            return False
        return not self.savings.exits_pay(readers, rows, tokens, lambda n: self.buckets.shape(n, tokens).rows)

    # -- one step ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, cancellations: int) -> None:
        unread = self._unread_packet
        if unread is not None and unread[1].event is not None and unread[1].event.query():
            self._read_pending()  # already here: read it before choosing (no step runs on rows that have left)
        stepping = [group for group in self.groups if group.live]
        if not stepping:
            self._read_pending()
            return
        group = pick_group(stepping, self.setting.budget.group_selection)
        self._current = group
        if group.depth >= group.last_layer:  # every layer has run: only its last packet is left to read
            self._read_pending()
            if group.live:
                raise RuntimeError(f"{group.live} rows ran every layer without an answer")
            self._current = None
            return
        self._drop_abandoned(group, cancellations)
        if not group.live:  # every row left: nothing more to run (a packet under way still gets read)
            if not group.unread:
                self.groups.remove(group)
            self._current = None
            return
        if group.live != group.fitted_live:
            self._fit(group)
        layer = group.depth + 1
        kind = "layer_only" if layer < group.head_from else "with_exit"
        self._layer_batch_size[layer].observe(group.live)
        group.hidden, group.mask, group.table = self.graphs.run(kind, layer, group.hidden, group.mask, group.table)
        group.depth = layer
        self._steps_run["graph" if self.graphs.has_graph(kind, layer, *group.mask.shape) else "eager"].inc()
        sent = None
        if kind == "with_exit" and layer >= group.exit_from:
            sent = (group, self.reader.send(group.table))
            group.unread += 1
            self.setting.metrics.step_readbacks.inc()
        self._read_pending()  # the step before this one: the device runs this one meanwhile
        self._unread_packet = sent
        if sent is not None and sent[1].event is None:  # the CPU: the table is already here
            self._read_pending()
        self._merge_groups()
        self._current = None

    def _fit(self, group: DeviceGroup) -> None:
        """A smaller bucket once enough rows have left. Safe with a step under way: the rows the host has not seen
        leave are the first `live` rows of its output (in flight first, then the rows that left in it, whose
        answers its packet copied before any cut), and a cut is a view that later steps read in stream order."""
        group.fitted_live = group.live
        shape = self.buckets.shape(group.live, group.longest_live())
        if shape.rows < group.capacity or shape.tokens < group.width:
            group.cut(min(shape.rows, group.capacity), min(shape.tokens, group.width))

    def _drop_abandoned(self, group: DeviceGroup, cancellations: int) -> None:
        """Rows whose deadline passed or whose client left: they leave now, marked on the device."""
        now = time.monotonic()
        if not group.watch.may_have_abandoned(group.earliest_deadline, now, cancellations):
            return
        slots = np.flatnonzero(group.watch.abandoned(group.items, group.deadlines, now, cancellations)).tolist()
        if not slots:
            return
        for slot in slots:
            item = group.items[slot]
            self.setting.exits.abandoned(item, abandoned_fate(item), group.depth)
            group.items[slot] = None
            group.deadlines[slot] = np.inf
        group.live -= len(slots)
        by_slot = torch.zeros(len(group.items), dtype=torch.bool)  # (N,) True for the slots dropped now
        by_slot[slots] = True
        row_ids = group.table[:, self.columns.ROW_ID].long()  # (R,) -1 for placeholders
        dropped = by_slot.to(self.device, non_blocking=True)[row_ids.clamp(min=0)] & (row_ids >= 0)  # (R,)
        done = group.table[:, self.columns.DONE]
        group.table = group.table.clone()
        group.table[:, self.columns.DONE] = torch.where(dropped, DROPPED, done)
        group.compact(self.columns)

    # -- reading a packet: the rows that left are answered ---------------------------------------------------

    def _read_pending(self) -> None:
        if self._unread_packet is None:
            return
        (group, packet), self._unread_packet = self._unread_packet, None
        table = packet.read()  # (R, K)
        group.unread -= 1
        self._hand_back_left(group, table)
        if not group.live and not group.unread and group in self.groups:
            self.groups.remove(group)

    def _hand_back_left(self, group: DeviceGroup, table: np.ndarray) -> None:
        """The rows of a read packet (R, K) that left and that the host has not seen leave yet: out of the group,
        into the exit statistics, and handed back with what their answers need."""
        c = self.columns  # the column layout
        done = table[:, c.DONE]
        left = np.flatnonzero(done > 0)
        if not len(left):
            return
        slots = table[left, c.ROW_ID].astype(np.int64)
        fresh = np.fromiter((group.items[slot] is not None for slot in slots), dtype=bool, count=len(slots))
        rows, slots = left[fresh], slots[fresh]
        if not len(rows):
            return
        items: list[TokenizedRow] = [group.items[slot] for slot in slots.tolist()]
        layers = done[rows].astype(np.int64).tolist()
        for item, slot, layer in zip(items, slots.tolist(), layers, strict=True):
            group.items[slot] = None
            group.deadlines[slot] = np.inf
            group.live -= 1
            if not group.full_depth and item.policy.reads_exits and item.last_layer == self.savings.num_layers:
                self.savings.record(item.policy, layer)  # the histograms the skip rule reads: uncapped rows only
        wants_distribution = any(item.wants_distribution for item in items)
        returns_exits = any(item.return_exits for item in items)
        self.setting.exits.answered(LeftRows(
            rows=items, layers=layers, labels=table[rows, c.LABEL].astype(np.int64).tolist(),
            scores=table[rows, c.CONFIDENCE].tolist(),
            logits=torch.from_numpy(table[rows][:, c.logits]).float() if wants_distribution else None,  # float32 values
            trace_labels=table[rows][:, c.trace_labels].astype(np.int64).tolist() if returns_exits else None,
            trace_confidences=table[rows][:, c.trace_confidences].tolist() if returns_exits else None,
        ))  # fmt: skip
        if not group.shadow_only:  # requests' rows left early and shadow rows ran on: the group waits for the others
            group.shadow_only = only_shadow_rows(group.items)

    # -- merging ----------------------------------------------------------------------------------------------

    def _merge_groups(self) -> None:
        """Two groups at one depth, both fully read, become one when the merged shape is a bucket (within the token
        budget, `buckets.max_padded_tokens`)."""
        ready = [group for group in self.groups if group.live and not group.unread]
        for index, first in enumerate(ready):
            for second in ready[index + 1 :]:
                if first.depth != second.depth or first.full_depth != second.full_depth:
                    continue
                rows, longest = first.live + second.live, max(first.longest_live(), second.longest_live())
                shape = self.buckets.shape(rows, longest)
                if not shape.bucketed:  # odd shapes stay apart: a merge must not turn graph steps into eager ones
                    continue
                self._merge(first, second, shape.rows, shape.tokens)
                return  # one merge per step: the list changed

    def _merge(self, first: DeviceGroup, second: DeviceGroup, rows: int, tokens: int) -> None:
        parts = []
        offset = len(first.items)
        for group, shift in ((first, 0), (second, offset)):
            width = min(group.width, tokens)
            hidden, mask = group.hidden[: group.live, :width], group.mask[: group.live, :width]
            table = group.table[: group.live].clone()
            table[:, self.columns.ROW_ID] += shift
            parts.append((padded(hidden, group.live, tokens), padded(mask, group.live, tokens), table))
        live = first.live + second.live
        hidden = padded(torch.cat([p[0] for p in parts]), rows, tokens)
        mask = padded(torch.cat([p[1] for p in parts]), rows, tokens)
        mask[live:, 0] = 1
        table = torch.cat([*(p[2] for p in parts), self.columns.placeholders(rows - live, self.device)])
        merged = DeviceGroup(
            hidden=hidden, mask=mask, table=table, items=np.concatenate((first.items, second.items)),
            lengths=np.concatenate((first.lengths, second.lengths)),
            deadlines=np.concatenate((first.deadlines, second.deadlines)), live=live, depth=first.depth,
            head_from=min(first.head_from, second.head_from), exit_from=min(first.exit_from, second.exit_from),
            last_layer=max(first.last_layer, second.last_layer), oldest_at=min(first.oldest_at, second.oldest_at),
            watch=CancellationWatch(min(first.watch.seen, second.watch.seen)), full_depth=first.full_depth,
            shadow_only=first.shadow_only and second.shadow_only,
        )  # fmt: skip
        self.groups = [g for g in self.groups if g is not first and g is not second] + [merged]
