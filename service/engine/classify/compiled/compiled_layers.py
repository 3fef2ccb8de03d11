"""Each encoder layer and each exit head compiled once with `torch.compile` (inductor, dynamic shapes), with eager
as the fallback: what the compiled layer path (`compiled_path.py`) runs instead of the model's own calls.

One compiled function per layer and per head (the index is a constant of its graph). Dynamic shapes: one graph
serves every sequence length and every row count above one (inductor specializes a size of 1, so batch 1 has its
own), so groups that merge and shrink do not recompile; `bench/compiled_layer_step.py` measured static shapes
padded to buckets slower once the padding is paid. The exit decision stays eager: at batch 1 a compiled call's
guards cost more than the decision's few small ops (issue 24 note).

If compiling or running a compiled graph raises (no C++ compiler, an operator inductor cannot lower), the call is
run eagerly and every later call too: the path keeps serving, and `fallback_reason` says why.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from beem.model.layerwise_backbone import EncoderState
from beem.model.multi_exit_model import MultiExitModel

log = logging.getLogger(__name__)
Compiler = Callable[..., Callable[..., Any]]  # torch.compile's signature: (function, dynamic=...) -> function


class CompiledLayers:
    """`run_layer` and `exit_logits` of a `MultiExitModel`, compiled (or eager after a failure)."""

    def __init__(self, model: MultiExitModel, compiler: Compiler | None = None) -> None:
        """`compiler`: torch.compile unless given (looked up here, so a test can replace it)."""
        self.model = model
        compiler = compiler or torch.compile
        num_layers = model.backbone.num_layers
        self.fallback_reason: str | None = None
        try:
            self._layers = [compiler(_layer_step(model, i), dynamic=True) for i in range(num_layers)]
            self._heads = [compiler(_head_step(model, i), dynamic=True) for i in range(num_layers)]
        except Exception as error:  # compile itself is lazy: this is torch refusing the backend up front
            self._fall_back(error)

    @property
    def compiled(self) -> bool:
        return self.fallback_reason is None

    def run_layer(self, state: EncoderState) -> EncoderState:
        """The model's `run_layer`: layer `state.layers_done + 1` on every row."""
        index = state.layers_done
        arguments = (_dense(state.hidden), state.layer_mask, state.position_bias)  # (B, T, H), mask, bias
        if self.fallback_reason is None:
            try:
                hidden = self._layers[index](*arguments)
                return replace(state, hidden=hidden, layers_done=index + 1)
            except Exception as error:
                self._fall_back(error)
        return self.model.run_layer(state)

    def exit_logits(self, state: EncoderState) -> torch.Tensor:
        """The model's `exit_logits`: (B, C) logits of the exit after the last layer run."""
        if self.fallback_reason is None:
            try:
                weights = state.pool_weights
                weights = None if weights is None else (_dense(weights[0]), _dense(weights[1]))
                logits: torch.Tensor = self._heads[state.layers_done - 1](_dense(state.hidden),
                                                                          state.attention_mask, weights)  # fmt: skip
                return logits
            except Exception as error:
                self._fall_back(error)
        return self.model.exit_logits(state)

    def _fall_back(self, error: Exception) -> None:
        self.fallback_reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        log.warning("compiled layer path: compiling failed, running eagerly from now on (%s)", self.fallback_reason)


def _dense(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` with the strides of a fresh one of its shape. A group whose padding was trimmed holds a view
    (B, T', H) of (B, T, H), and a graph is guarded on its inputs' strides, so a view would compile a graph of its
    own (seconds, mid-serving). Not `contiguous()`: a view of one row (1, T', H) counts as contiguous whatever its
    first stride, and the guard still fails."""
    strides, expected = tensor.stride(), 1
    for size, stride in zip(reversed(tensor.shape), reversed(strides), strict=True):
        if stride != expected:
            return tensor.clone(memory_format=torch.contiguous_format)
        expected *= size
    return tensor


# Dynamo keeps its graphs per code object and checks a call's guards against each of them in turn: functions that
# share one (closures of one `def`, partials of one method) share one list, every call of layer 6 first failing
# the guards of layers 1 to 5, in every shape seen. A code object of its own per layer and per head keeps each
# list to that function's few shapes (measured: sharing made batch 1 0.84x eager, mixed batches 0.40x).


def _layer_step(model: MultiExitModel, index: int) -> Callable[..., torch.Tensor]:
    def layer_step(hidden: torch.Tensor, layer_mask: Any, position_bias: torch.Tensor | None) -> torch.Tensor:
        return model.backbone.forward_layer(index, hidden, layer_mask, position_bias)  # (B, T, H)

    return _with_own_code(layer_step, f"layer_{index + 1}_step")


def _head_step(model: MultiExitModel, index: int) -> Callable[..., torch.Tensor]:
    def head_step(hidden: torch.Tensor, attention_mask: torch.Tensor, pool_weights: Any) -> torch.Tensor:
        logits: torch.Tensor = model.heads(index, hidden, attention_mask, pool_weights)  # (B, C)
        return logits

    return _with_own_code(head_step, f"exit_head_{index + 1}_step")


def _with_own_code(function: Callable[..., torch.Tensor], name: str) -> Callable[..., torch.Tensor]:
    code = function.__code__.replace(co_name=name)
    own: Callable[..., torch.Tensor] = types.FunctionType(code, function.__globals__, name, function.__defaults__,
                                                          function.__closure__)  # fmt: skip
    return own
