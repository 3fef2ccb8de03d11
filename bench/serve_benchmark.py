"""The engine against a plain transformers forward, in-process, batch 1: what the step loop costs beyond the model.

    python -m bench.serve_benchmark [--bundle DIR] [--texts 100] [--rounds 3]

All in this thread, so no thread pool or event loop competes: the encoder's own `forward` plus the final exit head,
against the server's engine (built by the app's own factory) running its step loop in this thread (join, a step
per layer, exit heads where a policy reads them, array-form decisions, answers) at full depth and at BEEM-A,
interleaved text by text. The HTTP side (batch 1 against the plain endpoint, under load) is
`bench.standard_comparison`. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from beem.bundle.manifest import read_manifest, resolve_bundle_dir
from beem.data.examples import read_dataset
from beem.data.rotten_tomatoes import REPO_DATA_FILE
from beem.data.splits import split_dataset
from bench.engine_in_thread import classify_ids, engine_in_thread
from service.settings import DEFAULT_BUNDLE


def in_process(bundle_dir: Path, texts: list[str], rounds: int) -> dict[str, float]:
    """Median milliseconds per text for each way of answering it, tokenization included."""
    engine = engine_in_thread(bundle_dir)
    bundle = engine.bundle
    assert bundle is not None
    encoder, heads, tokenizer = bundle.model.backbone.model, bundle.model.heads, bundle.tokenizer

    def plain(text: str) -> None:
        encoded = tokenizer(text, return_tensors="pt")
        hidden = encoder(**encoded).last_hidden_state
        heads(bundle.num_layers - 1, hidden, encoded["attention_mask"]).argmax(-1).tolist()

    def engine_run(policy_name: str) -> Callable[[str], object]:
        return lambda text: classify_ids(engine, [tokenizer(text)["input_ids"]], bundle.policies[policy_name])

    runners = {"plain_forward": plain, "engine_full": engine_run("full"), "engine_beem_a": engine_run("beem-a")}
    timings: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for text in texts[:5]:  # warm-up
            for run in runners.values():
                run(text)
        for round_number in range(rounds):
            for index, text in enumerate(texts):
                names = list(runners) if (index + round_number) % 2 == 0 else list(runners)[::-1]
                for name in names:
                    started = time.perf_counter()
                    runners[name](text)
                    timings[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in timings.items()}


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--texts", type=int, default=100)
    arguments.add_argument("--rounds", type=int, default=3)
    args = arguments.parse_args()
    bundle_dir = resolve_bundle_dir(Path(args.bundle))
    manifest = read_manifest(bundle_dir)
    texts = [e.text for e in split_dataset(read_dataset(REPO_DATA_FILE)).test.examples][: args.texts]
    medians = in_process(bundle_dir, texts, args.rounds)
    layer_speedup = manifest.policies["beem-a"].test["layer_speedup"]
    speedup = medians["engine_full"] / medians["engine_beem_a"]
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads",
        "bundle": manifest.model_id,
        "in_process_batch1_ms": medians,
        "engine_full_vs_plain_forward": medians["engine_full"] / medians["plain_forward"],
        "engine_beem_a_speedup": speedup,
        "layer_speedup_beem_a_test": layer_speedup,
        "speedup_share_of_layer_speedup": speedup / layer_speedup,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
