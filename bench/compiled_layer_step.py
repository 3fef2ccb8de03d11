"""Does compiling the per-layer step pay on this CPU? Eager against `torch.compile` (inductor) of one encoder layer
plus its exit head, with dynamic shapes and with static shapes padded to buckets, at batch 1 and 16 (issue 24,
deliverable 2: "dynamic shapes or buckets: measure which").

    python -m bench.compiled_layer_step [--bundle DIR] [--rounds 3] [--out bench/results]

Each layer gets its own compiled function (the layer index is a constant of its graph). The variants take turns
case by case, round by round; each number is the median time of all the layers' steps in a row, in ms. Prints and
writes `compiled_layer_step_cpu.json`: per case the medians, compiled / eager, the largest logit difference against
eager and whether the labels match, and each variant's warm-up seconds.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch._dynamo

from beem.bundle.bundle_reader import load_bundle
from beem.bundle.manifest import resolve_bundle_dir
from loadtest.workload import text_workload
from service.settings import DEFAULT_BUNDLE

# (rows, padded length or None for the batch's longest): what the engine's groups look like at batch 1 and 16
CASES = {"batch 1": (1, None), "batch 16": (16, None), "batch 1, bucket 32": (1, 32), "batch 16, bucket 64": (16, 64)}
STATIC_CASES = ("batch 1, bucket 32", "batch 16, bucket 64")  # static shapes only make sense padded to buckets


def run(bundle_dir: Path, rounds: int) -> dict[str, Any]:
    torch._dynamo.config.cache_size_limit = 64  # one graph per layer and shape: more than the default 8
    bundle = load_bundle(bundle_dir)
    model, backbone = bundle.model, bundle.model.backbone
    texts = list(text_workload().texts[:16])

    def step(index: int, hidden: torch.Tensor, layer_mask: Any, mask: torch.Tensor, pool: Any) -> Any:
        out = backbone.forward_layer(index, hidden, layer_mask, None)  # (B, T, H)
        return out, model.heads(index, out, mask, pool)  # (B, T, H), (B, C)

    def own_copy(name: str) -> Callable[..., Any]:
        """`step` with a code object of its own: dynamo keeps compiled graphs per code object, so the dynamic
        and the static variant must not share one."""
        code = step.__code__.replace(co_name=f"step_{name}")
        return types.FunctionType(code, step.__globals__, code.co_name, step.__defaults__, step.__closure__)

    layers = range(bundle.num_layers)
    variants: dict[str, list[Callable[..., Any]]] = {
        "eager": [functools.partial(step, i) for i in layers],
        "dynamic": [torch.compile(functools.partial(own_copy("dynamic"), i), dynamic=True) for i in layers],
        "static": [torch.compile(functools.partial(own_copy("static"), i), dynamic=False) for i in layers],
    }
    states = {}
    for case, (rows, padded) in CASES.items():
        encoded = bundle.tokenizer(texts[:rows], padding="max_length" if padded else True, max_length=padded,
                                   truncation=True, return_tensors="pt")  # fmt: skip
        states[case] = model.embed(encoded["input_ids"], encoded["attention_mask"], encoded.get("token_type_ids"))

    def forward(name: str, case: str) -> torch.Tensor:
        state = states[case]
        hidden, logits = state.hidden, None
        for layer_step in variants[name]:
            hidden, logits = layer_step(hidden, state.layer_mask, state.attention_mask, state.pool_weights)
        assert logits is not None
        return logits

    def applies(name: str, case: str) -> bool:
        return name != "static" or case in STATIC_CASES

    warm_up_s: dict[str, float] = {}
    with torch.inference_mode():
        for name in variants:
            started = time.perf_counter()
            for case in CASES:
                if applies(name, case):
                    forward(name, case)
                    forward(name, case)
            warm_up_s[name] = time.perf_counter() - started
        times: dict[str, dict[str, list[float]]] = {
            case: {name: [] for name in variants if applies(name, case)} for case in CASES
        }
        for round_index in range(rounds):
            for case, (rows, _) in CASES.items():
                names = list(times[case])
                names = names[round_index % len(names) :] + names[: round_index % len(names)]
                for name in names:
                    for _ in range(20 if rows == 1 else 5):
                        started = time.perf_counter()
                        forward(name, case)
                        times[case][name].append(time.perf_counter() - started)
        result: dict[str, Any] = {"warm_up_s": warm_up_s, "rounds": rounds, "cases": {}}
        for case, by_name in times.items():
            reference = forward("eager", case)
            medians = {name: statistics.median(values) * 1000 for name, values in by_name.items()}
            entry: dict[str, Any] = {"tokens": int(states[case].hidden.shape[1]), "median_ms": medians}
            for name in by_name:
                if name != "eager":
                    logits = forward(name, case)
                    entry[f"{name} / eager"] = medians[name] / medians["eager"]
                    entry[f"{name} max logit difference"] = float((logits - reference).abs().max())
                    entry[f"{name} labels equal"] = bool(torch.equal(logits.argmax(-1), reference.argmax(-1)))
            result["cases"][case] = entry
    return result


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--rounds", type=int, default=3)
    arguments.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = arguments.parse_args()
    result = run(resolve_bundle_dir(Path(args.bundle)), args.rounds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compiled_layer_step_cpu.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
