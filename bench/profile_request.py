"""Where a batch-1 request's time goes inside the engine, stage by stage, at full depth and under BEEM-A.

    python -m bench.profile_request [--bundle DIR] [--texts 200]

Times, per text (median over texts, in this thread): tokenization, embedding, each encoder layer, each exit
head with its readout and policy step, as the engine's `run_batch` runs them. It explains the gap between the
layer speed-up (layers skipped) and the wall-clock speed-up (time saved): the stages that do not shrink with
depth are paid by every request.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from beem.bundle.bundle_reader import load_bundle
from beem.bundle.manifest import resolve_bundle_dir
from beem.policies.exit_policies import ExitObservation, PolicyState
from loadtest.workload import text_workload
from service.engine.exit_readout import read_exits
from service.settings import DEFAULT_BUNDLE


@torch.inference_mode()
def profile(bundle_dir: Path, count: int) -> dict[str, object]:
    bundle = load_bundle(bundle_dir)
    model, tokenizer = bundle.model, bundle.tokenizer
    texts = text_workload().texts[:count]
    stages: dict[str, list[float]] = {"tokenize": [], "embed": []}
    exit_layers: dict[str, list[int]] = {"beem-a": [], "full": []}
    for text in texts:
        started = time.perf_counter()
        encoded = tokenizer(text, return_tensors="pt")
        stages["tokenize"].append(time.perf_counter() - started)
        started = time.perf_counter()
        state = model.embed(encoded["input_ids"], encoded["attention_mask"], encoded.get("token_type_ids"))
        stages["embed"].append(time.perf_counter() - started)
        policy_state = PolicyState()
        beem_exit = None
        for layer in range(1, bundle.num_layers + 1):
            started = time.perf_counter()
            state = model.run_layer(state)
            stages.setdefault(f"layer {layer}", []).append(time.perf_counter() - started)
            started = time.perf_counter()
            readout = read_exits(model.exit_logits(state))[0]
            decision = bundle.policies["beem-a"].step(
                policy_state, ExitObservation(readout.label, readout.confidence, readout.entropy), bundle.num_layers
            )
            policy_state = decision.state
            stages.setdefault(f"exit head {layer} + readout + policy", []).append(time.perf_counter() - started)
            if decision.exit_now and beem_exit is None:
                beem_exit = layer
        exit_layers["beem-a"].append(beem_exit or bundle.num_layers)
        exit_layers["full"].append(bundle.num_layers)
    median_ms = {name: statistics.median(values) * 1000 for name, values in stages.items()}
    per_layer = statistics.mean(median_ms[f"layer {i}"] for i in range(1, bundle.num_layers + 1))
    per_head = statistics.mean(median_ms[f"exit head {i} + readout + policy"] for i in range(1, bundle.num_layers + 1))
    fixed = median_ms["tokenize"] + median_ms["embed"]
    mean_beem_layer = statistics.mean(exit_layers["beem-a"])
    # Full depth reads only the last head (the engine skips the others); BEEM-A reads one per layer it runs.
    full_ms = fixed + bundle.num_layers * per_layer + per_head
    beem_ms = fixed + mean_beem_layer * (per_layer + per_head)
    return {
        "median_ms": median_ms,
        "mean_exit_layer_beem_a": mean_beem_layer,
        "model_of_time_ms": {"fixed (tokenize + embed)": fixed, "per layer": per_layer, "per exit check": per_head,
                             "full": full_ms, "beem-a": beem_ms},
        "layer_speedup": bundle.num_layers / mean_beem_layer,
        "modelled_wall_clock_speedup": full_ms / beem_ms,
    }  # fmt: skip


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--texts", type=int, default=200)
    args = arguments.parse_args()
    print(json.dumps(profile(resolve_bundle_dir(Path(args.bundle)), args.texts), indent=1))


if __name__ == "__main__":
    main()
