"""Does the engine turn saved layers into saved time? Side-by-side ratios on one machine, in one run.

    python -m bench.serve_benchmark [--bundle DIR] [--requests 300] [--duration 15] [--concurrency 16]

1. In-process, batch 1, no HTTP, one thread: a plain transformers forward of the same weights (the encoder's own
   `forward` and the final exit head) against the engine's batch code at `full` depth and at BEEM-A, interleaved
   text by text (the engine overhead without the thread hand-off, which the HTTP numbers include).
2. A real `beem serve` process: batch-1 latency (sequential requests) and closed-loop throughput at a given
   concurrency, for BEEM-A and full, interleaved in rounds so drift hits both alike.
Prints one JSON object with the measurements and the ratios the README quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx
import torch

from beem.bundle.manifest import resolve_bundle_dir
from beem.data.examples import read_dataset
from beem.data.rotten_tomatoes import REPO_DATA_FILE
from beem.data.splits import split_dataset
from bench.server_process import ServerProcess
from service.engine.batch_scheduler import BatchScheduler
from service.engine.inference_engine import InferenceEngine
from service.engine.work_item import WorkItem
from service.metrics import ServiceMetrics
from service.settings import DEFAULT_BUNDLE


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def in_process(bundle_dir: Path, texts: list[str], rounds: int) -> dict[str, float]:
    """Median milliseconds per text at batch 1, all in this thread so no thread pool competes: the encoder's own
    `forward` plus the final exit head, against the engine's batch code (`run_batch`: layer loop, exit heads
    where a policy reads them, policy steps, answers) at full depth and at BEEM-A. Interleaved text by text."""
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    metrics = ServiceMetrics(int(manifest["num_layers"]))
    engine = InferenceEngine(BatchScheduler(1, 0.0, 1 << 20, 1024, metrics), metrics, "cpu", "float32")
    engine.load(bundle_dir, None, start_worker=False)
    bundle = engine.bundle
    assert bundle is not None
    encoder, heads, tokenizer = bundle.model.backbone.model, bundle.model.heads, bundle.tokenizer

    def plain(text: str) -> None:
        encoded = tokenizer(text, return_tensors="pt")
        hidden = encoder(**encoded).last_hidden_state
        heads(bundle.num_layers - 1, hidden, encoded["attention_mask"]).argmax(-1).tolist()

    def engine_batch(text: str, policy_name: str) -> None:
        encoded = tokenizer(text)
        engine.run_batch([WorkItem(
            input_ids=encoded["input_ids"], token_type_ids=encoded.get("token_type_ids"),
            policy=bundle.policies[policy_name], policy_name=policy_name, last_layer=bundle.num_layers,
            return_exits=False, deadline=time.monotonic() + 60, on_done=lambda _: None,
        )])  # fmt: skip

    runners = {
        "plain_forward": plain,
        "engine_full": lambda t: engine_batch(t, "full"),
        "engine_beem_a": lambda t: engine_batch(t, "beem-a"),
    }
    timings: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for _ in range(rounds):
            for text in texts:
                for name, run in runners.items():
                    started = time.perf_counter()
                    run(text)
                    timings[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in timings.items()}


async def sequential(url: str, texts: list[str], policy: str) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for text in texts:
            started = time.perf_counter()
            response = await client.post("/v1/classify", json={"inputs": text, "policy": {"name": policy}})
            response.raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def closed_loop(url: str, texts: list[str], policy: str, concurrency: int, duration_s: float) -> dict[str, float]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration_s

    async def client_loop(worker: int, client: httpx.AsyncClient) -> None:
        index = worker
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            body = {"inputs": texts[index % len(texts)], "policy": {"name": policy}}
            (await client.post("/v1/classify", json=body)).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
            index += concurrency

    limits = httpx.Limits(max_connections=concurrency)
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(client_loop(w, client) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"throughput_rps": len(latencies) / elapsed, "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95), "requests": len(latencies)}  # fmt: skip


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--requests", type=int, default=200, help="sequential requests per policy per round")
    arguments.add_argument("--rounds", type=int, default=3)
    arguments.add_argument("--duration", type=float, default=10.0, help="seconds of closed-loop load per round")
    arguments.add_argument("--concurrency", type=int, default=16)
    args = arguments.parse_args()
    bundle_dir = resolve_bundle_dir(Path(args.bundle))
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    texts = [e.text for e in split_dataset(read_dataset(REPO_DATA_FILE)).test.examples][: args.requests]
    layer_speedup = manifest["policies"]["beem-a"]["test"]["layer_speedup"]

    engine_ms = in_process(bundle_dir, texts[:100], args.rounds)
    server = ServerProcess([sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle_dir)])
    try:
        batch1: dict[str, list[float]] = {"beem-a": [], "full": []}
        loaded: dict[str, list[dict[str, float]]] = {"beem-a": [], "full": []}
        for _ in range(args.rounds):
            for policy in ("full", "beem-a"):
                batch1[policy] += asyncio.run(sequential(server.url, texts, policy))
            for policy in ("full", "beem-a"):
                loaded[policy].append(
                    asyncio.run(closed_loop(server.url, texts, policy, args.concurrency, args.duration))
                )
    finally:
        server.stop()

    p50 = {policy: statistics.median(values) for policy, values in batch1.items()}
    throughput = {policy: statistics.median(r["throughput_rps"] for r in runs) for policy, runs in loaded.items()}
    p95 = {policy: statistics.median(r["p95_ms"] for r in runs) for policy, runs in loaded.items()}
    latency_speedup = p50["full"] / p50["beem-a"]
    throughput_ratio = throughput["beem-a"] / throughput["full"]
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads",
        "bundle": f"{manifest['name']}:{manifest['version']}",
        "layer_speedup_beem_a_test": layer_speedup,
        "in_process_batch1_ms": engine_ms,
        "engine_full_vs_plain_forward": engine_ms["engine_full"] / engine_ms["plain_forward"],
        "http_batch1_p50_ms": p50,
        "http_batch1_latency_speedup": latency_speedup,
        "latency_speedup_share_of_layer_speedup": latency_speedup / layer_speedup,
        f"closed_loop_c{args.concurrency}": {"throughput_rps": throughput, "p95_ms": p95},
        "throughput_ratio": throughput_ratio,
        "throughput_share_of_layer_speedup": throughput_ratio / layer_speedup,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
