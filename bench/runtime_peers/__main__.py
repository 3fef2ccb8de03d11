"""Our server against the fastest full-depth CPU runtimes, side by side in one run (issue 24).

    python -m bench.runtime_peers [--bundle DIR] [--out bench/results] [--rounds 3] [--quick]

On the bundle (the default one unless named), four full-depth peers (`peer_models.PEERS`: plain transformers,
ONNX Runtime fp32 and int8 with fusions, torch.compile) and this server at full depth and at the bundle's default
policy:
1. accuracy on the test split, each system on every text;
2. in process: batch-1 latency and batch-16 throughput, in alternating rounds (`in_process.py`);
3. over HTTP: each peer behind its own minimal endpoint (`peer_server.py`, one request at a time) and `beem serve`,
   driven by `beem loadtest`'s load runner with 1 client (p50) and 16 clients (throughput), in alternating rounds,
   the servers not measured stopped (SIGSTOP).
Writes `<out>/runtime_peers_<cpu>.json` (its `summary`: `default_vs_fastest_peer` {batch1_p50, c16_throughput},
above 1 when ours is faster; `full_vs_plain_batch1_p50`, our full depth's p50 over the plain endpoint's) and `.md`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from beem.bundle.bundle_reader import load_bundle
from beem.bundle.manifest import resolve_bundle_dir
from beem.policies.exit_policies import FullDepthPolicy
from bench.engine_in_thread import engine_in_thread
from bench.runtime_peers.in_process import accuracy, engine_system, peer_system, time_in_process
from bench.runtime_peers.peer_models import PEERS, build_peer
from bench.runtime_peers.peer_server import DEFAULT_WORK_DIR
from bench.runtime_peers.report import cpu_description, markdown, summary
from bench.server_process import ServerProcess
from bench.standard_comparison import measure
from loadtest.load_report import summarize
from loadtest.load_runner import LoadPlan
from loadtest.workload import text_workload
from service.settings import DEFAULT_BUNDLE

FULL = "full"


def run(bundle_dir: Path, work_dir: Path, rounds: int, quick: bool) -> dict[str, Any]:
    bundle = load_bundle(bundle_dir)
    default = bundle.manifest.default_policy
    threads = torch.get_num_threads()
    workload = text_workload()
    texts = list(workload.texts[:200] if quick else workload.texts)
    assert workload.labels is not None
    labels = [bundle.labels.index(name) for name in workload.labels[: len(texts)]]

    peers = {}
    for name in PEERS:
        print(f"building {name}", file=sys.stderr)
        peers[name] = build_peer(name, bundle, work_dir, threads)
    engine = engine_in_thread(bundle_dir)
    systems = [peer_system(peer) for peer in peers.values()]
    systems += [engine_system(FULL, engine, bundle, FullDepthPolicy()),
                engine_system(default, engine, bundle, bundle.policies[default])]  # fmt: skip
    print("accuracy on the test split", file=sys.stderr)
    accuracies = {system.name: accuracy(system, texts, labels) for system in systems}
    print("in process", file=sys.stderr)
    in_process = time_in_process(systems, texts, rounds, *((20, 3) if quick else (100, 10)))
    preparation = {name: peer.preparation_s for name, peer in peers.items()}
    del peers, systems, engine  # the servers below get the cores and the memory

    print("over HTTP", file=sys.stderr)
    batch1_requests, c16_seconds = (20, 3.0) if quick else (150, 10.0)
    serve = [sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle_dir)]
    servers = {name: ServerProcess([sys.executable, "-m", "bench.runtime_peers.peer_server", "--peer", name,
                                    "--bundle", str(bundle_dir), "--work-dir", str(work_dir)], ready_timeout_s=300)
               for name in PEERS}  # fmt: skip
    try:
        ours = ServerProcess(serve)
        servers["ours"] = ours
        targets = [(servers[name], (name,)) for name in PEERS] + [(ours, (FULL, default))]
        batch1 = measure(targets, lambda p: LoadPlan(p, "closed", concurrency=1, requests=batch1_requests,
                                                     rounds=1), rounds)  # fmt: skip
        loaded = measure(targets, lambda p: LoadPlan(p, "closed", concurrency=16, duration_s=c16_seconds,
                                                     rounds=1), rounds)  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
    http = {name: {"batch1": summarize(batch1[name]), "c16": summarize(loaded[name])} for name in batch1}

    results: dict[str, Any] = {
        "setup": {
            "bundle": bundle.manifest.model_id,
            "default_policy": default,
            "cpu": cpu_description(),
            "machine": f"{platform.machine()}, {threads} torch threads, ONNX Runtime {threads} intra-op threads",
            "versions": _versions(),
            "date": time.strftime("%Y-%m-%d"),
            "rounds": rounds,
            "quick": quick,
            "test_texts": len(texts),
            "preparation_s": preparation,  # ONNX export, fusion and quantization are under onnx-fp32
        },
        "accuracy": accuracies,
        "in_process": in_process,
        "http": http,
    }
    results["summary"] = summary(results, list(PEERS), FULL, default)
    return results


def _versions() -> dict[str, str]:
    import onnxruntime
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__}  # fmt: skip


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results"))
    arguments.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR), help="the ONNX files (made once)")
    arguments.add_argument("--rounds", type=int, default=3)
    arguments.add_argument("--quick", action="store_true", help="short phases: a smoke run, not numbers to quote")
    args = arguments.parse_args()
    results = run(resolve_bundle_dir(Path(args.bundle)), Path(args.work_dir), args.rounds, args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "runtime_peers_cpu" + ("_quick" if args.quick else "")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
