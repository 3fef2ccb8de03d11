"""`beem loadtest` on this tree's server and another tree's, alternating in one run: the load-side regression guard
for a change to the engine (issue 22 asks for 16 clients within noise of the tree before).

    git worktree add /tmp/before <commit>   # the tree to compare with (its own .venv not needed)
    python -m bench.loadtest_baseline --baseline-tree /tmp/before [--bundle DIR --concurrency 16 --rounds 4]

Both servers serve the default bundle (or `--bundle`) with their default settings, started by this interpreter,
each in its own tree (`python -m` puts the tree first on sys.path); the one not measured is stopped (SIGSTOP). Each
round runs `beem loadtest` (this tree's load generator for both, closed loop, its policies interleaved) against one
tree, then the other, the order swapped every round. Prints throughput and p50 / p95 per tree and policy (medians over
rounds) and the ratios this tree / baseline (throughput: above 1 is faster; latency: below 1 is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench.result_files import write_results
from bench.server_process import ServerProcess
from service.settings import DEFAULT_BUNDLE

REPO_ROOT = Path(__file__).resolve().parents[1]


def _server(tree: Path, bundle: Path) -> ServerProcess:
    command = [sys.executable, "-m", "service.cli", "serve", "--bundle", str(REPO_ROOT / bundle)]
    return ServerProcess(command, cwd=tree)


def _loadtest(url: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    command = [sys.executable, "-m", "service.cli", "loadtest", "--url", url, "--policies", args.policies,
               "--concurrency", str(args.concurrency), "--duration", str(args.duration), "--rounds", "1",
               "--json"]  # fmt: skip
    output = json.loads(subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO_ROOT).stdout)
    return {name: {key: float(policy[key] or 0.0) for key in ("throughput_rps", "p50_ms", "p95_ms")}
            for name, policy in output["policies"].items()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-tree", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="what both trees serve (a version the "
                        "baseline can read: a newer tree's may name policies it lacks)")  # fmt: skip
    parser.add_argument("--policies", default="beem-a,full")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per policy per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, help="write <stem>.json and <stem>.md here (e.g. bench/results)")
    parser.add_argument("--stem", default="loadtest_baseline")
    args = parser.parse_args()
    trees = {"this": REPO_ROOT, "baseline": args.baseline_tree.resolve()}
    runs: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in trees}
    servers = {name: _server(tree, args.bundle) for name, tree in trees.items()}
    try:
        for server in servers.values():
            server.pause()
        for round_index in range(args.rounds):
            order = list(trees) if round_index % 2 == 0 else list(reversed(trees))
            for name in order:
                servers[name].resume()
                runs[name].append(_loadtest(servers[name].url, args))
                servers[name].pause()
                print(f"round {round_index + 1} {name}: {runs[name][-1]}", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name, rounds in runs.items():
        summary[name] = {policy: {key: statistics.median(r[policy][key] for r in rounds) for key in rounds[0][policy]}
                         for policy in rounds[0]}  # fmt: skip
    ratios = {policy: {key: summary["this"][policy][key] / summary["baseline"][policy][key]
                       for key in summary["this"][policy] if summary["baseline"][policy][key]}
              for policy in summary["this"]}  # fmt: skip
    result = {"baseline_tree": str(trees["baseline"]), "concurrency": args.concurrency, "duration_s": args.duration,
              "rounds": args.rounds, "median": summary, "this_over_baseline": ratios, "runs": runs}  # fmt: skip
    lines = [f"`beem loadtest`, {args.concurrency} clients, {args.rounds} rounds of {args.duration:g} s per policy, "
             f"medians; this tree / {trees['baseline']}", "",
             "| policy | throughput rps (ratio) | p50 ms (ratio) | p95 ms (ratio) |", "|---|---|---|---|"]  # fmt: skip
    for policy, ratio in ratios.items():
        this, base = summary["this"][policy], summary["baseline"][policy]
        keys = ("throughput_rps", "p50_ms", "p95_ms")
        cells = [f"{this[key]:.1f} vs {base[key]:.1f} ({ratio[key]:.3f}x)" for key in keys]
        lines.append(f"| {policy} | {' | '.join(cells)} |")
    table = "\n".join(lines) + "\n"
    if args.out:
        write_results(args.out, args.stem, result, table)
    else:
        print(table)


if __name__ == "__main__":
    main()
