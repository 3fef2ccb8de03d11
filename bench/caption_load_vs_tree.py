"""Captions under load, this tree's server against another tree's, side by side in one run: what
`bench.request_overhead` (sequential requests) cannot show for a change that pays under load, such as the image
encoder's cost (most of a caption's engine time at 16 clients, docs/benchmarks.md).

    git worktree add /tmp/before <commit>
    python -m bench.caption_load_vs_tree --baseline-tree /tmp/before [--concurrency 16] [--requests 96] [--rounds 3]

One caption server per tree on the caption bundle (CPU, the server's defaults), both run by this interpreter; in
each round each tree in turn, the other paused (SIGSTOP), takes `--requests` closed-loop requests per policy (full
depth and BEEM-A interleaved, `beem loadtest`'s runner) on the bundle's test-split images. Prints and writes
throughput, p50, p95 and refusals per tree and policy, this / baseline per policy, and BEEM-A / full per tree.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from beem.bundle.manifest import resolve_bundle_dir
from bench.caption_serving import DEFAULT_CAPTION_BUNDLE, REPO_ROOT, copy_test_split_images
from bench.server_process import ServerProcess
from loadtest.load_report import summarize
from loadtest.load_runner import LoadPlan, PhaseResult, run_plan
from loadtest.workload import image_workload

POLICIES = ("full", "beem-a")
KEPT = ("requests", "throughput_rps", "p50_ms", "p95_ms", "shed", "errors", "mean_exit_layer")


def run(baseline_tree: Path, bundle_dir: Path, work_dir: Path, concurrency: int, requests: int,
        rounds: int) -> dict[str, Any]:  # fmt: skip
    workload = image_workload(copy_test_split_images(bundle_dir, work_dir, 300))
    command = [sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle_dir), "--device", "cpu"]
    servers = {"this": ServerProcess(command), "baseline": ServerProcess(command, cwd=baseline_tree)}
    merged: dict[tuple[str, str], PhaseResult] = {}
    try:
        for round_index in range(rounds):
            order = list(servers.items()) if round_index % 2 == 0 else list(servers.items())[::-1]
            for tree, server in order:
                for other in servers.values():
                    if other is not server:
                        other.pause()
                server.resume()
                time.sleep(0.05)
                plan = LoadPlan(POLICIES, "closed", concurrency=concurrency, requests=requests, rounds=1)
                for policy, result in asyncio.run(run_plan(server.url, workload, plan, False)).items():
                    into = merged.setdefault((tree, policy), PhaseResult())
                    into.records.extend(result.records)
                    into.elapsed_s += result.elapsed_s
                print(f"round {round_index + 1}/{rounds}: {tree} measured", file=sys.stderr)
    finally:
        for server in servers.values():
            server.resume()
            server.stop()
    summaries = {f"{tree} {policy}": summarize(result) for (tree, policy), result in merged.items()}
    return {
        "setup": {
            "baseline_tree": str(baseline_tree),
            "bundle": str(bundle_dir),
            "concurrency": concurrency,
            "requests_per_policy_and_round": requests,
            "rounds": rounds,
            "date": time.strftime("%Y-%m-%d"),
        },
        "by_tree_and_policy": {name: {key: summary.get(key) for key in KEPT} for name, summary in summaries.items()},
        "throughput_this_over_baseline": {
            policy: summaries[f"this {policy}"]["throughput_rps"] / summaries[f"baseline {policy}"]["throughput_rps"]
            for policy in POLICIES
        },
        "throughput_beem_a_over_full": {
            tree: summaries[f"{tree} beem-a"]["throughput_rps"] / summaries[f"{tree} full"]["throughput_rps"]
            for tree in servers
        },
    }


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--baseline-tree", required=True, help="a checkout of the commit to compare with")
    arguments.add_argument("--bundle", default=str(DEFAULT_CAPTION_BUNDLE))
    arguments.add_argument("--work-dir", default=str(REPO_ROOT / "runs" / "caption-evaluation"))
    arguments.add_argument("--concurrency", type=int, default=16)
    arguments.add_argument("--requests", type=int, default=96, help="per policy, tree and round")
    arguments.add_argument("--rounds", type=int, default=3)
    arguments.add_argument("--out", help="write the result as JSON here")
    args = arguments.parse_args()
    results = run(Path(args.baseline_tree), resolve_bundle_dir(Path(args.bundle)), Path(args.work_dir),
                  args.concurrency, args.requests, args.rounds)  # fmt: skip
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
