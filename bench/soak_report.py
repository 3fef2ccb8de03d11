"""The soak's table (markdown) and plot (PNG): the checks, then per minute the server's memory, descriptors,
threads, rows in its engines and each route's p95 (`bench/soak.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from bench.live_load import number
from bench.soak_traffic import ROUTES


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "-" if value is None else str(value)


def markdown(results: dict[str, Any]) -> str:
    setup = results["setup"]
    lines = [
        f"# Soak: {results['duration_minutes']:.1f} minutes, {'all checks met' if results['met'] else 'NOT all met'}",
        "",
        f"{setup['machine']}, {setup['date']}. Models: "
        + ", ".join(f"{n} ({t})" for n, t in setup["models"].items())
        + f"; shadow fraction {setup['shadow_fraction']:g}. Mix (weights): "
        + ", ".join(f"{k} {w}" for k, w in setup["mix"].items())
        + f". Capacity (16-client closed loop) {results['capacity_rps']:.1f} req/s; open loop at "
        f"{results['rate_rps']:.1f} req/s; the load generator fell behind its schedule by at most "
        f"{results['max_send_lag_s'] * 1000:.0f} ms.",
        "",
        "| check | value | target | met |",
        "|---|---|---|---|",
    ]
    for name, check in results["checks"].items():
        lines.append(f"| {name} | {_value(check['value'])} | {_value(check['target'])} | "
                     f"{'yes' if check['met'] else '**no**'} |")  # fmt: skip
    lines += ["", "| kind | requests | statuses |", "|---|---|---|"]
    for kind, entry in results["requests"].items():
        statuses = ", ".join(f"{s if s != '0' else 'none'}: {n}" for s, n in entry["statuses"].items())
        lines.append(f"| {kind} | {entry['count']} | {statuses} |")
    rows = results["rows"]
    lines += ["", f"Rows: server {rows['server']}; clients got an engine's answer for {rows['client_engine_answered']} "
              f"rows (429 for {rows['client_refused_429']}); hung up on {rows['hung_up']}.", ""]  # fmt: skip
    lines += ["| swap | model | version | at s | reload | old version unloaded after s |", "|---|---|---|---|---|---|"]
    for k, swap in enumerate(results["swaps"], 1):
        lines.append(f"| {k} | {swap['model']} | {swap['version']} | {swap['at_s']:.0f} | {swap['reload_status']} | "
                     f"{number(swap['swap_s'], 2)} |")  # fmt: skip
    header = " | ".join(f"{r} p50 / p95 ms" for r in ROUTES)
    lines += ["", f"| minute | RSS MiB | fds | threads | rows in engines | {header} |",
              "|---" * (5 + len(ROUTES)) + "|"]  # fmt: skip
    for k, minute in enumerate(results["minutes"]):
        sample = minute.get("sample", {})
        routes = " | ".join(f"{number(minute['routes'][r]['p50_ms'])} / {number(minute['routes'][r]['p95_ms'])}"
                            for r in ROUTES)  # fmt: skip
        lines.append(f"| {k + 1} | {number(sample.get('rss_mib'))} | {sample.get('open_fds', '-')} | "
                     f"{sample.get('threads', '-')} | {sample.get('rows_in_engines', '-')} | {routes} |")  # fmt: skip
    lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    plt.switch_backend("Agg")  # no display: a file only
    samples = results["samples"]
    minutes_at = [s["t_s"] / 60 for s in samples]
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    axes[0][0].plot(minutes_at, [s["rss_mib"] for s in samples], marker=".")
    axes[0][0].set_ylabel("resident memory, MiB")
    axes[0][1].plot(minutes_at, [s["open_fds"] for s in samples], marker=".", label="open descriptors")
    axes[0][1].plot(minutes_at, [s["threads"] for s in samples], marker=".", label="threads")
    axes[0][1].legend()
    window_end = [(m["from_s"] / 60) + results["setup"]["plan"]["sample_every_s"] / 60 for m in results["minutes"]]
    for route in ROUTES:
        axes[1][0].plot(window_end, [m["routes"][route]["p95_ms"] for m in results["minutes"]], marker=".", label=route)
    axes[1][0].set_ylabel("p95 latency per minute, ms")
    axes[1][0].set_yscale("log")
    axes[1][0].legend(fontsize=8)
    axes[1][1].plot(minutes_at, [s["rows_in_engines"] for s in samples], marker=".")
    axes[1][1].set_ylabel("rows admitted, not yet left")
    for swap in results["swaps"]:
        for row in axes:
            for axis in row:
                axis.axvline(swap["at_s"] / 60, color="grey", linewidth=0.6, linestyle=":")
    for axis in axes[1]:
        axis.set_xlabel("minutes (dotted: a hot swap)")
    figure.suptitle(f"Soak, {results['duration_minutes']:.0f} min at {results['rate_rps']:.0f} req/s: "
                    f"{results['status_5xx']} 5xx, {results['unanswered']} unanswered")  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
