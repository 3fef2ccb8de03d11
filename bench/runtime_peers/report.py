"""bench/runtime_peers' summary (the ratios issue 24 asks for), its Markdown table and the CPU it ran on."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

# The instruction sets that decide which runtime wins on a CPU (int8 kernels need VNNI or AMX to pay).
MATCHED_ACCURACY = 0.005  # the 0.5 points, as a share
CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The CPU's model name and which of `CPU_FLAGS` it has (Linux; elsewhere the platform's processor name)."""
    name, flags = platform.processor() or platform.machine(), set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {"model_name": name, "flags": {flag: flag in flags for flag in CPU_FLAGS}}


def summary(results: dict[str, Any], peers: list[str], full: str, default: str) -> dict[str, Any]:
    """Over HTTP (and the same in process): the fastest peer at batch 1 (lowest p50) and at 16 clients (highest
    throughput), and the ratios, each above 1 when ours is faster; then the same among the peers whose test
    accuracy is within 0.5 points of our full depth (an int8 peer may lose more)."""
    accuracy = results["accuracy"]
    matched = [p for p in peers if accuracy[p]["accuracy"] >= accuracy[full]["accuracy"] - MATCHED_ACCURACY]
    return {
        "default_policy": default,
        **_versus(results, peers, full, default),
        "at_matched_accuracy": {"peers": matched, **_versus(results, matched, full, default)} if matched else None,
        "default_accuracy_vs_full_points": (accuracy[default]["accuracy"] - accuracy[full]["accuracy"]) * 100,
    }


def _versus(results: dict[str, Any], peers: list[str], full: str, default: str) -> dict[str, Any]:
    http, local = results["http"], results["in_process"]
    fastest_b1 = min(peers, key=lambda p: http[p]["batch1"]["p50_ms"])
    fastest_c16 = max(peers, key=lambda p: http[p]["c16"]["throughput_rps"])
    local_b1 = min(peers, key=lambda p: local[p]["batch1_p50_ms"])
    local_b16 = max(peers, key=lambda p: local[p]["batch16_texts_per_s"])
    return {
        "fastest_peer": {"batch1_p50": fastest_b1, "c16_throughput": fastest_c16},
        "default_vs_fastest_peer": {
            "batch1_p50": http[fastest_b1]["batch1"]["p50_ms"] / http[default]["batch1"]["p50_ms"],
            "c16_throughput": http[default]["c16"]["throughput_rps"] / http[fastest_c16]["c16"]["throughput_rps"],
        },
        "full_vs_plain_batch1_p50": http[full]["batch1"]["p50_ms"] / http["plain"]["batch1"]["p50_ms"],
        "in_process": {
            "fastest_peer": {"batch1_p50": local_b1, "batch16_throughput": local_b16},
            "default_vs_fastest_peer": {
                "batch1_p50": local[local_b1]["batch1_p50_ms"] / local[default]["batch1_p50_ms"],
                "batch16_throughput": local[default]["batch16_texts_per_s"] / local[local_b16]["batch16_texts_per_s"],
            },
            "full_vs_plain_batch1_p50": local[full]["batch1_p50_ms"] / local["plain"]["batch1_p50_ms"],
        },
    }


def markdown(results: dict[str, Any]) -> str:
    setup, s = results["setup"], results["summary"]
    cpu = setup["cpu"]
    flags = ", ".join(f for f, present in cpu["flags"].items() if present) or "none of those listed"
    missing = ", ".join(f for f, present in cpu["flags"].items() if not present)
    quick = " (quick: not numbers to quote)" if setup["quick"] else ""
    lines = [
        f"`python -m bench.runtime_peers` on {setup['bundle']} (default policy {setup['default_policy']}), "
        f"{setup['date']}, {setup['rounds']} alternating rounds{quick}.",
        f"CPU: {cpu['model_name']}; {setup['machine']}. Has {flags}; lacks {missing or '-'}.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in setup['versions'].items())}.",
        "",
        "| system | test accuracy % | in process: batch-1 p50 ms | batch-16 texts/s | HTTP: 1 client p50 ms "
        "| 16 clients req/s | 16 clients p95 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, local in results["in_process"].items():
        http, measured = results["http"][name], results["accuracy"][name]
        layer = f", mean exit layer {measured['mean_exit_layer']:.2f}" if "mean_exit_layer" in measured else ""
        lines.append(
            f"| {name} | {measured['accuracy'] * 100:.2f}{layer} | {local['batch1_p50_ms']:.2f} | "
            f"{local['batch16_texts_per_s']:.1f} | {http['batch1']['p50_ms']:.2f} | "
            f"{http['c16']['throughput_rps']:.1f} | {http['c16']['p95_ms']:.1f} |"
        )
    versus, local = s["default_vs_fastest_peer"], s["in_process"]
    local_versus = local["default_vs_fastest_peer"]
    lines += [
        "",
        f"- Default policy against the fastest peer over HTTP: batch-1 p50 {versus['batch1_p50']:.2f}x "
        f"(fastest: {s['fastest_peer']['batch1_p50']}), 16-client throughput {versus['c16_throughput']:.2f}x "
        f"(fastest: {s['fastest_peer']['c16_throughput']}); above 1: ours is faster.",
        f"- In process: batch-1 {local_versus['batch1_p50']:.2f}x ({local['fastest_peer']['batch1_p50']}), "
        f"batch-16 {local_versus['batch16_throughput']:.2f}x ({local['fastest_peer']['batch16_throughput']}).",
        *_matched_line(s),
        f"- Our full depth over the plain endpoint, batch-1 p50: {s['full_vs_plain_batch1_p50']:.3f} over HTTP, "
        f"{local['full_vs_plain_batch1_p50']:.3f} in process (at most 1: no slower).",
        f"- Default policy's test accuracy against our full depth: {s['default_accuracy_vs_full_points']:+.2f} points.",
        f"- Preparation (s): {_preparation(setup['preparation_s'])}.",
        "- Peers over HTTP answer one request at a time (a minimal endpoint, no batching), as the plain endpoint of "
        "bench.standard_comparison does.",
    ]
    return "\n".join(lines) + "\n"


def _preparation(seconds: dict[str, dict[str, float]]) -> str:
    return "; ".join(f"{name}: " + ", ".join(f"{step} {value:.1f}" for step, value in steps.items())
                     for name, steps in seconds.items())  # fmt: skip


def _matched_line(s: dict[str, Any]) -> list[str]:
    matched = s["at_matched_accuracy"]
    if matched is None:
        return ["- No peer is within 0.5 points of our full depth's test accuracy."]
    versus, fastest = matched["default_vs_fastest_peer"], matched["fastest_peer"]
    return [f"- Among the peers within 0.5 points of our full depth's accuracy ({', '.join(matched['peers'])}): "
            f"batch-1 p50 {versus['batch1_p50']:.2f}x ({fastest['batch1_p50']}), 16-client throughput "
            f"{versus['c16_throughput']:.2f}x ({fastest['c16_throughput']})."]  # fmt: skip
