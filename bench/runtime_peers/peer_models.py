"""The full-depth runtimes our server is compared with (issue 24), each built from the bundle's own weights: the
encoder's forward at full depth, then the final exit head, as one `FullDepthForward` module.

- `plain`: that module in eager PyTorch (transformers' default attention), what a plain transformers endpoint runs;
- `onnx-fp32`: exported by `torch.onnx.export` (eager attention, so ONNX Runtime's transformer optimizer
  recognises it), fused by `onnxruntime.transformers.optimizer` (embedding LayerNorm, attention, bias GELU, skip
  LayerNorm: what optimum's optimization levels apply) and run by ONNX Runtime with every graph optimization;
- `onnx-int8`: the fused graph with its weights quantized to int8 by `quantize_dynamic` (activations quantized at
  run time), as optimum's dynamic quantization does;
- `torch-compile`: the module compiled by `torch.compile` (inductor, dynamic shapes), its compilation timed.

Every peer turns a batch of texts into (B, C) logits with the bundle's tokenizer, padded to the longest text.
`onnxruntime` and `onnx` are the `bench` extra of pyproject.toml, not server dependencies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from beem.bundle.bundle_reader import LoadedBundle

PEERS = ("plain", "onnx-fp32", "onnx-int8", "torch-compile")
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ONNX_OPSET = 17
WARM_UP_TEXTS = ("warm up", "and a longer text to warm up a second sequence length with")


class FullDepthForward(nn.Module):
    """(B, T) token ids, mask and token types -> (B, C) logits of the final exit, through the encoder's own
    forward (what a transformers user runs), not our layer-by-layer walk."""

    def __init__(self, bundle: LoadedBundle) -> None:
        super().__init__()
        self.encoder = bundle.model.backbone.model
        self.heads = bundle.model.heads
        self.last_exit = bundle.num_layers - 1

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        arguments: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            arguments["token_type_ids"] = token_type_ids
        hidden = self.encoder(**arguments).last_hidden_state  # (B, T, H)
        return self.heads(self.last_exit, hidden, attention_mask)  # (B, C)


@dataclass
class Peer:
    """A built runtime: `logits(texts)` -> (B, C) float32 logits; the seconds its preparation took (export,
    fusion, quantization, compilation, each by name)."""

    name: str
    logits: Callable[[Sequence[str]], torch.Tensor]
    preparation_s: dict[str, float] = field(default_factory=dict)


def _timed(seconds: dict[str, float], what: str, work: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = work()
    seconds[what] = time.perf_counter() - started
    return result


def build_peer(name: str, bundle: LoadedBundle, work_dir: Path, threads: int) -> Peer:
    """One peer of `PEERS`; the ONNX files go into `work_dir` (made once, then reused: see `onnx_files`)."""
    tokenizer, max_length = bundle.tokenizer, bundle.max_length

    def encode(texts: Sequence[str], kind: str) -> Any:
        return tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors=kind)

    if name in ("onnx-fp32", "onnx-int8"):
        files, seconds = onnx_files(bundle, work_dir)
        session = onnx_session(files[name], threads)
        wanted = {i.name for i in session.get_inputs()}

        def run_onnx(texts: Sequence[str]) -> torch.Tensor:
            encoded = encode(texts, "np")
            feeds = {key: value for key, value in encoded.items() if key in wanted}
            return torch.from_numpy(session.run(None, feeds)[0])

        peer = Peer(name, run_onnx, seconds)
    elif name in ("plain", "torch-compile"):
        module = FullDepthForward(bundle).eval()
        seconds = {}
        forward = torch.compile(module, dynamic=True) if name == "torch-compile" else module

        @torch.inference_mode()
        def run_torch(texts: Sequence[str]) -> torch.Tensor:
            return forward(**encode(texts, "pt")).float()

        peer = Peer(name, run_torch, seconds)
    else:
        raise ValueError(f"unknown peer {name!r}; expected one of {', '.join(PEERS)}")
    # Batches of 2 and 16 of two lengths, then 1: the shapes the benchmark sends (torch-compile compiles here).
    _timed(peer.preparation_s, "warm_up", lambda: [peer.logits(list(WARM_UP_TEXTS) * n)
                                                   for n in (1, 8) for _ in range(2)])  # fmt: skip
    peer.logits(WARM_UP_TEXTS[:1])
    return peer


def onnx_files(bundle: LoadedBundle, work_dir: Path) -> tuple[dict[str, Path], dict[str, float]]:
    """The fused fp32 graph and its int8 quantization, in the bundle version's folder under `work_dir` (made
    when absent: export, fusion and quantization take seconds, timed in the second dict)."""
    work_dir = work_dir / f"{bundle.manifest.name}-{bundle.manifest.version}"
    work_dir.mkdir(parents=True, exist_ok=True)
    exported, fused, quantized = (work_dir / f"full_depth_{kind}.onnx" for kind in ("exported", "fp32", "int8"))
    seconds: dict[str, float] = {}
    if not (fused.is_file() and quantized.is_file()):
        _timed(seconds, "export", lambda: _export(bundle, exported))
        _timed(seconds, "fuse", lambda: _fuse(bundle, exported, fused))
        _timed(seconds, "quantize", lambda: _quantize(fused, quantized))
    return {"onnx-fp32": fused, "onnx-int8": quantized}, seconds


def _export(bundle: LoadedBundle, path: Path) -> None:
    encoder = bundle.model.backbone.model
    # Eager attention exports as MatMul / Softmax, which the optimizer fuses into its Attention op; SDPA does not
    # fuse. The module is a fresh view of the bundle's weights, so the switch is undone after the export.
    previous = encoder.config._attn_implementation
    encoder.set_attn_implementation("eager")
    try:
        module = FullDepthForward(bundle).eval()
        encoded = bundle.tokenizer(list(WARM_UP_TEXTS), padding=True, return_tensors="pt")
        names = [n for n in ONNX_INPUTS if n in encoded]
        axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"logits": {0: "batch"}}
        torch.onnx.export(module, tuple(encoded[n] for n in names), str(path), input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=ONNX_OPSET,
                          dynamo=False)  # fmt: skip
    finally:
        encoder.set_attn_implementation(previous)


def _fuse(bundle: LoadedBundle, exported: Path, fused: Path) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    config = bundle.model.backbone.model.config
    model_type = "bert" if config.model_type in ("bert", "roberta", "electra", "camembert") else config.model_type
    optimized = optimize_model(str(exported), model_type=model_type, num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size)  # fmt: skip
    optimized.save_model_to_file(str(fused))


def _quantize(fused: Path, quantized: Path) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The fused ops (Attention, SkipLayerNormalization) are in ONNX Runtime's own domain, where shape inference
    # gives no types: their outputs are float32.
    quantize_dynamic(str(fused), str(quantized), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})  # fmt: skip


def onnx_session(path: Path, threads: int) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads  # the same cores torch gets
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
