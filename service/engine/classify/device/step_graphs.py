"""CUDA graphs for the GPU path's layer steps (`device_step.py`), one per (kind, layer, rows, tokens) bucket,
captured at warm-up into one shared memory pool; any other shape, or a capture that failed, runs eagerly.

A step's kernels are small for an encoder like MiniLM (a layer at 32 rows is tens of microseconds on an H100),
so launching them one by one from Python is what limits a step; a replay launches them all at once. Each bucket
shape has static input tensors that every layer's graphs read: a step copies its group in, replays, and clones
the outputs out (a later replay of any graph in the pool overwrites them).

On the CPU nothing is captured: every step is eager, through the same functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from service.engine.classify.device.device_step import DeviceStep
from service.engine.classify.device.step_buckets import StepBuckets

log = logging.getLogger(__name__)
KINDS = ("layer_only", "with_exit")
WARM_UP_RUNS = 2  # eager runs on a side stream before capture, as torch's CUDA graph notes ask


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    outputs: tuple[torch.Tensor, ...]


@dataclass
class _StaticInputs:
    hidden: torch.Tensor  # (R, T, H)
    mask: torch.Tensor  # (R, T)
    table: torch.Tensor  # (R, K)


class StepGraphs:
    def __init__(self, step: DeviceStep, buckets: StepBuckets, num_layers: int) -> None:
        self.step = step
        self.buckets = buckets
        self.num_layers = num_layers
        self._graphs: dict[tuple[str, int, int, int], _Captured] = {}
        self._inputs: dict[tuple[int, int], _StaticInputs] = {}
        self.replays = 0  # steps that ran as a graph
        self.eager_steps = 0  # steps that ran eagerly (odd shapes, the CPU, failed captures)
        self.capture_failures = 0

    def _function(self, kind: str) -> Callable[..., tuple[torch.Tensor, ...]]:
        return self.step.layer_only if kind == "layer_only" else self.step.with_exit

    def capture(self, hidden_size: int, dtype: torch.dtype, device: torch.device) -> int:
        """Capture every bucket shape's graphs (CUDA only); returns how many. A shape whose capture fails is
        logged and left to eager steps."""
        if device.type != "cuda":
            return 0
        self._graphs.clear()
        self._inputs.clear()
        pool = torch.cuda.graph_pool_handle()
        for rows, tokens in self.buckets.shapes():
            inputs = _StaticInputs(
                hidden=torch.zeros((rows, tokens, hidden_size), dtype=dtype, device=device),
                mask=torch.ones((rows, tokens), dtype=torch.long, device=device),
                table=self.step.columns.placeholders(rows, device),
            )
            self._inputs[(rows, tokens)] = inputs
            for layer in range(1, self.num_layers + 1):
                for kind in KINDS:
                    try:
                        self._graphs[(kind, layer, rows, tokens)] = self._capture_one(kind, layer, inputs, pool)
                    except Exception:  # a shape that cannot be captured still runs, eagerly
                        log.exception("CUDA graph capture failed for %s layer %d at %dx%d", kind, layer, rows, tokens)
                        if self.step.decide != self.step.decide_rows:  # the compiled decision may be why: drop it
                            self.step.eager_decisions()
                            self.capture_failures += 1
                            return self.capture(hidden_size, dtype, device)
        torch.cuda.synchronize()
        return len(self._graphs)

    def _capture_one(self, kind: str, layer: int, inputs: _StaticInputs, pool: Any) -> _Captured:
        function = self._function(kind)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARM_UP_RUNS):
                function(layer, inputs.hidden, inputs.mask, inputs.table)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs = function(layer, inputs.hidden, inputs.mask, inputs.table)
        return _Captured(graph, outputs)

    @property
    def captured(self) -> int:
        return len(self._graphs)

    def has_graph(self, kind: str, layer: int, rows: int, tokens: int) -> bool:
        return (kind, layer, rows, tokens) in self._graphs

    def run(
        self, kind: str, layer: int, hidden: torch.Tensor, mask: torch.Tensor, table: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step: hidden, mask and table after it (the mask reordered with the rows by a `with_exit` step)."""
        rows, tokens = mask.shape
        captured = self._graphs.get((kind, layer, rows, tokens))
        if captured is None:
            self.eager_steps += 1
            if kind == "layer_only":
                hidden, table = self.step.layer_only(layer, hidden, mask, table)
                return hidden, mask, table
            return self.step.with_exit(layer, hidden, mask, table)
        self.replays += 1
        inputs = self._inputs[(rows, tokens)]
        torch._foreach_copy_([inputs.hidden, inputs.mask, inputs.table], [hidden, mask, table])
        captured.graph.replay()
        if kind == "layer_only":
            out_hidden, out_table = captured.outputs
            return out_hidden.clone(), mask, out_table.clone()
        out_hidden, out_mask, out_table = captured.outputs
        return out_hidden.clone(), out_mask.clone(), out_table.clone()
