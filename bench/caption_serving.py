"""Does per-token early exit make served captions faster? Side-by-side latency and throughput over HTTP.

    python -m bench.caption_serving [--bundle DIR] [--images DIR] [--requests 60] [--concurrency 1,8]

Starts `beem serve` on a caption bundle and sends it the bundle's test-split images (regenerated from the
manifest's data record, or a folder given with --images) as base64 JSON, with the policies interleaved in rounds
on the same images (`beem loadtest`'s runner), at each concurrency: batch 1 (sequential) and a closed loop. Prints
one JSON object: per policy p50/p95 latency, requests per second and mean exit layer, and full / BEEM-A ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from beem.bundle.manifest import read_manifest, resolve_bundle_dir
from beem.captioning.caption_data import load_caption_items, source_from_provenance, split_images
from bench.server_process import ServerProcess
from loadtest.load_report import summarize
from loadtest.load_runner import LoadPlan, run_plan
from loadtest.workload import image_workload

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CAPTION_BUNDLE = REPO_ROOT / "model_store" / "lite0-fashion-scenes-captioner"


def copy_test_split_images(bundle_dir: Path, work_dir: Path, limit: int) -> Path:
    """Copy the bundle's first `limit` test-split images into one folder (the load generator reads a folder)."""
    manifest = read_manifest(bundle_dir)
    source = source_from_provenance(dict(manifest.data), None, None, None)
    items = load_caption_items(source, work_dir)
    indices = split_images(len(items), source.split_fractions, source.split_seed)["test"][:limit]
    folder = Path(tempfile.mkdtemp(prefix="caption-serving-"))
    for index in indices:
        shutil.copy(items[index].path, folder / items[index].path.name)
    return folder


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_CAPTION_BUNDLE))
    arguments.add_argument("--images", help="a folder of PNG/JPEG images (default: the bundle's test split)")
    arguments.add_argument("--work-dir", default=str(REPO_ROOT / "runs" / "caption-evaluation"))
    arguments.add_argument("--requests", type=int, default=60, help="per policy and concurrency")
    arguments.add_argument("--concurrency", default="1,8")
    arguments.add_argument("--policies", default="full,beem-a,beem-c")
    arguments.add_argument("--device", default="auto")
    arguments.add_argument("--out", help="also write the JSON here (a folder)")
    arguments.add_argument(
        "--max-queue-wait-ms",
        type=float,
        help="the server's wait budget (default: the caption task's own, 4 s; service/tasks.py)",
    )
    args = arguments.parse_args()
    bundle_dir = resolve_bundle_dir(Path(args.bundle))
    folder = Path(args.images) if args.images else copy_test_split_images(bundle_dir, Path(args.work_dir), 300)
    workload = image_workload(folder)
    policies = tuple(args.policies.split(","))
    command = [sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle_dir), "--device", args.device]
    if args.max_queue_wait_ms is not None:
        command += ["--max-queue-wait-ms", str(args.max_queue_wait_ms)]
    results: dict[str, object] = {
        "bundle": str(bundle_dir.relative_to(REPO_ROOT) if bundle_dir.is_relative_to(REPO_ROOT) else bundle_dir),
        "images": len(workload.images),
        "max_queue_wait_ms": args.max_queue_wait_ms,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        + (torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "CPU"),
    }
    with ServerProcess(command) as server:
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            plan = LoadPlan(policies, "closed", concurrency=concurrency, requests=args.requests, rounds=3)
            summaries = {
                name: summarize(result)
                for name, result in asyncio.run(run_plan(server.url, workload, plan, show_progress=False)).items()
            }
            full, beem = summaries["full"], summaries["beem-a"]
            results[f"c{concurrency}"] = {
                "policies": summaries,
                "p50_speedup_beem_a": full["p50_ms"] / beem["p50_ms"],
                "p95_speedup_beem_a": full["p95_ms"] / beem["p95_ms"],
                "throughput_ratio_beem_a": beem["throughput_rps"] / full["throughput_rps"],
                "exit_layer_speedup_beem_a": full["mean_exit_layer"] / beem["mean_exit_layer"],
            }
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "caption_serving.json").write_text(text)


if __name__ == "__main__":
    main()
