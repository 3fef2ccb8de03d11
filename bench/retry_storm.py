"""A retry storm (issue 25, deliverable 6): 16 closed-loop clients that resend at once when refused with 429,
against `beem serve` with a 100 ms wait budget. What the admitted requests see, and what the refusals cost.

    python -m bench.retry_storm [--bundle DIR] [--seconds 20] [--clients 16] [--texts-per-request 8]
                                [--max-queue-wait-ms 100] [--baseline-tree DIR] [--out bench/results]

Each client sends one request of `--texts-per-request` test texts at a time (the bundle's default policy) and,
on a 429, sends it again without waiting (Retry-After ignored, as a naive client does). Reported: admitted
requests' p50 / p95 (the attempt that was answered, from its send), answered and refused per second, the server's
CPU (cores busy) and its CPU per request of either outcome: where refusals are nearly all of them (a storm on the
tree before refusals were paced), that is the cost of one refusal. With `--baseline-tree`, the same run against another
checkout's server, alternating, so the two are measured side by side. Writes `retry_storm_cpu.json` and `.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from beem.bundle.manifest import resolve_bundle_dir
from bench.result_files import write_results
from bench.server_process import ServerProcess
from loadtest.http_connection import Connection, HttpError
from loadtest.workload import text_workload
from service.settings import DEFAULT_BUNDLE

TICKS_PER_S = os.sysconf("SC_CLK_TCK")  # /proc/<pid>/stat's clock ticks


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime + stime


async def storm(url: str, seconds: float, clients: int, texts: list[list[str]], retry: bool) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    admitted: list[float] = []
    refused = errors = 0
    stop_at = time.perf_counter() + seconds

    async def client(index: int) -> None:
        nonlocal refused, errors
        connection = Connection(host, int(port), None)
        sent = 0
        try:
            while time.perf_counter() < stop_at:
                body = json.dumps({"inputs": texts[(index * 7919 + sent) % len(texts)]}).encode()
                started = time.perf_counter()
                try:
                    response = await connection.post("/v1/classify", body)
                except HttpError:
                    errors += 1
                    continue
                if response.status == 200:
                    admitted.append(time.perf_counter() - started)
                    sent += 1
                elif response.status == 429:
                    refused += 1
                    if not retry:
                        await asyncio.sleep(float(response.headers.get(b"retry-after", b"1")))
                else:
                    errors += 1
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "answered": len(admitted),
        "refused": refused,
        "errors": errors,
        "seconds": elapsed,
        "answered_per_s": len(admitted) / elapsed,
        "refused_per_s": refused / elapsed,
        "admitted_p50_ms": statistics.median(admitted) * 1000 if admitted else None,
        "admitted_p95_ms": statistics.quantiles(admitted, n=20)[-1] * 1000 if len(admitted) > 1 else None,
    }


def measure(server: ServerProcess, seconds: float, clients: int, texts: list[list[str]]) -> dict[str, Any]:
    """The storm, and the same clients honouring Retry-After (calm), with the server's CPU over each."""
    pid, runs = server.process.pid, {}
    for name, retry, length in (("calm (clients honour Retry-After)", False, seconds / 2), ("storm", True, seconds)):
        before = cpu_seconds(pid)
        run = asyncio.run(storm(server.url, length, clients, texts, retry=retry))
        cpu = cpu_seconds(pid) - before
        run["server_cores_busy"] = cpu / run["seconds"]
        run["server_cpu_ms_per_request"] = cpu / max(run["answered"] + run["refused"], 1) * 1000
        runs[name] = run
    return runs


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--seconds", type=float, default=20.0)
    arguments.add_argument("--clients", type=int, default=16)
    arguments.add_argument("--texts-per-request", type=int, default=8)
    arguments.add_argument("--max-queue-wait-ms", type=float, default=100.0)
    arguments.add_argument("--rounds", type=int, default=2)
    arguments.add_argument("--baseline-tree", type=Path, help="another checkout, measured alternately")
    arguments.add_argument("--out", type=Path, default=Path("bench/results"))
    args = arguments.parse_args()
    bundle = resolve_bundle_dir(Path(args.bundle)).resolve()
    workload = list(text_workload().texts)
    k = args.texts_per_request
    texts = [workload[i : i + k] for i in range(0, len(workload) - k, k)]
    trees = {"this tree": None} | ({"baseline": args.baseline_tree.resolve()} if args.baseline_tree else {})
    command = [sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle),
               "--max-queue-wait-ms", str(args.max_queue_wait_ms)]  # fmt: skip
    servers = {name: ServerProcess(command, cwd=tree) for name, tree in trees.items()}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    try:
        for server in servers.values():
            server.pause()
        for round_index in range(args.rounds):
            order = list(trees) if round_index % 2 == 0 else list(reversed(trees))
            for name in order:
                print(f"round {round_index + 1}: {name}", file=sys.stderr)
                servers[name].resume()
                runs[name].append(measure(servers[name], args.seconds, args.clients, texts))
                servers[name].pause()
    finally:
        for server in servers.values():
            server.stop()
    results = {"bundle": str(bundle), "clients": args.clients, "texts_per_request": k,
               "max_queue_wait_ms": args.max_queue_wait_ms, "seconds": args.seconds, "date": time.strftime("%Y-%m-%d"),
               "runs": runs}  # fmt: skip
    write_results(args.out, "retry_storm_cpu", results, table(results))


def table(results: dict[str, Any]) -> str:
    lines = ["| server | round | admitted p50 / p95 (ms) | answered/s | refused/s | server cores busy | "
             "server CPU ms per request |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, runs in results["runs"].items():
        for index, run in enumerate(runs, 1):
            s = run["storm"]
            p50 = "-" if s["admitted_p50_ms"] is None else f"{s['admitted_p50_ms']:.0f}"
            p95 = "-" if s["admitted_p95_ms"] is None else f"{s['admitted_p95_ms']:.0f}"
            lines.append(f"| {name} | {index} | {p50} / {p95} | {s['answered_per_s']:.1f} | "
                         f"{s['refused_per_s']:.0f} | {s['server_cores_busy']:.2f} | "
                         f"{s['server_cpu_ms_per_request']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
