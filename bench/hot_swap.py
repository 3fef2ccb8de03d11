"""A model swapped under load: is any request lost, and how much does the tail grow while the new version loads?

    python -m bench.hot_swap [--clients 16] [--steady-s 15] [--swaps 3] [--between-s 5] [--tail-s 5] [--quick]

The committed default bundle is copied into a temporary model store as version 1 and served by
`beem serve --model-store TMP --poll-interval-s 0` (no polling: a swap happens when the benchmark says). A closed
loop of 16 clients sends single test-split texts to /v1/classify the whole time, recording each request's send
time, latency, status and the version that answered (the response's "model", "name:version"). After `--warmup-s`
and a steady `--steady-s`, `--swaps` times (`--between-s` of load apart): version k (the same bundle, copied) is
written into the store, POST /admin/reload asks for it, and /v1/models is polled every 0.1 s until version k-1 is
"unloaded". The load then runs `--tail-s` more.

Reports: non-200 answers (must be 0), p95 of requests sent in the steady window (before the first copy) against
p95 of those sent during the swaps (each from its reload POST until its old version is unloaded, pooled) and their
ratio (target <= 1.5x), per swap its duration (POST until it answered: verify + load + warm-up of the new
version; POST until the old one is unloaded) and p95, and which version answered how many requests in each
window. Writes bench/results/hot_swap_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import torch

from beem.bundle.manifest import read_manifest, resolve_bundle_dir
from beem.bundle.version_copy import copy_as_version
from bench.live_load import (
    RESULTS_DIR,
    Answer,
    closed_loop,
    latency_summary,
    number,
    test_texts,
)
from bench.result_files import write_results
from bench.server_process import ServerProcess
from service.settings import DEFAULT_BUNDLE

TARGET_P95_RATIO = 1.5
STATUS_POLL_S = 0.1
UNLOAD_TIMEOUT_S = 180.0


def version_statuses(models: dict[str, Any], name: str) -> dict[str, str]:
    entry = next(m for m in models["data"] if m["name"] == name)
    return {v["version"]: v["status"] for v in entry["versions"]}


async def swap_once(
    admin: httpx.AsyncClient, model_dir: Path, bundle_dir: Path, name: str, version: int, t0: float
) -> dict[str, Any]:
    """Write `version` into the store, POST /admin/reload, wait until the version before it is unloaded."""
    old = str(version - 1)
    swap: dict[str, Any] = {"version": version, "copy_start": time.perf_counter() - t0, "timeline": []}
    await asyncio.to_thread(copy_as_version, bundle_dir, model_dir, version, name)
    swap["reload_post"] = time.perf_counter() - t0
    reply = await admin.post("/admin/reload")
    swap["reload_answered"] = time.perf_counter() - t0
    is_json = reply.headers.get("content-type", "").startswith("application/json")
    swap["reload_response"] = {"status": reply.status_code, "body": reply.json() if is_json else reply.text[:500]}
    swap["old_unloaded"] = None
    last: dict[str, str] = {}
    while time.perf_counter() - t0 - swap["reload_post"] < UNLOAD_TIMEOUT_S:
        statuses = version_statuses((await admin.get("/v1/models")).json(), name)
        now = time.perf_counter() - t0
        if statuses != last:
            swap["timeline"].append({"t_s": round(now, 3), "versions": statuses})
            last = statuses
        if statuses.get(old) == "unloaded":
            swap["old_unloaded"] = now
            break
        await asyncio.sleep(STATUS_POLL_S)
    return swap


async def scenario(url: str, model_dir: Path, bundle_dir: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    records: list[Answer] = []
    stop = asyncio.Event()
    t0 = time.perf_counter()
    load = asyncio.create_task(closed_loop(url, test_texts(), args.clients, stop, records, t0))
    swaps: list[dict[str, Any]] = []
    try:
        async with httpx.AsyncClient(base_url=url, timeout=UNLOAD_TIMEOUT_S) as admin:
            await asyncio.sleep(args.warmup_s + args.steady_s)
            for number_of_swap in range(args.swaps):
                if number_of_swap:
                    await asyncio.sleep(args.between_s)
                swaps.append(await swap_once(admin, model_dir, bundle_dir, name, 2 + number_of_swap, t0))
                if swaps[-1]["old_unloaded"] is None:
                    break  # the old version never left: no point swapping again
            await asyncio.sleep(args.tail_s)
    finally:
        stop.set()
        await load
    return {"records": records, "swaps": swaps, "end": time.perf_counter() - t0}


def span_seconds(spans: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in spans)


def window(records: list[Answer], spans: list[tuple[float, float]]) -> list[Answer]:
    """Requests sent within any of the (start, end) spans."""
    return [r for r in records if any(start <= r.sent_s < end for start, end in spans)]


def by_version(records: list[Answer]) -> dict[str, int]:
    """How many requests each version answered ("none": no answer), in version order."""
    counts = Counter((r.model or "none").rpartition(":")[2] for r in records)
    return dict(sorted(counts.items(), key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    bundle_dir = resolve_bundle_dir(Path(args.bundle))
    manifest = read_manifest(bundle_dir)
    with tempfile.TemporaryDirectory(prefix="beem-hot-swap-") as tmp:
        store = Path(tmp) / "store"
        model_dir = store / manifest.name
        copy_as_version(bundle_dir, model_dir, 1, manifest.name)
        command = [sys.executable, "-m", "service.cli", "serve", "--model-store", str(store), "--poll-interval-s", "0"]
        with ServerProcess(command) as server:
            outcome = asyncio.run(scenario(server.url, model_dir, bundle_dir, manifest.name, args))
    records, swaps, end = outcome["records"], outcome["swaps"], outcome["end"]
    # Each swap window: from its reload POST until its old version is unloaded (or the run's end, if never).
    swap_spans = [(s["reload_post"], s["old_unloaded"] if s["old_unloaded"] is not None else end) for s in swaps]
    next_starts = [s["copy_start"] for s in swaps[1:]] + [end]
    after_spans = [(stop, following) for (_, stop), following in zip(swap_spans, next_starts, strict=True)]
    steady_span = [(args.warmup_s, swaps[0]["copy_start"] if swaps else end)]
    steady, during, after = window(records, steady_span), window(records, swap_spans), window(records, after_spans)
    steady_p95, swap_p95 = latency_summary(steady)["p95_ms"], latency_summary(during)["p95_ms"]
    ratio = swap_p95 / steady_p95 if steady_p95 and swap_p95 else None
    errors = sum(1 for r in records if r.status != 200)
    all_unloaded = bool(swaps) and all(s["old_unloaded"] is not None for s in swaps)
    per_swap = []
    for swap, span in zip(swaps, swap_spans, strict=True):
        inside = window(records, [span])
        p95 = latency_summary(inside)["p95_ms"]
        per_swap.append({
            "version": swap["version"],
            "reload_status": swap["reload_response"]["status"],
            "reload_call_s": swap["reload_answered"] - swap["reload_post"],
            "swap_s": None if swap["old_unloaded"] is None else swap["old_unloaded"] - swap["reload_post"],
            "copy_s": swap["reload_post"] - swap["copy_start"],
            **latency_summary(inside, span[1] - span[0]),
            "p95_ratio_over_steady": p95 / steady_p95 if p95 and steady_p95 else None,
            "by_version": by_version(inside),
        })  # fmt: skip
    return {
        "headline": {
            "errors": errors,
            "steady_p95_ms": steady_p95,
            "swap_p95_ms": swap_p95,
            "p95_ratio_swap_over_steady": ratio,
            "target_p95_ratio": TARGET_P95_RATIO,
            "swaps": len(swaps),
            "old_versions_unloaded": all_unloaded,
            "met": errors == 0 and all_unloaded and ratio is not None and ratio <= TARGET_P95_RATIO,
            "mean_swap_s": statistics.mean(p["swap_s"] for p in per_swap) if all_unloaded else None,
            "mean_reload_call_s": statistics.mean(p["reload_call_s"] for p in per_swap) if per_swap else None,
        },
        "windows": {
            "steady": {**latency_summary(steady, span_seconds(steady_span)), "by_version": by_version(steady)},
            "swap": {**latency_summary(during, span_seconds(swap_spans)), "by_version": by_version(during)},
            "after": {**latency_summary(after, span_seconds(after_spans)), "by_version": by_version(after)},
            "all": {**latency_summary(records), "by_version": by_version(records)},
        },
        "per_swap": per_swap,
        "statuses": {str(k): v for k, v in sorted(Counter(r.status for r in records).items())},
        "swaps": swaps,
        "setup": {
            "bundle": manifest.model_id,
            "default_policy": manifest.default_policy,
            "clients": args.clients,
            "warmup_s": args.warmup_s,
            "steady_s": args.steady_s,
            "swaps": args.swaps,
            "between_s": args.between_s,
            "tail_s": args.tail_s,
            "server": "beem serve --model-store TMP --poll-interval-s 0; each new version = the same bundle copied",
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, no GPU",
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "quick": args.quick,
        },
    }


def markdown(results: dict[str, Any]) -> str:
    setup, headline, windows = results["setup"], results["headline"], results["windows"]
    ratio = headline["p95_ratio_swap_over_steady"]
    lines = [
        f"# Hot swap under load ({'QUICK smoke run, not a measurement' if setup['quick'] else 'CPU'})",
        "",
        f"Bundle {setup['bundle']} (policy {setup['default_policy']}), {setup['machine']}, {setup['date']}. "
        f"{setup['server']}; closed loop, {setup['clients']} clients throughout: {setup['warmup_s']:g} s warm-up, "
        f"{setup['steady_s']:g} s steady, then {setup['swaps']} swap(s) {setup['between_s']:g} s apart (each: copy "
        f"version k into the store, POST /admin/reload, wait until version k-1 is unloaded), {setup['tail_s']:g} s "
        "after the last. Windows are by send time; 'swap' pools every swap's POST-to-unloaded span, 'after' the "
        "spans between an unload and the next copy (or the end).",
        "",
        "| window | seconds | requests | errors | req/s | p50 ms | p95 ms | p99 ms | answered by version |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("steady", "swap", "after"):
        w = windows[name]
        versions = ", ".join(f"v{v}: {n}" for v, n in w["by_version"].items())
        lines.append(
            f"| {name} | {w['seconds']:.1f} | {w['requests']} | {w['errors']} | {w['throughput_rps']:.1f} | "
            f"{number(w['p50_ms'])} | {number(w['p95_ms'])} | {number(w['p99_ms'])} | {versions} |"
        )
    lines += [
        "",
        f"**p95 during swaps / steady: {'-' if ratio is None else f'{ratio:.2f}x'}** (target <= "
        f"{headline['target_p95_ratio']:g}x: {'met' if headline['met'] else 'NOT met'}); errors (non-200): "
        f"{headline['errors']} of {windows['all']['requests']}; every old version unloaded: "
        f"{'yes' if headline['old_versions_unloaded'] else 'NO'}.",
        "",
        "| swap to | reload answered after s | old version unloaded after s | requests | p95 ms | p95 / steady "
        "| answered by version | copy s (outside windows) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in results["per_swap"]:
        versions = ", ".join(f"v{v}: {n}" for v, n in p["by_version"].items())
        lines.append(
            f"| v{p['version']} | {p['reload_call_s']:.2f} | {number(p['swap_s'], 2)} | {p['requests']} | "
            f"{number(p['p95_ms'])} | {number(p['p95_ratio_over_steady'], 2)} | {versions} | {p['copy_s']:.2f} |"
        )
    lines += ["", "Version status timeline (seconds since the load began):", ""]
    for swap in results["swaps"]:
        lines.append(
            f"- v{swap['version']}: "
            + "; ".join(
                f"{e['t_s']:.2f}: " + ", ".join(f"v{v} {st}" for v, st in e["versions"].items())
                for e in swap["timeline"]
            )
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="copied into the temporary store")
    arguments.add_argument("--clients", type=int, default=16)
    arguments.add_argument("--warmup-s", type=float, default=3.0, help="load before the steady window")
    arguments.add_argument("--steady-s", type=float, default=15.0, help="the steady window before the swap")
    arguments.add_argument("--swaps", type=int, default=3, help="versions 2, 3, ... swapped in one after another")
    arguments.add_argument("--between-s", type=float, default=5.0, help="load between one unload and the next copy")
    arguments.add_argument("--tail-s", type=float, default=5.0, help="load after the last old version is unloaded")
    arguments.add_argument("--out", default=str(RESULTS_DIR))
    arguments.add_argument(
        "--quick", action="store_true", help="a smoke run: 1 s warm-up, 4 s steady, 1 swap, 2 s tail"
    )
    args = arguments.parse_args()
    if args.quick:
        args.warmup_s, args.steady_s, args.swaps, args.tail_s = 1.0, 4.0, 1, 2.0
    results = run(args)
    write_results(Path(args.out), "hot_swap_cpu", results, markdown(results))
    headline = results["headline"]
    ratio = headline["p95_ratio_swap_over_steady"]
    print(
        f"p95 swap/steady: {'-' if ratio is None else f'{ratio:.2f}x'} (target <= {TARGET_P95_RATIO:g}x), "
        f"errors {headline['errors']}, {headline['swaps']} swap(s), mean {number(headline['mean_swap_s'], 2)} s "
        "from reload POST to old version unloaded"
    )


if __name__ == "__main__":
    main()
