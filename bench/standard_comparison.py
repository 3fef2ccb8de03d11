"""The standard comparison: our server under BEEM-A, BEEM-C, patience, max-prob and full depth, plus the same
weights in a plain transformers forward behind a minimal FastAPI endpoint, at batch 1 and under load.

    python -m bench.standard_comparison [--bundle DIR] [--out bench/results] [--quick]

Runs `beem serve` and `bench.plain_forward_server` as child processes on free ports, drives them in alternating
rounds with the `beem loadtest` machinery (only one is under load at a time), and writes
`<out>/standard_comparison_<device>.json` and `.md`:
1. batch 1: closed loop with one client;
2. closed loop with 16 clients (throughput and p95);
3. open-loop rate sweep: the highest offered rate each policy sustains with p95 under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from beem.bundle.manifest import resolve_bundle_dir
from bench.server_process import ServerProcess
from loadtest.load_report import plot_latency_cdf, plot_rate_sweep, summarize
from loadtest.load_runner import LoadPlan, PhaseResult, run_plan
from loadtest.workload import text_workload
from service.settings import DEFAULT_BUNDLE

POLICIES = ("beem-a", "beem-c", "patience", "max-prob", "full")
BASELINE = "plain-forward"
SUSTAINED_P95_MS = 100.0


def measure(targets: list[tuple[str, tuple[str, ...]]], make_plan: Any, rounds: int) -> dict[str, PhaseResult]:
    """Both servers, round by round in alternating order, so machine drift hits the baseline and ours alike."""
    merged: dict[str, PhaseResult] = {}
    workload = text_workload()
    for round_number in range(rounds):
        order = targets if round_number % 2 == 0 else targets[::-1]
        for url, policies in order:
            plan = make_plan(policies)
            for policy, result in asyncio.run(run_plan(url, workload, plan, sys.stderr.isatty())).items():
                into = merged.setdefault(policy, PhaseResult())
                into.records.extend(result.records)
                into.elapsed_s += result.elapsed_s
    return merged


def sustained_rate(points: list[dict[str, Any]]) -> float | None:
    good = [p["rate"] for p in points if p["p95_ms"] is not None and p["p95_ms"] < SUSTAINED_P95_MS
            and p["errors"] == 0 and p["shed"] == 0]  # fmt: skip
    return max(good, default=None)


def run(bundle_dir: Path, out: Path, quick: bool, rates_override: tuple[float, ...] | None = None) -> dict[str, Any]:
    # per policy and server, over all rounds
    batch1_requests, load_seconds, sweep_seconds = (60, 4.0, 3.0) if quick else (300, 12.0, 6.0)
    rates = rates_override or ((40.0, 80.0, 120.0) if quick else (40.0, 60.0, 80.0, 100.0, 120.0, 160.0))
    serve = [sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle_dir)]
    plain = [sys.executable, "-m", "bench.plain_forward_server", "--bundle", str(bundle_dir)]
    rounds = 3
    results: dict[str, Any] = {
        "batch1": {},
        "closed_c16": {},
        "sweep": {policy: [] for policy in (*POLICIES, BASELINE)},
    }
    # Both servers stay up; only the one under load works, the other idles.
    with ServerProcess(plain) as baseline, ServerProcess(serve) as ours:
        targets = [(baseline.url, (BASELINE,)), (ours.url, POLICIES)]
        # Each outer round is one LoadPlan round: the totals above are split evenly over `rounds`.
        batch1 = measure(
            targets,
            lambda p: LoadPlan(p, "closed", concurrency=1, requests=batch1_requests // rounds, rounds=1),
            rounds,
        )
        loaded = measure(
            targets, lambda p: LoadPlan(p, "closed", concurrency=16, duration_s=load_seconds / rounds, rounds=1), rounds
        )
        for rate in rates:
            swept = measure(
                targets, lambda p, r=rate: LoadPlan(p, "open", rate=r, duration_s=sweep_seconds, rounds=1), 1
            )
            for policy, result in swept.items():
                results["sweep"][policy].append({"rate": rate, **summarize(result)})
    for policy in (*POLICIES, BASELINE):
        results["batch1"][policy] = summarize(batch1[policy])
        results["closed_c16"][policy] = summarize(loaded[policy])
    cdf = {policy: loaded[policy] for policy in ("beem-a", "full", BASELINE)}
    results["sustained_rate_p95_under_100ms"] = {p: sustained_rate(points) for p, points in results["sweep"].items()}
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results["setup"] = {
        "bundle": f"{manifest['name']}:{manifest['version']}",
        "layer_speedup_test": {p: manifest["policies"][p]["test"]["layer_speedup"] for p in POLICIES},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        + (torch.cuda.get_device_name(0) if device == "cuda" else "no GPU"),
        "date": time.strftime("%Y-%m-%d"),
        "quick": quick,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"standard_comparison_{device}.json").write_text(json.dumps(results, indent=1))
    (out / f"standard_comparison_{device}.md").write_text(markdown(results))
    plot_latency_cdf(cdf, out / f"latency_cdf_c16_{device}.png", "latency CDF, closed loop, 16 clients")
    plot_rate_sweep(results["sweep"], out / f"rate_sweep_{device}.png", "open loop: throughput against p95")
    return results


def markdown(results: dict[str, Any]) -> str:
    setup = results["setup"]
    full_b1, full_c16 = results["batch1"]["full"], results["closed_c16"]["full"]
    lines = [
        f"Bundle {setup['bundle']}, {setup['machine']}, {setup['date']}.",
        "",
        "| policy | layer speed-up | batch-1 p50 ms | latency speed-up | c16 req/s | throughput ratio | c16 p95 ms "
        "| sustained rate (p95 < 100 ms) | accuracy % (batch-1 requests: same texts for all) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for policy in (*POLICIES, BASELINE):
        b1, c16 = results["batch1"][policy], results["closed_c16"][policy]
        layer = setup["layer_speedup_test"].get(policy, 1.0)
        # Under load each policy answers a different number of texts, so only batch-1 accuracies compare.
        accuracy = "-" if b1["accuracy"] is None else f"{b1['accuracy'] * 100:.1f}"
        rate = results["sustained_rate_p95_under_100ms"][policy]
        lines.append(
            f"| {policy} | {layer:.2f}x | {b1['p50_ms']:.2f} | {full_b1['p50_ms'] / b1['p50_ms']:.2f}x | "
            f"{c16['throughput_rps']:.1f} | {c16['throughput_rps'] / full_c16['throughput_rps']:.2f}x | "
            f"{c16['p95_ms']:.1f} | {'-' if rate is None else f'{rate:g}/s'} | {accuracy} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    arguments.add_argument("--quick", action="store_true", help="short phases: a smoke run, not numbers to quote")
    arguments.add_argument(
        "--rates", help="open-loop sweep rates, comma-separated (default 40, 60, 80, 100, 120, 160 per second)"
    )
    args = arguments.parse_args()
    rates = tuple(float(r) for r in args.rates.split(",")) if args.rates else None
    results = run(resolve_bundle_dir(Path(args.bundle)), Path(args.out), args.quick, rates)
    print(markdown(results))


if __name__ == "__main__":
    main()
