"""Two classifiers under load at once on one server (issue 25, deliverable 3): each model's throughput and p95
with 16 clients on it alone, and with 16 more clients on the other model at the same time, for each way of
sharing the cores.

    python -m bench.two_models [--seconds 10] [--clients 16] [--shares default,1]

A share is the server's `torch_threads`: `default` leaves it to the server (several models: each engine gets its
share of the cores, here 1 thread each), a number sets every engine's (`2`, torch's own default on 2 cores: two
models then run 2 x 2 OpenMP threads). One server per share, over the two
committed classifiers (`--bundle` twice); requests name their model, one short test text each, the bundle's
default policy. Phases per share: A alone, B alone, A and B together. Reported: requests per second and p95 of
each model per phase, and together / alone (the issue asks >= 40% of solo throughput, p95 within 2x). Writes
`two_models_cpu.json` and `.md`.
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

from bench.result_files import write_results
from bench.server_process import ServerProcess
from loadtest.http_connection import Connection, HttpError
from loadtest.workload import text_workload

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = {"A": "minilm-rt-sentiment", "B": "minilm-rt-fine-sentiment"}


async def closed_loop(url: str, model: str, clients: int, seconds: float, texts: list[str]) -> dict[str, float]:
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    failures = 0
    stop_at = time.perf_counter() + seconds

    async def client(index: int) -> None:
        nonlocal failures
        connection = Connection(host, int(port), None)
        sent = 0
        try:
            while time.perf_counter() < stop_at:
                body = json.dumps({"inputs": texts[(index * 7919 + sent) % len(texts)], "model": model}).encode()
                started = time.perf_counter()
                try:
                    response = await connection.post("/v1/classify", body)
                except HttpError:
                    failures += 1
                    continue
                sent += 1
                if response.status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return {"rps": len(latencies) / elapsed, "p50_ms": statistics.median(latencies) * 1000,
            "p95_ms": statistics.quantiles(latencies, n=20)[-1] * 1000, "failures": failures}  # fmt: skip


async def together(url: str, clients: int, seconds: float, texts: list[str]) -> dict[str, dict[str, float]]:
    a, b = await asyncio.gather(*(closed_loop(url, MODELS[m], clients, seconds, texts) for m in ("A", "B")))
    return {"A": a, "B": b}


def run_share(share: str, clients: int, seconds: float, texts: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "service.cli", "serve", "--bundle", str(REPO_ROOT / "model_store" / MODELS["A"]),
               "--bundle", str(REPO_ROOT / "model_store" / MODELS["B"])]  # fmt: skip
    if share != "default":
        command += ["--torch-threads", share]
    server = ServerProcess(command, ready_timeout_s=300)
    try:
        for model in MODELS.values():  # warm both
            asyncio.run(closed_loop(server.url, model, 2, 2.0, texts))
        alone = {m: asyncio.run(closed_loop(server.url, MODELS[m], clients, seconds, texts)) for m in ("A", "B")}
        both = asyncio.run(together(server.url, clients, seconds, texts))
    finally:
        server.stop()
    return {"alone": alone, "together": both,
            "throughput_kept": {m: both[m]["rps"] / alone[m]["rps"] for m in ("A", "B")},
            "p95_ratio": {m: both[m]["p95_ms"] / alone[m]["p95_ms"] for m in ("A", "B")}}  # fmt: skip


def table(results: dict[str, Any]) -> str:
    lines = ["| torch_threads per engine | model | alone: req/s, p95 ms | together: req/s, p95 ms | throughput kept | "
             "p95 together / alone |", "|---|---|---|---|---|---|"]  # fmt: skip
    for share, run in results["shares"].items():
        for m in ("A", "B"):
            alone, both = run["alone"][m], run["together"][m]
            lines.append(f"| {share} | {MODELS[m]} | {alone['rps']:.1f}, {alone['p95_ms']:.1f} | "
                         f"{both['rps']:.1f}, {both['p95_ms']:.1f} | {run['throughput_kept'][m]:.0%} | "
                         f"{run['p95_ratio'][m]:.2f}x |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--seconds", type=float, default=10.0)
    arguments.add_argument("--clients", type=int, default=16)
    arguments.add_argument("--shares", default="default,2")
    arguments.add_argument("--out", type=Path, default=Path("bench/results"))
    args = arguments.parse_args()
    texts = list(text_workload().texts)
    shares = {share: run_share(share, args.clients, args.seconds, texts) for share in args.shares.split(",")}
    results = {"models": MODELS, "clients_per_model": args.clients, "seconds": args.seconds,
               "date": time.strftime("%Y-%m-%d"), "shares": shares}  # fmt: skip
    write_results(args.out, "two_models_cpu", results, table(results))


if __name__ == "__main__":
    main()
