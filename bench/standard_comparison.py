"""The standard comparison: our server under BEEM-A, BEEM-C, patience, max-prob and full depth, plus the same
weights in a plain transformers forward behind a minimal FastAPI endpoint, at batch 1, under load and past
capacity.

    python -m bench.standard_comparison [--bundle DIR] [--out bench/results] [--quick]

Runs `beem serve` and `bench.plain_forward_server` as child processes on free ports and drives them with the
`beem loadtest` machinery in alternating rounds; the server not being measured is stopped (SIGSTOP) meanwhile, so
its idle threads take no core. Writes `<out>/standard_comparison_<device>.json` and `.md` and the plots:
1. batch 1: closed loop with one client;
2. closed loop with 16 clients (throughput and p95);
3. open-loop rate sweep: the highest offered rate each policy sustains with p95 under 100 ms (its capacity);
4. overload: BEEM-A at its capacity, then at three times it, on a server given a 100 ms latency budget
   (`--max-queue-wait-ms 100`, the SLO the sweep measures capacity by): admitted p95, how many were shed (429)
   and how fast they heard it, 5xx;
5. SIGTERM at three times capacity: every request the server admitted before the signal must be answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from beem.bundle.manifest import read_manifest, resolve_bundle_dir
from bench.server_process import ServerProcess
from loadtest.load_report import plot_latency_cdf, plot_rate_sweep, summarize
from loadtest.load_runner import LoadPlan, PhaseResult, run_plan
from loadtest.workload import text_workload
from service.settings import DEFAULT_BUNDLE

POLICIES = ("beem-a", "beem-c", "patience", "max-prob", "full")
BASELINE = "plain-forward"
SUSTAINED_P95_MS = 100.0
OVERLOAD_FACTOR = 3.0
READ_MARGIN_S = 0.1  # a request sent this long before SIGTERM has been read by the server: it was admitted or shed


def measure(
    targets: list[tuple[ServerProcess, tuple[str, ...]]], make_plan: Any, rounds: int
) -> dict[str, PhaseResult]:
    """Each server in turn, round by round in alternating order, the others stopped, so machine drift hits the
    baseline and ours alike and an idle server takes nothing from the measured one."""
    merged: dict[str, PhaseResult] = {}
    workload = text_workload()
    for round_number in range(rounds):
        order = targets if round_number % 2 == 0 else targets[::-1]
        for server, policies in order:
            for other, _ in targets:
                if other is not server:
                    other.pause()
            server.resume()
            time.sleep(0.05)
            plan = make_plan(policies)
            for policy, result in asyncio.run(run_plan(server.url, workload, plan, sys.stderr.isatty())).items():
                into = merged.setdefault(policy, PhaseResult())
                into.records.extend(result.records)
                into.elapsed_s += result.elapsed_s
    for server, _ in targets:
        server.resume()
    return merged


def sustained_rate(points: list[dict[str, Any]]) -> float | None:
    good = [p["rate"] for p in points if p["p95_ms"] is not None and p["p95_ms"] < SUSTAINED_P95_MS
            and p["errors"] == 0 and p["shed"] == 0]  # fmt: skip
    return max(good, default=None)


def sigterm_under_load(command: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """A fresh server at `rate` (open loop, BEEM-A); SIGTERM after `seconds`. Requests sent before the signal
    that the server admitted (anything but a 429) must all be answered 200."""
    server = ServerProcess(command)
    plan = LoadPlan(("beem-a",), "open", rate=rate, duration_s=seconds + 1.0, rounds=1, timeout_s=60)
    signalled: dict[str, float] = {}

    async def run() -> PhaseResult:
        async def terminate_later() -> None:
            await asyncio.sleep(seconds)
            signalled["at"] = time.perf_counter()
            server.process.send_signal(signal.SIGTERM)

        killer = asyncio.create_task(terminate_later())
        results = await run_plan(server.url, text_workload(), plan, False)
        await killer
        return results["beem-a"]

    try:
        result = asyncio.run(run())
        exit_code = server.process.wait(timeout=90)
    finally:
        server.stop()
    read = [r for r in result.records if r.sent_at < signalled["at"] - READ_MARGIN_S]
    admitted = [r for r in read if r.status != 429]
    in_transit = [r for r in result.records if signalled["at"] - READ_MARGIN_S <= r.sent_at < signalled["at"]]
    return {
        "rate": rate,
        "signal_after_s": seconds,
        "admitted_before_signal": len(admitted),  # sent at least READ_MARGIN_S before it, not shed
        "answered_200": sum(1 for r in admitted if r.status == 200),
        "lost": sum(1 for r in admitted if r.status != 200),
        "in_transit_statuses": sorted({r.status for r in in_transit}),  # 0: closed before the server read it
        "statuses_after_signal": sorted({r.status for r in result.records if r.sent_at >= signalled["at"]}),
        "exit_code": exit_code,
    }


def run(bundle_dir: Path, out: Path, quick: bool, rates_override: tuple[float, ...] | None = None) -> dict[str, Any]:
    # per policy and server, over all rounds
    quick_sizes, full_sizes = (60, 4.0, 3.0, 4.0), (300, 12.0, 6.0, 10.0)
    batch1_requests, load_seconds, sweep_seconds, overload_seconds = quick_sizes if quick else full_sizes
    rates = rates_override or ((40.0, 80.0, 120.0) if quick else (40.0, 60.0, 80.0, 100.0, 120.0, 140.0, 160.0))
    serve = [sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle_dir)]
    plain = [sys.executable, "-m", "bench.plain_forward_server", "--bundle", str(bundle_dir)]
    rounds = 3
    results: dict[str, Any] = {
        "batch1": {},
        "closed_c16": {},
        "sweep": {policy: [] for policy in (*POLICIES, BASELINE)},
    }
    with ServerProcess(plain) as baseline, ServerProcess(serve) as ours:
        targets = [(baseline, (BASELINE,)), (ours, POLICIES)]
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
    results["sustained_rate_p95_under_100ms"] = {
        policy: sustained_rate(points) for policy, points in results["sweep"].items()
    }
    capacity = results["sustained_rate_p95_under_100ms"]["beem-a"] or rates[0]
    overload = {}
    with ServerProcess([*serve, "--max-queue-wait-ms", str(SUSTAINED_P95_MS)]) as budgeted:
        for label, rate in (("at_capacity", capacity), ("at_3x_capacity", OVERLOAD_FACTOR * capacity)):
            plan = LoadPlan(("beem-a",), "open", rate=rate, duration_s=overload_seconds, rounds=1)
            phase = asyncio.run(run_plan(budgeted.url, text_workload(), plan, sys.stderr.isatty()))
            overload[label] = {"rate": rate, **summarize(phase["beem-a"])}
    results["overload"] = {"max_queue_wait_ms": SUSTAINED_P95_MS, **overload}
    results["sigterm_at_3x_capacity"] = sigterm_under_load(serve, OVERLOAD_FACTOR * capacity, overload_seconds / 2)
    for policy in (*POLICIES, BASELINE):
        results["batch1"][policy] = summarize(batch1[policy])
        results["closed_c16"][policy] = summarize(loaded[policy])
    cdf = {policy: loaded[policy] for policy in ("beem-a", "full", BASELINE)}
    manifest = read_manifest(bundle_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results["setup"] = {
        "bundle": manifest.model_id,
        "layer_speedup_test": {p: manifest.policies[p].test["layer_speedup"] for p in POLICIES},
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
        "| policy | layer speed-up | batch-1 p50 ms | latency speed-up (share of layers) | c16 req/s "
        "| throughput ratio (share) | c16 p95 ms (vs full) | sustained rate (p95 < 100 ms) | accuracy % (batch 1) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for policy in (*POLICIES, BASELINE):
        b1, c16 = results["batch1"][policy], results["closed_c16"][policy]
        layer = setup["layer_speedup_test"].get(policy, 1.0)
        latency = full_b1["p50_ms"] / b1["p50_ms"]
        throughput = c16["throughput_rps"] / full_c16["throughput_rps"]
        # Under load each policy answers a different number of texts, so only batch-1 accuracies compare.
        accuracy = "-" if b1["accuracy"] is None else f"{b1['accuracy'] * 100:.1f}"
        rate = results["sustained_rate_p95_under_100ms"][policy]
        lines.append(
            f"| {policy} | {layer:.2f}x | {b1['p50_ms']:.2f} | {latency:.2f}x ({latency / layer:.0%}) | "
            f"{c16['throughput_rps']:.1f} | {throughput:.2f}x ({throughput / layer:.0%}) | "
            f"{c16['p95_ms']:.1f} ({c16['p95_ms'] / full_c16['p95_ms']:.2f}x) | "
            f"{'-' if rate is None else f'{rate:g}/s'} | {accuracy} |"
        )
    overload, sigterm = results["overload"], results["sigterm_at_3x_capacity"]
    at, over = overload["at_capacity"], overload["at_3x_capacity"]
    lines += [
        "",
        f"Overload (BEEM-A, open loop, max_queue_wait_ms {overload['max_queue_wait_ms']:g}): at capacity "
        f"({at['rate']:g}/s) p95 {at['p95_ms']:.1f} ms; at 3x "
        f"({over['rate']:g}/s) admitted p95 {over['p95_ms']:.1f} ms ({over['p95_ms'] / at['p95_ms']:.2f}x), "
        f"{over['ok']} answered, {over['shed']} shed (429, p95 {_ms(over['shed_p95_ms'])}), "
        f"{over['server_errors']} 5xx, {over['errors'] - over['server_errors']} other errors.",
        f"SIGTERM at 3x capacity after {sigterm['signal_after_s']:g} s: {sigterm['admitted_before_signal']} "
        f"requests admitted before the signal, {sigterm['answered_200']} answered, {sigterm['lost']} lost; "
        f"exit code {sigterm['exit_code']}.",
    ]
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    arguments.add_argument("--quick", action="store_true", help="short phases: a smoke run, not numbers to quote")
    arguments.add_argument(
        "--rates", help="open-loop sweep rates, comma-separated (default 40, 60, ..., 160 per second)"
    )
    args = arguments.parse_args()
    rates = tuple(float(r) for r in args.rates.split(",")) if args.rates else None
    results = run(resolve_bundle_dir(Path(args.bundle)), Path(args.out), args.quick, rates)
    print(markdown(results))


if __name__ == "__main__":
    main()
