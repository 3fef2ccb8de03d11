"""The compiled layer path against the host path it compiles (issue 24, deliverable 2), on the default bundle.

    python -m bench.compiled_path [--bundle DIR] [--rounds 3] [--quick] [--out bench/results]

1. Equality on the test split: every text through both engines (batches of 32, which merge and shrink as rows
   leave), at full depth and at the bundle's default policy: labels and exit layers must be identical, and the
   largest score difference is reported (float32: inductor fuses and reorders sums).
2. Speed in process, alternating round by round: batch-1 p50 and batch-16 throughput of each path
   (`bench/runtime_peers/in_process.py`'s timing).
3. The compiled path's warm-up (compiling every layer and exit head) in seconds.

Writes `compiled_path_cpu.json` and `.md`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from beem.bundle.manifest import resolve_bundle_dir
from beem.policies.exit_policies import ExitPolicy, FullDepthPolicy
from bench.engine_in_thread import classify_ids, engine_in_thread
from bench.result_files import write_results
from bench.runtime_peers.in_process import engine_system, time_in_process
from loadtest.workload import text_workload
from service.engine.classify.classification_engine import ClassificationEngine
from service.engine.classify.compiled.compiled_path import CompiledPath
from service.settings import DEFAULT_BUNDLE
from service.text_encoder import TextEncoder

EQUALITY_BATCH = 32


def equality(host: ClassificationEngine, compiled: ClassificationEngine, texts: list[str],
             policy: ExitPolicy) -> dict[str, Any]:  # fmt: skip
    """Both paths' answers to every text: how many labels and exit layers differ, the largest score gap."""
    assert host.bundle is not None
    encoder = TextEncoder(host.bundle.tokenizer, host.bundle.max_length)
    label_differences = layer_differences = 0
    largest_score_difference = 0.0
    for start in range(0, len(texts), EQUALITY_BATCH):
        rows = [ids for ids, _ in encoder.encode(texts[start : start + EQUALITY_BATCH], None, truncate=True)]
        for want, have in zip(classify_ids(host, rows, policy), classify_ids(compiled, rows, policy), strict=True):
            label_differences += want.label != have.label
            layer_differences += want.exit_layer != have.exit_layer
            largest_score_difference = max(largest_score_difference, abs(want.score - have.score))
    return {"texts": len(texts), "label_differences": label_differences, "exit_layer_differences": layer_differences,
            "largest_score_difference": largest_score_difference}  # fmt: skip


def run(bundle_dir: Path, rounds: int, quick: bool) -> dict[str, Any]:
    texts = list(text_workload().texts[: 200 if quick else None])
    host = engine_in_thread(bundle_dir, engine_path="host")
    started = time.perf_counter()
    compiled = engine_in_thread(bundle_dir, engine_path="compiled")
    load_and_warm_up_s = time.perf_counter() - started
    path = compiled.path
    assert isinstance(path, CompiledPath) and host.bundle is not None
    default = host.bundle.manifest.default_policy
    policies = {"full": FullDepthPolicy(), default: host.bundle.policies[default]}
    print("equality on the test split", file=sys.stderr)
    equal = {name: equality(host, compiled, texts, policy) for name, policy in policies.items()}
    print("speed in process", file=sys.stderr)
    systems = [engine_system(f"{path_name} {name}", engine, host.bundle, policy)
               for name, policy in policies.items()
               for path_name, engine in (("host", host), ("compiled", compiled))]  # fmt: skip
    speed = time_in_process(systems, texts, rounds, *((20, 3) if quick else (100, 10)))
    ratios = {
        name: {"batch1_p50": speed[f"host {name}"]["batch1_p50_ms"] / speed[f"compiled {name}"]["batch1_p50_ms"],
               "batch16_throughput": speed[f"compiled {name}"]["batch16_texts_per_s"]
               / speed[f"host {name}"]["batch16_texts_per_s"]}
        for name in policies
    }  # fmt: skip
    return {
        "setup": {"bundle": host.bundle.manifest.model_id, "torch": torch.__version__, "rounds": rounds,
                  "quick": quick, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")},
        "compiled": {"detail": path.detail, "warm_up_s": path.warm_up_s, "load_and_warm_up_s": load_and_warm_up_s,
                     "fell_back": not path.compiled_layers.compiled},
        "equality": equal,
        "in_process": speed,
        "compiled_over_host": ratios,  # above 1: the compiled path is faster
    }  # fmt: skip


def table(results: dict[str, Any]) -> str:
    lines = [f"Compiled layer path against the host path ({results['setup']['bundle']}, torch "
             f"{results['setup']['torch']}, {results['setup']['threads']} threads; {results['compiled']['detail']})",
             "", "| policy | labels differing | exit layers differing | largest score gap | batch-1 p50 host / "
             "compiled (ms) | batch-1 speed-up | batch-16 speed-up |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, equal in results["equality"].items():
        speed, ratio = results["in_process"], results["compiled_over_host"][name]
        lines.append(f"| {name} | {equal['label_differences']} / {equal['texts']} | "
                     f"{equal['exit_layer_differences']} | {equal['largest_score_difference']:.1e} | "
                     f"{speed[f'host {name}']['batch1_p50_ms']:.2f} / {speed[f'compiled {name}']['batch1_p50_ms']:.2f}"
                     f" | {ratio['batch1_p50']:.3f}x | {ratio['batch16_throughput']:.3f}x |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--rounds", type=int, default=3)
    arguments.add_argument("--quick", action="store_true", help="200 texts and short rounds: a check that it runs")
    arguments.add_argument("--out", type=Path, default=Path("bench/results"))
    args = arguments.parse_args()
    results = run(resolve_bundle_dir(Path(args.bundle)), args.rounds, args.quick)
    write_results(args.out, "compiled_path_cpu" + ("_quick" if args.quick else ""), results, table(results))


if __name__ == "__main__":
    main()
