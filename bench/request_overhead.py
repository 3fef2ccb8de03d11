"""This tree's server against another tree's, for both tasks, side by side in one run: the regression guard for a
change on a request path (issues 13 and 21).

    git worktree add /tmp/before <commit>   # the tree to compare with (its own .venv not needed)
    make caption-data                       # the caption bundle's test-split images come from Fashion-MNIST
    python -m bench.request_overhead --baseline-tree /tmp/before [--tasks classification,caption] [--bundle DIR]

Real servers, one per tree and task, all run by this interpreter on the committed bundles with the server's own
default torch threads (what a deployment serves with; `--torch-threads N` pins them), take sequential requests
(batch 1) in alternating rounds, each stopped (SIGSTOP) while another is measured.
- classification: one short text at the cheapest depth (`static` policy, layer 1), so the time is what every
  request pays whatever its depth (HTTP, validation, routing, tokenization, queueing, one layer); and `/predict`
  (TEI's route, the bundle's default policy).
- caption: the caption bundle's test-split images as base64 JSON, at full depth and under BEEM-A, the same
  images in the same order for both trees; full / BEEM-A says how much of its saving early exit keeps.
Prints the median and p90 per route and tree, and the ratio this tree / baseline.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path

import httpx

from beem.bundle.manifest import resolve_bundle_dir
from bench.caption_serving import DEFAULT_CAPTION_BUNDLE, copy_test_split_images
from bench.server_process import ServerProcess
from service.settings import DEFAULT_BUNDLE

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXT = "a gorgeous, moving film"
CAPTION_IMAGES = 20  # cycled through: enough different scenes that no one caption's length decides the median


@dataclass(frozen=True)
class Probe:
    """One kind of timed request: a route and the bodies it is sent, in turn."""

    name: str  # how the results name it
    route: str
    bodies: list[dict[str, object]]


def classification_probes() -> list[Probe]:
    return [
        Probe("/v1/classify", "/v1/classify", [{"inputs": TEXT, "policy": {"name": "static", "layer": 1}}]),
        Probe("/predict", "/predict", [{"inputs": TEXT}]),  # the bundle's default policy (TEI has no policy field)
    ]


def caption_probes(work_dir: Path) -> list[Probe]:
    folder = copy_test_split_images(resolve_bundle_dir(DEFAULT_CAPTION_BUNDLE), work_dir, CAPTION_IMAGES)
    images = [base64.b64encode(path.read_bytes()).decode() for path in sorted(folder.iterdir())]
    probes = []
    for policy in ("full", "beem-a"):
        bodies: list[dict[str, object]] = [{"image": image, "policy": {"name": policy}} for image in images]
        probes.append(Probe(f"/v1/caption {policy}", "/v1/caption", bodies))
    return probes


def _server(tree: Path, bundle: Path, torch_threads: int | None) -> ServerProcess:
    # Run in the tree: `python -m` puts the working directory first on sys.path, so the child imports `service`
    # and `beem` from that tree, ahead of this checkout's editable install.
    # Sequential requests never queue, but a caption at full depth can be estimated over the default 500 ms wait
    # budget on a slow, shared machine and refused (429): admission is not what this measures.
    command = [sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle), "--max-queue-wait-ms", "60000"]
    if torch_threads is not None:
        command += ["--torch-threads", str(torch_threads)]
    return ServerProcess(command, cwd=tree)


def _timed(client: httpx.Client, route: str, body: dict[str, object]) -> float:
    started = time.perf_counter()
    response = client.post(route, json=body)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return elapsed * 1000


def measure(
    trees: dict[str, Path], bundle: Path, probes: list[Probe], requests: int, rounds: int, torch_threads: int | None
) -> dict[str, dict[str, list[float]]]:
    """Per tree and probe, `requests` latencies (ms), taken in `rounds` alternating rounds."""
    times: dict[str, dict[str, list[float]]] = {tree: {probe.name: [] for probe in probes} for tree in trees}
    servers: dict[str, ServerProcess] = {}
    try:
        for name, tree in trees.items():
            servers[name] = _server(tree, bundle, torch_threads)
            servers[name].pause()
        bodies = {name: {probe.name: cycle(probe.bodies) for probe in probes} for name in trees}
        for _ in range(rounds):
            for name, server in servers.items():
                server.resume()
                with httpx.Client(base_url=server.url, timeout=60) as client:
                    for probe in probes:
                        _timed(client, probe.route, probe.bodies[0])  # warm this connection and route
                        times[name][probe.name] += [_timed(client, probe.route, next(bodies[name][probe.name]))
                                                    for _ in range(requests // rounds)]  # fmt: skip
                server.pause()
    finally:
        for server in servers.values():
            server.stop()
    return times


def summary(times: dict[str, dict[str, list[float]]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for probe in next(iter(times.values())):
        row: dict[str, object] = {tree: {"median_ms": statistics.median(by_probe[probe]),
                                         "p90_ms": statistics.quantiles(by_probe[probe], n=10)[-1]}
                                  for tree, by_probe in times.items()}  # fmt: skip
        row["ratio_this_over_baseline"] = statistics.median(times["this"][probe]) / statistics.median(
            times["baseline"][probe]
        )
        result[probe] = row
    if "/v1/caption full" in result:
        result["caption full / beem-a"] = {
            tree: statistics.median(by_probe["/v1/caption full"]) / statistics.median(by_probe["/v1/caption beem-a"])
            for tree, by_probe in times.items()
        }
    return result


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--baseline-tree", required=True, help="a checkout of the commit to compare with")
    arguments.add_argument("--tasks", default="classification,caption")
    arguments.add_argument("--requests", type=int, default=300, help="per classification route and tree")
    arguments.add_argument("--caption-requests", type=int, default=120, help="per caption policy and tree")
    arguments.add_argument("--rounds", type=int, default=10)
    arguments.add_argument("--torch-threads", type=int, help="pin every server's torch threads (default: theirs)")
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="the classification bundle both trees "
                           "serve (a version the baseline tree can read: one a newer tree wrote may name policies "
                           "it lacks)")  # fmt: skip
    arguments.add_argument("--out", help="write the result as JSON here")
    args = arguments.parse_args()
    trees = {"baseline": Path(args.baseline_tree).resolve(), "this": REPO_ROOT}
    result: dict[str, object] = {"baseline_tree": str(trees["baseline"]), "torch_threads": args.torch_threads}
    tasks = args.tasks.split(",")
    if "classification" in tasks:
        probes = classification_probes()
        times = measure(trees, Path(args.bundle), probes, args.requests, args.rounds, args.torch_threads)
        result.update(summary(times))
    if "caption" in tasks:
        probes = caption_probes(REPO_ROOT / "runs" / "caption-evaluation")  # generated scenes, kept for the next run
        times = measure(trees, DEFAULT_CAPTION_BUNDLE, probes, args.caption_requests, args.rounds, args.torch_threads)
        result.update(summary(times))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
