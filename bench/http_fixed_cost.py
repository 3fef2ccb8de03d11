"""What HTTP adds to a request: the same texts through `beem serve` (one client, sequential) and through the same
engine in this process (bench/engine_in_thread.py, with the server's own text encoder), alternating (issue 24,
deliverable 3). Over HTTP twice: with httpx (what a Python user would call) and with the load generator's lean
client (`loadtest/http_connection.py`), since on these 2-core machines the client's own CPU is in a sequential
request's latency: the lean client's difference is the closer bound on what the server adds.

    python -m bench.http_fixed_cost [--bundle DIR] [--texts 100] [--rounds 4] [--out bench/results]

Per policy (static at layer 1: the least work a request can do; full depth; the bundle's default), the median
latency both ways and their difference: HTTP, validation, routing, the hop to the engine's thread and back, and
the client's own work. The server is stopped (SIGSTOP) while the in-process engine runs, and the order of the
three is rotated every round. Writes `http_fixed_cost_cpu.json` and `.md` under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from loadtest.http_connection import Connection
from loadtest.workload import text_workload
from service.settings import DEFAULT_BUNDLE
from service.text_encoder import TextEncoder

WHERES = ("http_httpx", "http_lean", "in_process")


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
    times: dict[str, dict[str, list[float]]] = {name: {where: [] for where in WHERES} for name in policies}
    with ServerProcess([sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle_dir)]) as server:
        engine = engine_in_thread(bundle_dir)
        loop = asyncio.new_event_loop()
        lean = Connection("127.0.0.1", server.port, None)
        with httpx.Client() as client:
            for round_index in range(rounds):
                shift = round_index % len(WHERES)
                for where in WHERES[shift:] + WHERES[:shift]:
                    if where == "in_process":
                        server.pause()
                    else:
                        server.resume()
                        time.sleep(0.1)
                    for name, (policy, wire) in policies.items():
                        if where == "http_lean":
                            times[name][where] += loop.run_until_complete(_lean_times(lean, texts, wire))
                            continue
                        for text in texts:
                            started = time.perf_counter()
                            if where == "http_httpx":
                                answer = client.post(f"{server.url}/v1/classify", json={"inputs": text, "policy": wire})
                                answer.raise_for_status()
                            else:
                                classify_ids(engine, [encoder.encode([text], None, True)[0][0]], policy)
                            times[name][where].append(time.perf_counter() - started)
        server.resume()
        lean.close()
        loop.close()
    result: dict[str, Any] = {"bundle": bundle.manifest.model_id, "texts": count, "rounds": rounds, "policies": {}}
    for name, by_where in times.items():
        httpx_ms, lean_ms, local = (statistics.median(by_where[w]) * 1000 for w in WHERES)
        result["policies"][name] = {"http_p50_ms": httpx_ms, "http_lean_p50_ms": lean_ms, "in_process_p50_ms": local,
                                    "http_adds_ms": httpx_ms - local, "http_lean_adds_ms": lean_ms - local}  # fmt: skip
    return result


async def _lean_times(connection: Connection, texts: tuple[str, ...], wire: dict[str, object]) -> list[float]:
    times = []
    for text in texts:
        body = json.dumps({"inputs": text, "policy": wire}).encode()
        started = time.perf_counter()
        answer = await connection.post("/v1/classify", body)
        if answer.status != 200:
            raise RuntimeError(f"{answer.status}: {answer.body[:200]!r}")
        times.append(time.perf_counter() - started)
    return times


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
             "| policy | HTTP p50 ms, httpx client | HTTP p50 ms, lean client | in process p50 ms | HTTP adds ms, "
             "httpx | HTTP adds ms, lean |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, entry in result["policies"].items():
        lines.append(f"| {name} | {entry['http_p50_ms']:.2f} | {entry['http_lean_p50_ms']:.2f} | "
                     f"{entry['in_process_p50_ms']:.2f} | {entry['http_adds_ms']:.2f} | "
                     f"{entry['http_lean_adds_ms']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
