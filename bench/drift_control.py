"""Online alpha control under synthetic drift: does the controller bring agreement with full depth back to its
target when the traffic shifts, and what does alpha do meanwhile?

    python -m bench.drift_control [--in-distribution 600] [--drifted 1200] [--batch 50] [--drift shuffle] [--quick]

The committed default bundle served with `--alpha-control <model> --shadow-fraction 1.0` (every early-exited row
is re-run at full depth, so each batch's agreement is measured, not sampled) and
BEEM_ALPHA_CONTROL_MIN_COMPARISONS (`--min-comparisons`, default 30). Requests go one at a time (single texts,
the default policy), in batches; after each batch the benchmark waits until every shadow row of it has left, then
reads /metrics (beem_shadow_agreement and beem_policy_threshold of the default policy, threshold changes, shadow
counts) and /v1/models (the controller's window: comparisons at the current threshold).
- phase 1: `--in-distribution` test-split texts as they are;
- phase 2: `--drifted` test-split texts (the ones after phase 1's, cycling) moved to another distribution by
  `--drift`: `interleave` (default: each text's words alternating with the next text's, two reviews jumbled into
  one), `shuffle` (the words of each text in a random order, seeded per text from `--seed`), `first-words` (the
  first `--words` words only) or `shuffle-first-words` (both). Measured offline on 400 test texts at the calibrated
  alpha, BEEM-A's agreement with full depth is 0.9925 as they are, 0.985 interleaved, 0.9875 cut to 2 words,
  0.99-0.9975 under the other transforms: this model's early exits are robust, `interleave` moves them most.
Then phase 2 again on a fresh server without `--alpha-control` (same shadow fraction), for comparison.
Any non-200 answer is counted per batch (`--max-queue-wait-ms` is passed to both servers, the server's 500 by
default).

Per batch: the server's windowed estimate (the gauge: the controller's input; it holds its last value after a
threshold change empties the window until the next comparison), the batch's own agreement (1 - its shadow
disagreements / its rows: exact, every early row is shadowed), alpha, mean exit layer. Recovery: after the drift
starts, the first batch at which the windowed estimate is back at or above the target having been below it (with at
least `--min-comparisons` comparisons in the window). Writes bench/results/drift_control_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import torch

from beem.bundle.manifest import read_manifest, resolve_bundle_dir
from bench.live_load import RESULTS_DIR, Answer, metric_sum, metric_value, number, scrape, send, test_texts
from bench.result_files import write_results
from bench.server_process import ServerProcess
from loadtest.http_connection import ConnectionPool
from service.settings import DEFAULT_BUNDLE

DRIFTS = ("interleave", "shuffle", "first-words", "shuffle-first-words")
SETTLE_QUIET_S = 0.3  # no shadow row left for this long: the batch's shadow rows are done
SETTLE_TIMEOUT_S = 30.0


def drift_transform(kind: str, words: int, seed: int, texts: Sequence[str]) -> Callable[[int, str], str]:
    """(index of the text in `texts`, text) -> the drifted text; deterministic for a seed."""

    def shuffled(index: int, text: str) -> list[str]:
        tokens = text.split()
        random.Random(f"{seed}:{index}").shuffle(tokens)
        return tokens

    def transform(index: int, text: str) -> str:
        if kind == "interleave":
            following = texts[(index + 1) % len(texts)].split()
            return " ".join(word for pair in itertools.zip_longest(text.split(), following) for word in pair if word)
        if kind == "shuffle":
            return " ".join(shuffled(index, text))
        if kind == "first-words":
            return " ".join(text.split()[:words])
        return " ".join(shuffled(index, text)[:words])

    return transform


def read_state(url: str, name: str, policy: str, num_layers: int) -> dict[str, Any]:
    samples = scrape(url)
    labels = {"model": name, "policy": policy}
    summary = next(m for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"] if m["name"] == name)
    window = summary["shadow"]["policies"][policy] if summary["shadow"] else {}
    return {
        "agreement": metric_value(samples, "beem_shadow_agreement", **labels),
        "target": metric_value(samples, "beem_shadow_agreement_calibrated", **labels),
        "threshold": metric_value(samples, "beem_policy_threshold", **labels),
        "threshold_changes": metric_sum(samples, "beem_policy_threshold_changes_total", **labels),
        "changes_up": metric_sum(samples, "beem_policy_threshold_changes_total", direction="up", **labels),
        "changes_down": metric_sum(samples, "beem_policy_threshold_changes_total", direction="down", **labels),
        "rows": metric_sum(samples, "beem_exit_layer_count", **labels),
        "early_rows": metric_sum(samples, "beem_exit_layer_bucket", le=f"{float(num_layers - 1)}", **labels),
        "shadow_rows_left": metric_sum(samples, "beem_shadow_rows_total", model=name),
        "shadow_rows_shed": metric_sum(samples, "beem_shadow_rows_total", model=name, outcome="shed"),
        "comparisons": metric_sum(samples, "beem_shadow_samples_total", **labels),
        "disagreements": metric_sum(samples, "beem_shadow_samples_total", result="disagree", **labels),
        "window_comparisons": window.get("comparisons", 0),
        "window_agreement": window.get("agreement"),
    }


def settled_state(url: str, name: str, policy: str, num_layers: int, fraction: float) -> dict[str, Any]:
    """The state once the shadow rows of the requests sent so far have left: no shadow row left for SETTLE_QUIET_S.
    (Not "one per early-exited row": a request answered just after a threshold change was served at the old one,
    and is neither counted nor shadowed.)"""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    state = read_state(url, name, policy, num_layers)
    quiet_since = time.monotonic()
    while fraction > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        latest = read_state(url, name, policy, num_layers)
        if latest["shadow_rows_left"] != state["shadow_rows_left"]:
            quiet_since = time.monotonic()
        state = latest
        if time.monotonic() - quiet_since >= SETTLE_QUIET_S:
            break
    return state


async def send_batch(url: str, texts: Sequence[str]) -> list[Answer]:
    async with ConnectionPool(url) as pool:
        t0 = time.perf_counter()
        return [await send(pool, text, t0, 30.0) for text in texts]


def run_phases(
    server: ServerProcess, phases: list[tuple[str, list[str]]], name: str, policy: str, num_layers: int, batch: int
) -> list[dict[str, Any]]:
    series: list[dict[str, Any]] = []
    sent = 0
    before = settled_state(server.url, name, policy, num_layers, 1.0)
    for phase, texts in phases:
        for start in range(0, len(texts), batch):
            answers = asyncio.run(send_batch(server.url, texts[start : start + batch]))
            sent += len(answers)
            state = settled_state(server.url, name, policy, num_layers, 1.0)
            rows = state["rows"] - before["rows"]
            disagreements = state["disagreements"] - before["disagreements"]
            ok = [a for a in answers if a.status == 200]
            series.append({
                "phase": phase,
                "requests_sent": sent,
                "errors": len(answers) - len(ok),
                "statuses": dict(Counter(str(a.status) for a in answers)),
                "error_details": sorted({a.detail or "" for a in answers if a.status != 200})[:3],
                "agreement_window": state["agreement"],
                "window_comparisons": state["window_comparisons"],
                "batch_agreement": 1.0 - disagreements / rows if rows else None,
                "batch_early_share": (state["early_rows"] - before["early_rows"]) / rows if rows else None,
                "batch_comparisons": state["comparisons"] - before["comparisons"],
                "batch_shadow_shed": state["shadow_rows_shed"] - before["shadow_rows_shed"],
                "mean_exit_layer": sum(a.exit_layer or 0 for a in ok) / len(ok) if ok else None,
                "threshold": state["threshold"],
                "threshold_changes": state["threshold_changes"],
                "changes_up": state["changes_up"],
                "changes_down": state["changes_down"],
                "target": state["target"],
            })  # fmt: skip
            before = state
    return series


def recovery(series: list[dict[str, Any]], target: float, min_comparisons: int) -> dict[str, Any]:
    """After the drift starts: did the windowed estimate fall below the target, and when was it back? And when did
    the controller first act (the gauge is read after it acts: it may act before a reading shows the fall), and
    what was the exact agreement of the drifted batches after that?"""
    drift = [p for p in series if p["phase"] == "drifted"]
    if not drift:
        return {"dropped": False}
    first = series.index(drift[0])
    start = series[first - 1]["requests_sent"] if first else 0  # requests sent before the drift began
    changes_before = series[first - 1]["threshold_changes"] if first else 0
    acted = next((p for p in drift if p["threshold_changes"] > changes_before), None)
    after = (
        [p["batch_agreement"] for p in drift[drift.index(acted) + 1 :] if p["batch_agreement"] is not None]
        if acted
        else []
    )
    control = {"first_change_after_drifted_requests": None if acted is None else acted["requests_sent"] - start,
               "agreement_after_first_change": sum(after) / len(after) if after else None}  # fmt: skip
    dropped_at = next((p for p in drift if p["agreement_window"] is not None and p["agreement_window"] < target), None)
    if dropped_at is None:
        return {"dropped": False, "drift_started_after_requests": start, **control}
    later = drift[drift.index(dropped_at) + 1 :]
    back = next((p for p in later if p["agreement_window"] is not None and p["agreement_window"] >= target
                 and p["window_comparisons"] >= min_comparisons), None)  # fmt: skip
    return {
        **control,
        "dropped": True,
        "drift_started_after_requests": start,
        "dropped_below_target_at_requests": dropped_at["requests_sent"],
        "recovered": back is not None,
        "recovered_at_requests": None if back is None else back["requests_sent"],
        "requests_from_drift_start_to_recovery": None if back is None else back["requests_sent"] - start,
        "threshold_at_recovery": None if back is None else back["threshold"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    bundle_dir = resolve_bundle_dir(Path(args.bundle))
    manifest = read_manifest(bundle_dir)
    name, policy = manifest.name, manifest.default_policy
    texts = test_texts()
    transform = drift_transform(args.drift, args.words, args.seed, texts)
    in_distribution = [texts[i % len(texts)] for i in range(args.in_distribution)]
    drifted_indices = range(args.in_distribution, args.in_distribution + args.drifted)
    drifted = [transform(i, texts[i % len(texts)]) for i in drifted_indices]
    base = [sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle_dir), "--poll-interval-s", "0",
            "--shadow-fraction", "1.0", "--max-queue-wait-ms", str(args.max_queue_wait_ms)]  # fmt: skip
    if args.target is not None:
        base += ["--alpha-control-target", str(args.target)]
    env = {"BEEM_ALPHA_CONTROL_MIN_COMPARISONS": str(args.min_comparisons)}
    if args.shadow_window is not None:
        env["BEEM_SHADOW_WINDOW"] = str(args.shadow_window)
    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the child servers inherit them
    try:
        with ServerProcess([*base, "--alpha-control", name]) as server:
            controlled = run_phases(
                server, [("in-distribution", in_distribution), ("drifted", drifted)], name, policy,
                manifest.num_layers, args.batch,
            )  # fmt: skip
        with ServerProcess(base) as server:
            uncontrolled = run_phases(server, [("drifted", drifted)], name, policy, manifest.num_layers, args.batch)
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    target = args.target if args.target is not None else controlled[0]["target"]

    def phase_mean(series: list[dict[str, Any]], phase: str, key: str) -> float | None:
        values = [p[key] for p in series if p["phase"] == phase and p[key] is not None]
        return sum(values) / len(values) if values else None

    last = controlled[-1]
    return {
        "headline": {
            "target": target,
            "calibrated_threshold": controlled[0]["threshold"] if controlled else None,
            "final_threshold": last["threshold"],
            "threshold_changes": last["threshold_changes"],
            "changes_up": last["changes_up"],
            "changes_down": last["changes_down"],
            "controlled": recovery(controlled, target, args.min_comparisons),
            "uncontrolled": recovery(uncontrolled, target, args.min_comparisons),
            "mean_batch_agreement": {
                "controlled_in_distribution": phase_mean(controlled, "in-distribution", "batch_agreement"),
                "controlled_drifted": phase_mean(controlled, "drifted", "batch_agreement"),
                "uncontrolled_drifted": phase_mean(uncontrolled, "drifted", "batch_agreement"),
            },
            "mean_exit_layer": {
                "controlled_in_distribution": phase_mean(controlled, "in-distribution", "mean_exit_layer"),
                "controlled_drifted": phase_mean(controlled, "drifted", "mean_exit_layer"),
                "uncontrolled_drifted": phase_mean(uncontrolled, "drifted", "mean_exit_layer"),
            },
            "final_window_agreement": {
                "controlled": last["agreement_window"],
                "uncontrolled": uncontrolled[-1]["agreement_window"],
            },
            "errors": sum(p["errors"] for p in (*controlled, *uncontrolled)),
            "statuses": dict(sum((Counter(p["statuses"]) for p in (*controlled, *uncontrolled)), Counter())),
        },
        "controlled": controlled,
        "uncontrolled": uncontrolled,
        "drift_examples": [
            {"original": texts[i % len(texts)], "drifted": transform(i, texts[i % len(texts)])}
            for i in list(drifted_indices)[:3]
        ],
        "setup": {
            "bundle": manifest.model_id,
            "policy": policy,
            "num_layers": manifest.num_layers,
            "drift": args.drift,
            "words": args.words if args.drift != "shuffle" else None,
            "seed": args.seed,
            "in_distribution_requests": args.in_distribution,
            "drifted_requests": args.drifted,
            "batch": args.batch,
            "min_comparisons": args.min_comparisons,
            "shadow_window": args.shadow_window,
            "target_override": args.target,
            "server": f"beem serve --shadow-fraction 1.0 --max-queue-wait-ms {args.max_queue_wait_ms:g} "
            f"[--alpha-control {name}], BEEM_ALPHA_CONTROL_MIN_COMPARISONS={args.min_comparisons}"
            + ("" if args.shadow_window is None else f", BEEM_SHADOW_WINDOW={args.shadow_window}")
            + "; requests one at a time",
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, no GPU",
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "quick": args.quick,
        },
    }


def markdown(results: dict[str, Any]) -> str:
    setup, headline = results["setup"], results["headline"]
    drift = setup["drift"] + (f" ({setup['words']} words)" if setup["words"] else "") + f", seed {setup['seed']}"

    def table(series: list[dict[str, Any]]) -> list[str]:
        rows = [
            "| requests sent | phase | agreement (window) | window comparisons | batch agreement | batch early share "
            "| mean exit layer | alpha | changes (up/down) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for p in series:
            rows.append(
                f"| {p['requests_sent']} | {p['phase']} | {number(p['agreement_window'], 4)} | "
                f"{p['window_comparisons']} | {number(p['batch_agreement'], 4)} | {number(p['batch_early_share'], 3)} "
                f"| {number(p['mean_exit_layer'], 2)} | {number(p['threshold'], 4)} | "
                f"{p['changes_up']:.0f}/{p['changes_down']:.0f} |"
            )
        return rows

    def recovered(r: dict[str, Any]) -> str:
        if r.get("first_change_after_drifted_requests") is not None:
            return (
                f"alpha first changed after {r['first_change_after_drifted_requests']} drifted requests; exact "
                f"agreement of the drifted batches after that: {number(r['agreement_after_first_change'], 4)}"
            )
        if not r.get("dropped"):
            return "the windowed agreement never fell below the target after the drift started"
        if not r["recovered"]:
            return (f"fell below the target at {r['dropped_below_target_at_requests']} requests and did not "
                    "recover within the run")  # fmt: skip
        return (f"fell below the target at {r['dropped_below_target_at_requests']} requests, back at or above it "
                f"at {r['recovered_at_requests']} ({r['requests_from_drift_start_to_recovery']} requests after the "
                f"drift began; alpha {r['threshold_at_recovery']:.4f})")  # fmt: skip

    means, exits = headline["mean_batch_agreement"], headline["mean_exit_layer"]
    examples = "; ".join(f'"{e["original"][:60]}" -> "{e["drifted"][:60]}"' for e in results["drift_examples"][:2])
    lines = [
        f"# Online alpha control under drift ({'QUICK smoke run, not a measurement' if setup['quick'] else 'CPU'})",
        "",
        f"Bundle {setup['bundle']} (policy {setup['policy']}), {setup['machine']}, {setup['date']}. {setup['server']}."
        f" Phase 1: {setup['in_distribution_requests']} test-split texts; phase 2: {setup['drifted_requests']} "
        f"test-split texts drifted by {drift} (e.g. {examples}). Batches of {setup['batch']}.",
        "",
        f"Agreement target {headline['target']:.4f} ({'override' if setup['target_override'] else 'calibrated'}). "
        f"Alpha {number(headline['calibrated_threshold'], 4)} -> {number(headline['final_threshold'], 4)} in "
        f"{headline['threshold_changes']:.0f} changes ({headline['changes_up']:.0f} up, "
        f"{headline['changes_down']:.0f} down).",
        "",
        f"- With control: {recovered(headline['controlled'])}.",
        f"- Without control: {recovered(headline['uncontrolled'])}.",
        f"- Mean batch agreement (exact, every early row shadowed): in-distribution "
        f"{number(means['controlled_in_distribution'], 4)}, drifted with control "
        f"{number(means['controlled_drifted'], 4)}, drifted without {number(means['uncontrolled_drifted'], 4)}; "
        f"mean exit layer "
        f"{number(exits['controlled_in_distribution'], 2)} / {number(exits['controlled_drifted'], 2)} / "
        f"{number(exits['uncontrolled_drifted'], 2)}. Errors: {headline['errors']} (statuses {headline['statuses']}).",
        "",
        "## With control",
        "",
        *table(results["controlled"]),
        "",
        "## Without control (phase 2 only, fresh server)",
        "",
        *table(results["uncontrolled"]),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--in-distribution", type=int, default=600, help="phase 1 requests")
    arguments.add_argument("--drifted", type=int, default=1200, help="phase 2 requests")
    arguments.add_argument("--batch", type=int, default=50, help="requests between two readings of /metrics")
    arguments.add_argument("--drift", choices=DRIFTS, default="interleave")
    arguments.add_argument("--words", type=int, default=5, help="first-words drifts: words kept")
    arguments.add_argument("--seed", type=int, default=0)
    arguments.add_argument("--min-comparisons", type=int, default=30, help="BEEM_ALPHA_CONTROL_MIN_COMPARISONS")
    arguments.add_argument("--max-queue-wait-ms", type=float, default=500.0, help="the servers' admission limit")
    arguments.add_argument(
        "--shadow-window", type=int, help="BEEM_SHADOW_WINDOW: comparisons in the agreement window (server: 400)"
    )
    arguments.add_argument("--target", type=float, help="agreement target (default: the calibrated level)")
    arguments.add_argument("--out", default=str(RESULTS_DIR))
    arguments.add_argument("--quick", action="store_true", help="a smoke run: 60 + 150 requests in batches of 30")
    args = arguments.parse_args()
    if args.quick:
        args.in_distribution, args.drifted, args.batch = 60, 150, 30
    results = run(args)
    write_results(Path(args.out), "drift_control_cpu", results, markdown(results))
    h = results["headline"]
    print(
        f"target {h['target']:.4f}; alpha {number(h['calibrated_threshold'], 4)} -> {number(h['final_threshold'], 4)}"
        f" ({h['threshold_changes']:.0f} changes); drifted agreement with / without control: "
        f"{number(h['mean_batch_agreement']['controlled_drifted'], 4)} / "
        f"{number(h['mean_batch_agreement']['uncontrolled_drifted'], 4)}"
    )


if __name__ == "__main__":
    main()
