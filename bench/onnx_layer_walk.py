"""Would ONNX Runtime, layer by layer, make a faster layer path than eager PyTorch on this CPU? (issue 24)

    python -m bench.onnx_layer_walk [--bundle DIR] [--texts 96] [--rounds 3] [--spinning] [--out bench/results]

The runtime-peer table has ONNX Runtime's full-depth graph at 2.2x eager PyTorch's batch-1 speed on this CPU, and
early exit needs a walk that stops after any layer. This exports every encoder layer and every exit head of the
bundle as a graph of its own (eager attention, the mask built inside as transformers builds it, so ONNX Runtime's
transformer optimizer fuses Attention, SkipLayerNormalization and BiasGelu as it does in the full graph) and times,
side by side in alternating rounds on the bundle's test texts, at batch 1 and 16:

- `torch walk`: the host path's model calls (embed, then each layer and its exit head), eager;
- `onnx walk`: the same walk with torch's embedding, then ONNX Runtime's layers and heads;
- `torch layers` / `onnx layers`: the six layers alone on one embedded batch (no heads, no hand-over).

Every exit's logits of the two walks are compared (largest gap, argmax differences). Sessions run with their
intra-op threads' spinning off unless `--spinning`: each session has a thread pool of its own, and twelve pools
spinning between runs take the cores from each other. `onnxruntime` is the `bench` extra. Writes
`<out>/onnx_layer_walk_cpu.json` and `.md`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from beem.bundle.bundle_reader import LoadedBundle, load_bundle
from beem.bundle.manifest import resolve_bundle_dir
from bench.live_load import RESULTS_DIR, test_texts
from bench.result_files import write_results
from bench.runtime_peers.peer_models import ONNX_OPSET
from bench.runtime_peers.peer_server import DEFAULT_WORK_DIR
from bench.runtime_peers.report import cpu_description
from service.settings import DEFAULT_BUNDLE

BATCH_SIZES = (1, 16)


class LayerGraph(nn.Module):
    """Encoder layer `index`: (B, T, H) hidden and (B, T) padding mask -> (B, T, H)."""

    def __init__(self, bundle: LoadedBundle, index: int) -> None:
        super().__init__()
        self.config = bundle.model.backbone.model.config
        self.layer = bundle.model.backbone.model.encoder.layer[index]

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        output = self.layer(hidden, attention_mask=mask)
        result: torch.Tensor = output[0] if isinstance(output, tuple) else output
        return result


class HeadGraph(nn.Module):
    """Exit head `index`: (B, T, H) hidden and (B, T) padding mask -> (B, C) logits."""

    def __init__(self, bundle: LoadedBundle, index: int) -> None:
        super().__init__()
        self.heads, self.index = bundle.model.heads, index

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.heads(self.index, hidden, attention_mask)
        return logits


def export_graphs(bundle: LoadedBundle, work_dir: Path) -> tuple[list[Path], list[Path], float]:
    """Every layer (fused) and head as ONNX files under `work_dir`; the seconds export and fusion took."""
    from onnxruntime.transformers.optimizer import optimize_model

    started = time.perf_counter()
    encoder = bundle.model.backbone.model
    config = encoder.config
    encoded = bundle.tokenizer(["warm up", "and a longer text, for a second length"], padding=True, return_tensors="pt")
    with torch.no_grad():  # not inference mode: the export traces these tensors
        hidden = bundle.model.embed(encoded["input_ids"], encoded["attention_mask"],
                                    encoded.get("token_type_ids")).hidden  # fmt: skip
    axes = {"hidden": {0: "rows", 1: "tokens"}, "attention_mask": {0: "rows", 1: "tokens"}, "out": {0: "rows"}}
    previous = config._attn_implementation
    encoder.set_attn_implementation("eager")  # MatMul / Softmax, which the optimizer fuses into Attention
    layers: list[Path] = []
    heads: list[Path] = []
    try:
        with torch.no_grad():
            for index in range(bundle.num_layers):
                for kind, module, paths in (("layer", LayerGraph(bundle, index), layers),
                                            ("head", HeadGraph(bundle, index), heads)):  # fmt: skip
                    path = work_dir / f"{kind}_{index + 1}.onnx"
                    torch.onnx.export(module.eval(), (hidden, encoded["attention_mask"]), str(path),
                                      input_names=["hidden", "attention_mask"], output_names=["out"], dynamic_axes=axes,
                                      opset_version=ONNX_OPSET, dynamo=False)  # fmt: skip
                    if kind == "layer":
                        optimize_model(str(path), model_type="bert", num_heads=config.num_attention_heads,
                                       hidden_size=config.hidden_size).save_model_to_file(str(path))  # fmt: skip
                    paths.append(path)
    finally:
        encoder.set_attn_implementation(previous)
    return layers, heads, time.perf_counter() - started


def session(path: Path, threads: int, spinning: bool) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def embedded(bundle: LoadedBundle, encoded: Any) -> Any:
    return bundle.model.embed(encoded["input_ids"], encoded["attention_mask"], encoded.get("token_type_ids"))


def torch_walk(bundle: LoadedBundle, encoded: Any) -> list[torch.Tensor]:
    """Every exit's (B, C) logits the host path's way: embed, then each layer and its exit head, eager."""
    state, exits = embedded(bundle, encoded), []
    for _ in range(bundle.num_layers):
        state = bundle.model.run_layer(state)
        exits.append(bundle.model.exit_logits(state))
    return exits


def onnx_walk(bundle: LoadedBundle, sessions: list[tuple[Any, Any]], encoded: Any) -> list[torch.Tensor]:
    """The same walk with ONNX Runtime's (layer, head) sessions after torch's embedding; numpy hand-over, no copy."""
    hidden, mask = embedded(bundle, encoded).hidden.numpy(), encoded["attention_mask"].numpy()
    exits = []
    for layer, head in sessions:
        hidden = layer.run(None, {"hidden": hidden, "attention_mask": mask})[0]  # (B, T, H)
        exits.append(torch.from_numpy(head.run(None, {"hidden": hidden, "attention_mask": mask})[0]))  # (B, C)
    return exits


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    bundle_dir = resolve_bundle_dir(Path(args.bundle))
    bundle = load_bundle(bundle_dir)
    model = bundle.model
    work_dir = Path(args.work_dir) / f"{bundle.manifest.name}-{bundle.manifest.version}-layers"
    work_dir.mkdir(parents=True, exist_ok=True)
    layer_files, head_files, export_s = export_graphs(bundle, work_dir)
    sessions = [(session(layer, args.threads, args.spinning), session(head, args.threads, args.spinning))
                for layer, head in zip(layer_files, head_files, strict=True)]  # fmt: skip
    texts = list(test_texts()[: args.texts])

    def torch_layers(state: Any) -> None:
        for _ in range(bundle.num_layers):
            state = model.run_layer(state)

    def onnx_layers(state: Any) -> None:
        hidden, mask = state.hidden.numpy(), state.attention_mask.numpy()
        for layer, _ in sessions:
            hidden = layer.run(None, {"hidden": hidden, "attention_mask": mask})[0]

    results: dict[str, Any] = {}
    with torch.inference_mode():
        for batch in BATCH_SIZES:
            groups = [bundle.tokenizer(texts[start : start + batch], padding=True, return_tensors="pt")
                      for start in range(0, len(texts) - batch + 1, batch)]  # fmt: skip
            states = [embedded(bundle, group) for group in groups]
            gap, differing, compared = 0.0, 0, 0
            for group in groups:
                for ours, theirs in zip(torch_walk(bundle, group), onnx_walk(bundle, sessions, group), strict=True):
                    gap = max(gap, float((ours - theirs).abs().max()))
                    differing += int((ours.argmax(-1) != theirs.argmax(-1)).sum())
                    compared += ours.shape[0]
            calls: dict[str, tuple[Callable[[Any], Any], list[Any]]] = {
                "torch walk": (partial(torch_walk, bundle), groups),
                "onnx walk": (partial(onnx_walk, bundle, sessions), groups),
                "torch layers": (torch_layers, states), "onnx layers": (onnx_layers, states),
            }  # fmt: skip
            times: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(args.rounds):
                for name, (call, inputs) in calls.items():
                    for item in inputs:
                        started = time.perf_counter()
                        call(item)
                        times[name].append(time.perf_counter() - started)
            medians = {name: median_ms(values) for name, values in times.items()}
            results[f"batch {batch}"] = {
                **{f"{name} ms": value for name, value in medians.items()},
                "walk speed-up (torch / onnx)": medians["torch walk"] / medians["onnx walk"],
                "layers speed-up (torch / onnx)": medians["torch layers"] / medians["onnx layers"],
                "largest logit gap": gap, "argmax differing": differing, "exits compared": compared,
            }  # fmt: skip
    import onnxruntime

    return {"bundle": f"{bundle.manifest.name}:{bundle.manifest.version}", "texts": len(texts),
            "rounds": args.rounds, "threads": args.threads, "spinning": args.spinning, "export_s": export_s,
            "cpu": cpu_description(), "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
            "date": time.strftime("%Y-%m-%d"), "results": results}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    lines = [f"`python -m bench.onnx_layer_walk` on {result['bundle']}, {result['date']}, {result['texts']} test "
             f"texts, {result['rounds']} alternating rounds, {result['threads']} threads (torch and each ONNX "
             f"Runtime session), spinning {'on' if result['spinning'] else 'off'}; CPU: "
             f"{result['cpu']['model_name']}; torch {result['versions']['torch']}, onnxruntime "
             f"{result['versions']['onnxruntime']}; export and fusion {result['export_s']:.1f} s.", "",
             "| batch | torch walk ms | onnx walk ms | walk speed-up | torch layers ms | onnx layers ms | layers "
             "speed-up | largest logit gap | argmax differing |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for batch, row in result["results"].items():
        lines.append(f"| {batch.split()[1]} | {row['torch walk ms']:.2f} | {row['onnx walk ms']:.2f} | "
                     f"{row['walk speed-up (torch / onnx)']:.2f}x | {row['torch layers ms']:.2f} | "
                     f"{row['onnx layers ms']:.2f} | {row['layers speed-up (torch / onnx)']:.2f}x | "
                     f"{row['largest logit gap']:.1e} | "
                     f"{row['argmax differing']} of {row['exits compared']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--texts", type=int, default=96)
    arguments.add_argument("--rounds", type=int, default=3)
    arguments.add_argument("--threads", type=int, default=2)
    arguments.add_argument("--spinning", action="store_true", help="leave ONNX Runtime's thread spinning on")
    arguments.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR))
    arguments.add_argument("--out", default=str(RESULTS_DIR))
    arguments.add_argument("--stem", default="onnx_layer_walk_cpu")
    args = arguments.parse_args()
    result = run(args)
    write_results(Path(args.out), args.stem, result, markdown(result))


if __name__ == "__main__":
    main()
