"""What HTTP adds to a request: the same texts through `beem serve` (one client, sequential) and through the same
engine in this process (bench/engine_in_thread.py, with the server's own text encoder), alternating (issue 24,
deliverable 3).

    python -m bench.http_fixed_cost [--bundle DIR] [--texts 100] [--rounds 4] [--out bench/results]

Per policy (static at layer 1: the least work a request can do; full depth; the bundle's default), the median
latency both ways and their difference: HTTP, validation, routing, the hop to the engine's thread and back, and
the load generator's client. The server is stopped (SIGSTOP) while the in-process engine runs, and the order of
the two is swapped every round. Writes `http_fixed_cost_cpu.json` and `.md` under --out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from beem.bundle.bundle_reader import load_bundle
from beem.bundle.manifest import resolve_bundle_dir
from beem.policies.exit_policies import ExitPolicy, FullDepthPolicy, StaticPolicy
from bench.engine_in_thread import classify_ids, engine_in_thread
from bench.result_files import write_results
from bench.server_process import ServerProcess
from loadtest.workload import text_workload
from service.settings import DEFAULT_BUNDLE
from service.text_encoder import TextEncoder


def run(bundle_dir: Path, count: int, rounds: int) -> dict[str, Any]:
    bundle = load_bundle(bundle_dir)
    default = bundle.manifest.default_policy
    texts = text_workload().texts[:count]
    encoder = TextEncoder(bundle.tokenizer, bundle.max_length)
    policies: dict[str, tuple[ExitPolicy, dict[str, object]]] = {
        "static layer 1": (StaticPolicy(layer=1), {"name": "static", "layer": 1}),
        "full": (FullDepthPolicy(), {"name": "full"}),
        default: (bundle.policies[default], {"name": default}),
    }
    times: dict[str, dict[str, list[float]]] = {name: {"http": [], "in_process": []} for name in policies}
    with ServerProcess([sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle_dir)]) as server:
        engine = engine_in_thread(bundle_dir)
        with httpx.Client() as client:
            for round_index in range(rounds):
                for where in ("http", "in_process")[:: 1 if round_index % 2 == 0 else -1]:
                    if where == "http":
                        server.resume()
                        time.sleep(0.1)
                    else:
                        server.pause()
                    for name, (policy, wire) in policies.items():
                        for text in texts:
                            started = time.perf_counter()
                            if where == "http":
                                answer = client.post(f"{server.url}/v1/classify", json={"inputs": text, "policy": wire})
                                answer.raise_for_status()
                            else:
                                classify_ids(engine, [encoder.encode([text], None, True)[0][0]], policy)
                            times[name][where].append(time.perf_counter() - started)
        server.resume()
    result: dict[str, Any] = {"bundle": bundle.manifest.model_id, "texts": count, "rounds": rounds, "policies": {}}
    for name, by_where in times.items():
        http, local = (statistics.median(by_where[w]) * 1000 for w in ("http", "in_process"))
        result["policies"][name] = {"http_p50_ms": http, "in_process_p50_ms": local, "http_adds_ms": http - local}
    return result


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--texts", type=int, default=100)
    arguments.add_argument("--rounds", type=int, default=4)
    arguments.add_argument("--out", help="write http_fixed_cost_cpu.json and .md here (e.g. bench/results)")
    args = arguments.parse_args()
    result = run(resolve_bundle_dir(Path(args.bundle)), args.texts, args.rounds)
    if args.out:
        write_results(Path(args.out), "http_fixed_cost_cpu", result, markdown(result))
    else:
        print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    lines = [f"`python -m bench.http_fixed_cost` on {result['bundle']}, {result['texts']} test texts, "
             f"{result['rounds']} alternating rounds, medians.", "",
             "| policy | HTTP p50 ms | in process p50 ms | HTTP adds ms |", "|---|---|---|---|"]  # fmt: skip
    for name, entry in result["policies"].items():
        lines.append(f"| {name} | {entry['http_p50_ms']:.2f} | {entry['in_process_p50_ms']:.2f} | "
                     f"{entry['http_adds_ms']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
