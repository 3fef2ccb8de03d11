"""Which group the engine advances next, measured: one server per rule, side by side in alternating rounds (the
others stopped meanwhile), BEEM-A and full depth at 16 closed-loop clients and in an open loop.

    python -m bench.group_selection [--bundle DIR] [--seconds 24] [--rate 80]

Prints one JSON object: per rule and policy, throughput, p50/p95 latency and shed load, and BEEM-A's throughput
and p95 against full depth's on the same server.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from beem.bundle.manifest import resolve_bundle_dir
from bench.server_process import ServerProcess
from bench.standard_comparison import measure
from loadtest.load_report import summarize
from loadtest.load_runner import LoadPlan
from service.engine.group_selection import GROUP_SELECTION_RULES
from service.settings import DEFAULT_BUNDLE

POLICIES = ("beem-a", "full")


def compare(bundle_dir: Path, seconds: float, rate: float, rounds: int = 3) -> dict[str, Any]:
    serve = [sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle_dir)]
    servers = {rule: ServerProcess([*serve, "--group-selection", rule]) for rule in GROUP_SELECTION_RULES}
    results: dict[str, Any] = {}
    try:
        for mode, make_plan in (
            ("closed_c16", lambda p: LoadPlan(p, "closed", concurrency=16, duration_s=seconds / rounds, rounds=1)),
            (f"open_{rate:g}_per_s", lambda p: LoadPlan(p, "open", rate=rate, duration_s=seconds / rounds, rounds=1)),
        ):
            for rule, server in servers.items():
                others = [(s, ()) for r, s in servers.items() if r != rule]
                for other, _ in others:
                    other.pause()
                merged = measure([(server, POLICIES)], make_plan, rounds)
                for other, _ in others:
                    other.resume()
                summary = {policy: summarize(merged[policy]) for policy in POLICIES}
                beem, full = summary["beem-a"], summary["full"]
                summary["beem_a_vs_full"] = {
                    "throughput": beem["throughput_rps"] / full["throughput_rps"],
                    "p95": beem["p95_ms"] / full["p95_ms"],
                }
                results.setdefault(mode, {})[rule] = summary
    finally:
        for server in servers.values():
            server.stop()
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
