"""What the shadow agreement monitor costs under load: throughput and latency with `--shadow-fraction 0` against
the default 0.02.

    python -m bench.shadow_cost [--rounds 6] [--seconds 15] [--clients 16] [--quick]

`beem serve` (the committed default bundle, its default policy) with the monitor off and with it on, driven in
turn by a closed loop of 16 clients sending single test-split texts to /v1/classify. One server process at a time:
each phase starts a fresh one, warms it with `--warmup-s` of unmeasured load, measures, and stops it. Arms
alternate by round (A B, then B A, ...) so drift of the machine hits both alike; a 429 makes its client wait
50 ms before the next request (no spinning on refusals); every non-200 counts as an error.
Per arm: throughput (answers per second), p50 / p95, and from /metrics the early-exited rows and the shadow rows
(by outcome: compared, shed, ...), so the sampled share is visible. The headline is the throughput ratio shadow /
no shadow (the target: a cost of 3% or less).
Writes bench/results/shadow_cost_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from beem.bundle.manifest import read_manifest, resolve_bundle_dir
from bench.live_load import (
    RESULTS_DIR,
    Answer,
    latency_summary,
    load_for,
    metric_sum,
    number,
    scrape,
    test_texts,
)
from bench.result_files import write_results
from bench.server_process import ServerProcess
from service.settings import DEFAULT_BUNDLE

TARGET_COST = 0.03
ROUND_STRIDE = 997  # each phase starts at another text (a prime, so phases see different texts)


def counters(url: str, num_layers: int, policy: str) -> dict[str, float]:
    """Cumulative counts: answered rows of the default policy, those that left early, shadow rows by outcome."""
    samples = scrape(url)
    counts = {
        "rows": metric_sum(samples, "beem_exit_layer_count", policy=policy),
        "early_rows": metric_sum(samples, "beem_exit_layer_bucket", policy=policy, le=f"{float(num_layers - 1)}"),
        "shadow_comparisons": metric_sum(samples, "beem_shadow_samples_total"),
        "shadow_disagreements": metric_sum(samples, "beem_shadow_samples_total", result="disagree"),
    }
    for outcome in ("compared", "shed", "timeout", "error"):
        counts[f"shadow_rows_{outcome}"] = metric_sum(samples, "beem_shadow_rows_total", outcome=outcome)
    return counts


def run(args: argparse.Namespace) -> dict[str, Any]:
    bundle_dir = resolve_bundle_dir(Path(args.bundle))
    manifest = read_manifest(bundle_dir)
    texts = test_texts()
    base = [sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle_dir), "--poll-interval-s", "0"]
    arms = {"no_shadow": 0.0, "shadow": args.shadow_fraction}
    records: dict[str, list[Answer]] = {arm: [] for arm in arms}
    measured_s = dict.fromkeys(arms, 0.0)
    counts: dict[str, dict[str, float]] = {arm: {} for arm in arms}
    per_round: list[dict[str, Any]] = []
    phase = 0
    for round_number in range(args.rounds):
        order = list(arms) if round_number % 2 == 0 else list(arms)[::-1]
        this_round: dict[str, Any] = {"order": order}
        for arm in order:
            first = phase * ROUND_STRIDE
            phase += 1
            # A fresh process per phase: one server at a time, none stopped and resumed under the other's load.
            with ServerProcess([*base, "--shadow-fraction", str(arms[arm])]) as server:
                warm = asyncio.run(load_for(server.url, texts, args.clients, args.warmup_s, first))
                before = counters(server.url, manifest.num_layers, manifest.default_policy)
                measured = asyncio.run(load_for(server.url, texts, args.clients, args.seconds, first + len(warm)))
                time.sleep(0.5)  # the last sampled shadow rows leave
                after = counters(server.url, manifest.num_layers, manifest.default_policy)
            records[arm] += measured
            measured_s[arm] += args.seconds
            for key, value in after.items():
                counts[arm][key] = counts[arm].get(key, 0.0) + value - before[key]
            this_round[arm] = latency_summary(measured, args.seconds)
            print(
                f"round {round_number + 1} {arm:9s}: {this_round[arm]['throughput_rps']:.1f} req/s, "
                f"p95 {number(this_round[arm]['p95_ms'])} ms, errors {this_round[arm]['errors']}",
                file=sys.stderr,
            )
        this_round["throughput_ratio"] = this_round["shadow"]["throughput_rps"] / max(
            this_round["no_shadow"]["throughput_rps"], 1e-9
        )
        per_round.append(this_round)
    summary = {arm: {**latency_summary(records[arm], measured_s[arm]), **counts[arm]} for arm in arms}
    for arm in arms:
        early, sampled = counts[arm]["early_rows"], sum(counts[arm][f"shadow_rows_{o}"] for o in ("compared",
                                                        "shed", "timeout", "error"))  # fmt: skip
        summary[arm]["shadow_rows_sampled"] = sampled
        summary[arm]["sampled_share_of_early_rows"] = sampled / early if early else None
        summary[arm]["compared_share_of_early_rows"] = counts[arm]["shadow_rows_compared"] / early if early else None
    ratio = summary["shadow"]["throughput_rps"] / max(summary["no_shadow"]["throughput_rps"], 1e-9)
    ratios = [r["throughput_ratio"] for r in per_round]
    return {
        "headline": {
            "throughput_ratio_shadow_over_no_shadow": ratio,
            "throughput_cost": 1.0 - ratio,
            "target_cost": TARGET_COST,
            "met": 1.0 - ratio <= TARGET_COST,
            "p95_ratio_shadow_over_no_shadow": (summary["shadow"]["p95_ms"] or 0.0)
            / max(summary["no_shadow"]["p95_ms"] or 0.0, 1e-9),
            "per_round_throughput_ratios": ratios,
            "per_round_ratio_spread": (max(ratios) - min(ratios)) if ratios else None,
            "per_round_ratio_median": statistics.median(ratios) if ratios else None,
        },
        "arms": summary,
        "rounds": per_round,
        "setup": {
            "bundle": manifest.model_id,
            "default_policy": manifest.default_policy,
            "shadow_fraction": args.shadow_fraction,
            "clients": args.clients,
            "rounds": args.rounds,
            "seconds_per_phase": args.seconds,
            "warmup_s_per_phase": args.warmup_s,
            "texts": f"test split, {len(texts)} texts, one per request, truncate=true",
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, no GPU",
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "quick": args.quick,
        },
    }


def markdown(results: dict[str, Any]) -> str:
    setup, headline, arms = results["setup"], results["headline"], results["arms"]
    lines = [
        f"# Shadow monitor cost ({'QUICK smoke run, not a measurement' if setup['quick'] else 'CPU'})",
        "",
        f"Bundle {setup['bundle']} (policy {setup['default_policy']}), {setup['machine']}, {setup['date']}. "
        f"Closed loop, {setup['clients']} clients, {setup['rounds']} rounds x {setup['seconds_per_phase']:g} s per "
        f"arm (after {setup['warmup_s_per_phase']:g} s warm-up each), arms alternating, a fresh server process "
        "per phase.",
        "",
        "| arm | shadow fraction | req/s | p50 ms | p95 ms | errors | early rows | shadow rows sampled "
        "(share of early) | compared | shed | disagreements |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, fraction in (("no_shadow", 0.0), ("shadow", setup["shadow_fraction"])):
        a = arms[arm]
        share = a["sampled_share_of_early_rows"]
        lines.append(
            f"| {arm} | {fraction:g} | {a['throughput_rps']:.1f} | {number(a['p50_ms'])} | {number(a['p95_ms'])} | "
            f"{a['errors']} | {a['early_rows']:.0f} | {a['shadow_rows_sampled']:.0f} "
            f"({'-' if share is None else f'{share:.2%}'}) | {a['shadow_rows_compared']:.0f} | "
            f"{a['shadow_rows_shed']:.0f} | {a['shadow_disagreements']:.0f} |"
        )
    ratios = ", ".join(f"{r:.3f}" for r in headline["per_round_throughput_ratios"])
    lines += [
        "",
        f"**Throughput shadow / no shadow: {headline['throughput_ratio_shadow_over_no_shadow']:.3f}** "
        f"(cost {headline['throughput_cost']:+.1%}; target <= {headline['target_cost']:.0%}: "
        f"{'met' if headline['met'] else 'NOT met'}); p95 ratio {headline['p95_ratio_shadow_over_no_shadow']:.3f}. "
        f"Per round: {ratios}, median {headline['per_round_ratio_median']:.3f} (the spread between rounds is the noise "
        "floor of this comparison).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--rounds", type=int, default=6)
    arguments.add_argument("--seconds", type=float, default=15.0, help="measured seconds per arm and round")
    arguments.add_argument("--warmup-s", type=float, default=3.0, help="unmeasured load before each phase")
    arguments.add_argument("--clients", type=int, default=16)
    arguments.add_argument("--shadow-fraction", type=float, default=0.02, help="the measured arm's fraction")
    arguments.add_argument("--out", default=str(RESULTS_DIR))
    arguments.add_argument("--quick", action="store_true", help="a smoke run: 1 round x 3 s, 1 s warm-up")
    args = arguments.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warmup_s = 1, 3.0, 1.0
    results = run(args)
    write_results(Path(args.out), "shadow_cost_cpu", results, markdown(results))
    headline = results["headline"]
    print(
        f"shadow/no-shadow throughput ratio: {headline['throughput_ratio_shadow_over_no_shadow']:.3f} "
        f"(cost {headline['throughput_cost']:+.1%}, target <= {TARGET_COST:.0%})"
    )


if __name__ == "__main__":
    main()
