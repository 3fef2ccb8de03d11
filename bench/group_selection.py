"""Which group the engine advances next, measured: one server per rule, side by side in alternating rounds (the
others stopped meanwhile), BEEM-A and full depth at 16 closed-loop clients and in an open loop.

    python -m bench.group_selection [--bundle DIR] [--seconds 24] [--rate 80]

Prints one JSON object: per rule and policy, throughput, p50/p95 latency and shed load, and BEEM-A's throughput
and p95 against full depth's on the same server.
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
from bench.server_process import ServerProcess
from loadtest.load_report import summarize
from loadtest.load_runner import LoadPlan, PhaseResult, run_plan
from loadtest.workload import text_workload
from service.engine.classify.group_selection import GROUP_SELECTION_RULES
from service.settings import DEFAULT_BUNDLE

POLICIES = ("beem-a", "full")


def compare(bundle_dir: Path, seconds: float, rate: float, rounds: int = 3) -> dict[str, Any]:
    serve = [sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle_dir)]
    servers = {rule: ServerProcess([*serve, "--group-selection", rule]) for rule in GROUP_SELECTION_RULES}
    workload = text_workload()
    modes = {
        "closed_c16": lambda: LoadPlan(POLICIES, "closed", concurrency=16, duration_s=seconds / rounds, rounds=1),
        f"open_{rate:g}_per_s": lambda: LoadPlan(POLICIES, "open", rate=rate, duration_s=seconds / rounds, rounds=1),
    }
    records: dict[tuple[str, str, str], PhaseResult] = {}
    try:
        for mode, make_plan in modes.items():
            for round_number in range(rounds):  # the rules take turns, in alternating order
                order = list(servers) if round_number % 2 == 0 else list(servers)[::-1]
                for rule in order:
                    for other, server in servers.items():
                        (server.resume if other == rule else server.pause)()
                    time.sleep(0.05)
                    phase = asyncio.run(run_plan(servers[rule].url, workload, make_plan(), sys.stderr.isatty()))
                    for policy, result in phase.items():
                        into = records.setdefault((mode, rule, policy), PhaseResult())
                        into.records.extend(result.records)
                        into.elapsed_s += result.elapsed_s
    finally:
        for server in servers.values():
            server.stop()
    results: dict[str, Any] = {}
    for mode in modes:
        for rule in servers:
            summary: dict[str, Any] = {policy: summarize(records[(mode, rule, policy)]) for policy in POLICIES}
            beem, full = summary["beem-a"], summary["full"]
            summary["beem_a_vs_full"] = {"throughput": beem["throughput_rps"] / full["throughput_rps"],
                                         "p95": beem["p95_ms"] / full["p95_ms"]}  # fmt: skip
            results.setdefault(mode, {})[rule] = summary
    return results


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--seconds", type=float, default=24.0, help="per rule, policy and mode, over all rounds")
    arguments.add_argument("--rate", type=float, default=80.0, help="open loop: arrivals per second")
    args = arguments.parse_args()
    print(json.dumps(compare(resolve_bundle_dir(Path(args.bundle)), args.seconds, args.rate), indent=1))


if __name__ == "__main__":
    main()
