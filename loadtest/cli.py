"""`beem loadtest`: the command line of the load generator."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from beem.data.rotten_tomatoes import REPO_DATA_FILE
from beem.data.splits import DEFAULT_FRACTIONS, DEFAULT_SPLIT_SEED, SPLIT_NAMES
from loadtest.load_report import format_table, plot_latency_cdf, plot_rate_sweep, summarize
from loadtest.load_runner import LoadPlan, run_plan
from loadtest.workload import image_workload, text_workload

SUSTAINED_P95_MS = 100.0


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("loadtest", help="load-test a running server, comparing exit policies")
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--policies", default="beem-a,full", help="comma-separated policy names")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, help="closed loop with this many clients (default 16)")
    load.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    load.add_argument("--rates", help="open loop sweep: comma-separated rates, e.g. 20,40,80")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--duration", type=float, help="seconds per policy (default 15)")
    amount.add_argument("--requests", type=int, help="requests per policy")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--split", default="test", choices=[*SPLIT_NAMES, "all"], help="inputs from this split")
    parser.add_argument("--data", default=str(REPO_DATA_FILE), help="labelled .jsonl / GLUE .tsv file")
    parser.add_argument("--images", help="a folder of PNG / JPEG images: load-test /v1/caption instead")
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, seconds")
    parser.add_argument("--api-key", help="sent as `Authorization: Bearer <key>` (default: $BEEM_API_KEY)")
    parser.add_argument("--plot-dir", help="write latency_cdf.png (and rate_sweep.png) here")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(handler=run)


def _server_info(url: str, headers: dict[str, str] | None) -> dict[str, Any]:
    """The bundle's depth and data split, when the server says (a plain baseline server may not)."""
    try:
        response = httpx.get(f"{url}/v1/models", timeout=10, headers=headers)
        return dict(response.json()["data"][0]) if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError, KeyError, IndexError):
        return {}


def run(args: argparse.Namespace) -> int:
    policies = tuple(name.strip() for name in args.policies.split(",") if name.strip())
    if not policies:
        raise ValueError("--policies names no policy")
    api_key = args.api_key or os.environ.get("BEEM_API_KEY")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    info = _server_info(args.url, headers)
    provenance = info.get("data") or {}
    workload = image_workload(Path(args.images)) if args.images else text_workload(
        Path(args.data), args.split, int(provenance.get("split_seed", DEFAULT_SPLIT_SEED)),
        tuple(provenance.get("split_fractions", DEFAULT_FRACTIONS)),
    )  # fmt: skip
    amount = {"duration_s": None, "requests": args.requests} if args.requests else {"duration_s": args.duration or 15.0}
    progress = sys.stderr.isatty() or not args.json
    output: dict[str, Any] = {"num_layers": info.get("num_layers")}
    plot_dir = Path(args.plot_dir) if args.plot_dir else None
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)
    if args.rates:
        sweep: dict[str, list[dict[str, Any]]] = {policy: [] for policy in policies}
        for rate in (float(r) for r in args.rates.split(",")):
            plan = LoadPlan(policies, "open", rate=rate, rounds=args.rounds, timeout_s=args.timeout, **amount)
            results = asyncio.run(run_plan(args.url, workload, plan, progress, headers))
            for policy, result in results.items():
                sweep[policy].append({"rate": rate, **summarize(result)})
        output["mode"] = "open-sweep"
        output["sweep"] = sweep
        output["sustained_rate_p95_under_100ms"] = {
            policy: max(
                (p["rate"] for p in points
                 if p["p95_ms"] is not None and p["p95_ms"] < SUSTAINED_P95_MS and p["errors"] == p["shed"] == 0),
                default=None,
            )
            for policy, points in sweep.items()
        }  # fmt: skip
        output["policies"] = {policy: points[-1] for policy, points in sweep.items()}
        if plot_dir is not None:
            plot_rate_sweep(sweep, plot_dir / "rate_sweep.png", "open loop: throughput against p95 latency")
    else:
        mode = "open" if args.rate else "closed"
        plan = LoadPlan(
            policies, mode, concurrency=args.concurrency or 16, rate=args.rate or 50.0, rounds=args.rounds,
            timeout_s=args.timeout, **amount,
        )  # fmt: skip
        results = asyncio.run(run_plan(args.url, workload, plan, progress, headers))
        output["mode"] = mode
        output["policies"] = {policy: summarize(result) for policy, result in results.items()}
        if plot_dir is not None:
            title = f"latency CDF, {mode} loop " + (f"c={plan.concurrency}" if mode == "closed" else f"{plan.rate:g}/s")
            plot_latency_cdf(results, plot_dir / "latency_cdf.png", title)
    if args.json:
        print(json.dumps(output))
    else:
        print(format_table(output["policies"], output["num_layers"]))
        if "sustained_rate_p95_under_100ms" in output:
            print("highest offered rate with p95 < 100 ms and no errors:", output["sustained_rate_p95_under_100ms"])
    return 0
