"""Summaries of recorded requests: latency percentiles, throughput, errors and shed load, exit depth, accuracy;
the JSON `beem loadtest --json` prints, a text table, and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadtest.load_runner import PhaseResult

SHED_STATUS = 429


def percentile_ms(latencies_s: list[float], q: float) -> float | None:
    """Nearest-rank percentile in milliseconds; None without data."""
    if not latencies_s:
        return None
    ordered = sorted(latencies_s)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] * 1000


def summarize(result: PhaseResult) -> dict[str, Any]:
    answered = [r for r in result.records if r.status == 200]
    latencies = [r.latency_s for r in answered]
    shed = [r.latency_s for r in result.records if r.status == SHED_STATUS]
    judged = [r.correct for r in answered if r.correct is not None]
    return {
        "requests": len(result.records),
        "ok": len(answered),
        "p50_ms": percentile_ms(latencies, 50),
        "p95_ms": percentile_ms(latencies, 95),
        "p99_ms": percentile_ms(latencies, 99),
        "throughput_rps": len(answered) / result.elapsed_s if result.elapsed_s > 0 else 0.0,
        "errors": sum(1 for r in result.records if r.status not in (200, SHED_STATUS)),
        "shed": len(shed),
        "shed_p95_ms": percentile_ms(shed, 95),  # how fast the excess hears it is refused
        "server_errors": sum(1 for r in result.records if r.status >= 500),
        "mean_exit_layer": sum(r.exit_layer or 0 for r in answered) / len(answered) if answered else None,
        "accuracy": sum(judged) / len(judged) if judged else None,
    }


def format_table(summaries: dict[str, dict[str, Any]], num_layers: int | None) -> str:
    header = f"{'policy':10s} {'requests':>8s} {'ok':>6s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} " \
             f"{'req/s':>8s} {'errors':>6s} {'shed':>6s} {'exit':>6s} {'acc %':>7s}"  # fmt: skip

    def number(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [header]
    for name, s in summaries.items():
        accuracy = None if s["accuracy"] is None else s["accuracy"] * 100
        lines.append(
            f"{name:10s} {s['requests']:8d} {s['ok']:6d} {number(s['p50_ms']):>8s} {number(s['p95_ms']):>8s} "
            f"{number(s['p99_ms']):>8s} {number(s['throughput_rps']):>8s} {s['errors']:6d} {s['shed']:6d} "
            f"{number(s['mean_exit_layer'], 2):>6s} {number(accuracy, 2):>7s}"
        )
    if num_layers is not None:
        lines.append(f"(model depth {num_layers} layers)")
    return "\n".join(lines)


def plot_latency_cdf(results: dict[str, PhaseResult], path: Path, title: str) -> None:
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, result in results.items():
        latencies = sorted(r.latency_s * 1000 for r in result.records if r.status == 200)
        if latencies:
            axis.plot(latencies, [(i + 1) / len(latencies) for i in range(len(latencies))], label=name)
    axis.set_xlabel("latency (ms)")
    axis.set_ylabel("fraction of requests answered")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_rate_sweep(sweep: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    """Throughput against p95 latency, one point per offered rate, one line per policy."""
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, points in sweep.items():
        shown = [p for p in points if p["p95_ms"] is not None]
        axis.plot([p["throughput_rps"] for p in shown], [p["p95_ms"] for p in shown], marker="o", label=name)
        for p in shown:
            axis.annotate(f"{p['rate']:g}/s", (p["throughput_rps"], p["p95_ms"]), fontsize=7)
    axis.set_xlabel("throughput (answered requests/s)")
    axis.set_ylabel("p95 latency (ms)")
    axis.set_yscale("log")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
