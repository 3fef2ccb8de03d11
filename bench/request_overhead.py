"""The fixed cost per request, this tree's server against another tree's, side by side in one run (issue 13).

    git worktree add /tmp/before <commit>   # the tree to compare with (its own .venv not needed)
    python -m bench.request_overhead --baseline-tree /tmp/before [--requests 300]

Two real servers (one per tree, both run by this interpreter, each with the committed default bundle on one
torch thread) take sequential requests in alternating rounds, each paused while the other is measured. Every
request is one short text at the cheapest depth (`static` policy, layer 1), so the time is what every request pays
whatever its depth: HTTP, validation, routing, tokenization, queueing and one layer. Prints the median and p90
per route and tree, and the ratio this tree / baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

from bench.server_process import ServerProcess
from service.settings import DEFAULT_BUNDLE

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXT = "a gorgeous, moving film"
BODIES = {
    "/v1/classify": {"inputs": TEXT, "policy": {"name": "static", "layer": 1}},
    "/predict": {"inputs": TEXT},  # the bundle's default policy (TEI has no policy field)
}


def _server(tree: Path) -> ServerProcess:
    # Run in the tree: `python -m` puts the working directory first on sys.path, so the child imports `service`
    # and `beem` from that tree, ahead of this checkout's editable install.
    command = [sys.executable, "-m", "service.cli", "serve", "--bundle", str(DEFAULT_BUNDLE), "--torch-threads", "1"]
    return ServerProcess(command, cwd=tree)


def _timed(client: httpx.Client, route: str) -> float:
    started = time.perf_counter()
    response = client.post(route, json=BODIES[route])
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return elapsed * 1000


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--baseline-tree", required=True, help="a checkout of the commit to compare with")
    arguments.add_argument("--requests", type=int, default=300, help="per route and tree")
    arguments.add_argument("--rounds", type=int, default=10)
    arguments.add_argument("--out", help="write the result as JSON here")
    args = arguments.parse_args()
    trees = {"baseline": Path(args.baseline_tree).resolve(), "this": REPO_ROOT}
    times: dict[str, dict[str, list[float]]] = {name: {route: [] for route in BODIES} for name in trees}
    servers: dict[str, ServerProcess] = {}
    try:
        for name, tree in trees.items():
            servers[name] = _server(tree)
        for server in servers.values():
            server.pause()
        for _ in range(args.rounds):
            for name, server in servers.items():
                server.resume()
                with httpx.Client(base_url=server.url, timeout=30) as client:
                    for route in BODIES:
                        _timed(client, route)  # warm this connection and route
                        times[name][route] += [_timed(client, route) for _ in range(args.requests // args.rounds)]
                server.pause()
    finally:
        for server in servers.values():
            server.stop()
    result: dict[str, object] = {}
    for route in BODIES:
        row = {name: {"median_ms": statistics.median(times[name][route]),
                      "p90_ms": statistics.quantiles(times[name][route], n=10)[-1]} for name in trees}  # fmt: skip
        row["ratio_this_over_baseline"] = row["this"]["median_ms"] / row["baseline"]["median_ms"]
        result[route] = row
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"baseline_tree": str(trees["baseline"]), **result}, indent=1))


if __name__ == "__main__":
    main()
