"""The GPU comparison: BEEM-A, max-prob and full depth on the lent GPU machine, at the engine, over HTTP and on the
caption server, plus fp16/bf16 parity with CPU fp32. Prepared for one run of `bench/gpu/run_gpu_comparison.sh`.

    python -m bench.gpu_comparison [--bundle DIR] [--caption-bundle DIR --images DIR] [--out DIR] [--quick]

1. parity: the test split through the engine on CPU fp32 (the host path, the reference) and on the GPU in fp16
   and bf16 (the device path, exit skipping off so every row decides by its policy): label and exit-layer
   agreement, accuracy on each;
2. engine: the server's engine in this thread (`bench/engine_in_thread.py`), the policies taking turns batch by
   batch on the same rows: batch 1 (per-request latency), batches of 32 and 128 (per-batch latency, rows/s);
3. HTTP: `beem serve` as a child process, closed loops of 1, 32 and 64 clients, policies interleaved in rounds;
4. caption: `beem serve` on the caption bundle, 16 clients (when the bundle and images are here: the device
   tool's 64 MiB holds one bundle, so the caption part runs in a run of its own).
Each policy gets p50/p95, throughput, its layer speed-up (full depth's mean exit layer over its own) and its
ratio to full depth measured side by side. Writes gpu_comparison_<gpu>.json and .md under --out. Without a GPU
it runs the same measurements on the CPU (QUICK=1: a smoke run; the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from service.engine.device_engine import DEVICEENGINE

from beem.bundle.manifest import resolve_bundle_dir
from beem.data.examples import read_dataset
from beem.data.rotten_tomatoes import REPO_DATA_FILE
from beem.data.splits import split_dataset
from bench.engine_in_thread import classify_ids, engine_in_thread
from bench.result_files import write_results
from bench.server_process import ServerProcess
from loadtest.load_report import summarize
from loadtest.load_runner import LoadPlan, run_plan
from loadtest.workload import image_workload, text_workload
from service.engine.classify.classification_engine import ClassificationEngine
from service.settings import DEFAULT_BUNDLE

POLICIES = ("beem-a", "max-prob", "full")
BASELINE = "full"
ENGINE_BATCHES = (1, 32, 128)
HTTP_CLIENTS = (1, 32, 64)
CAPTION_CLIENTS = 16
ENGINE_SETTINGS: dict[str, object] = {"max_batch_size": 128, "max_batch_tokens": 1 << 15}


def _gpu() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _synchronise() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _test_rows(engine: ClassificationEngine, limit: int) -> tuple[list[list[int]], list[int]]:
    assert engine.bundle is not None
    bundle = engine.bundle
    dataset = read_dataset(REPO_DATA_FILE)
    test = split_dataset(dataset).test.examples[:limit]
    ids = [bundle.tokenizer(e.text, truncation=True, max_length=bundle.max_length)["input_ids"] for e in test]
    return ids, [bundle.labels.index(dataset.label_names[e.label]) for e in test]


def parity(bundle_dir: Path, limit: int) -> dict[str, Any]:
    """CPU fp32 (host path) against the GPU at each half precision (device path): per policy."""
    reference = engine_in_thread(bundle_dir, "cpu", "float32", engine_path="host", **ENGINE_SETTINGS)
    rows, labels = _test_rows(reference, limit)
    batches = [rows[start : start + 32] for start in range(0, len(rows), 32)]

    def answers(engine: ClassificationEngine, policy: str) -> list[Any]:
        assert engine.bundle is not None
        return [a for batch in batches for a in classify_ids(engine, batch, engine.bundle.policies[policy])]

    cpu = {policy: answers(reference, policy) for policy in POLICIES}
    result: dict[str, Any] = {"samples": len(rows)}
    dtypes = ("float16", "bfloat16") if _gpu() == "cuda" else ("float32",)
    for dtype in dtypes:
        engine = engine_in_thread(bundle_dir, _gpu(), dtype, engine_path="device", skip_unprofitable_exits=False,
                                  **ENGINE_SETTINGS)  # fmt: skip
        result[dtype] = {}
        for policy in POLICIES:
            gpu, ref = answers(engine, policy), cpu[policy]
            pairs = list(zip(ref, gpu, strict=True))
            result[dtype][policy] = {
                "label_agreement": sum(a.label == b.label for a, b in pairs) / len(pairs),
                "exit_layer_agreement": sum(a.exit_layer == b.exit_layer for a, b in pairs) / len(pairs),
                "accuracy_cpu_fp32": sum(a.label == y for a, y in zip(ref, labels, strict=True)) / len(pairs),
                "accuracy_gpu": sum(b.label == y for b, y in zip(gpu, labels, strict=True)) / len(pairs),
                "mean_exit_layer_gpu": sum(b.exit_layer for b in gpu) / len(pairs),
            }
            row = result[dtype][policy]
            row["accuracy_difference_points"] = (row["accuracy_gpu"] - row["accuracy_cpu_fp32"]) * 100
            row["meets_target"] = (row["label_agreement"] == 1.0 and row["exit_layer_agreement"] >= 0.99
                                   and abs(row["accuracy_difference_points"]) <= 0.2)  # fmt: skip
    return result


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def engine_section(bundle_dir: Path, batches_per_size: int, singles: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per policy and batch size: p50/p95 ms per batch, rows/s, mean exit layer; and the engine's own counters."""
    engine = engine_in_thread(bundle_dir, _gpu(), "auto", **ENGINE_SETTINGS)
    rows, _ = _test_rows(engine, 1 << 30)
    assert engine.bundle is not None
    policies = {name: engine.bundle.policies[name] for name in POLICIES}
    results: dict[str, dict[str, Any]] = {name: {} for name in POLICIES}
    for size in ENGINE_BATCHES:
        count = singles if size == 1 else batches_per_size
        batches = [[rows[(start * size + i) % len(rows)] for i in range(size)] for start in range(count)]
        timings: dict[str, list[float]] = {name: [] for name in POLICIES}
        layers: dict[str, list[int]] = {name: [] for name in POLICIES}

        def timed(batch: list[list[int]], name: str) -> tuple[float, list[int]]:
            _synchronise()
            started = time.perf_counter()
            answers = classify_ids(engine, batch, policies[name])
            _synchronise()
            return (time.perf_counter() - started) * 1000, [a.exit_layer for a in answers]

        for name in POLICIES:  # warm-up, uncounted
            timed(batches[0], name)
        for index, batch in enumerate(batches):
            order = POLICIES if index % 2 == 0 else POLICIES[::-1]  # drift hits every policy alike
            for name in order:
                ms, exit_layers = timed(batch, name)
                timings[name].append(ms)
                layers[name].extend(exit_layers)
        for name in POLICIES:
            mean_ms = statistics.fmean(timings[name])
            results[name][f"b{size}"] = {
                "batches": len(timings[name]),
                "p50_ms": statistics.median(timings[name]),
                "p95_ms": _percentile(timings[name], 95),
                "throughput_rps": size * 1000 / mean_ms,
                "mean_exit_layer": statistics.fmean(layers[name]),
            }
    counters: dict[str, Any] = {"engine_class": type(engine).__name__}
    if isinstance(engine, DEVICEENGINE) and engine.graphs is not None:
        counters.update(graphs_captured=engine.graphs.captured, graph_replays=engine.graphs.replays,
                        eager_steps=engine.graphs.eager_steps, compile_error=engine.compile_error,
                        capture_failures=engine.graphs.capture_failures)  # fmt: skip
    metrics = engine.metrics.render().decode()
    counters["exit_heads_skipped_rows"] = {
        line.split('policy="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("beem_exit_heads_skipped_rows_total{")
    }
    return results, counters


def http_section(command: list[str], workload: Any, clients: tuple[int, ...], requests: dict[int, int],
                 policies: tuple[str, ...] = POLICIES) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Closed loops at each client count against one server, the policies interleaved in rounds."""
    results: dict[str, dict[str, Any]] = {name: {} for name in policies}
    with ServerProcess(command, ready_timeout_s=600) as server:
        for count in clients:
            plan = LoadPlan(policies, "closed", concurrency=count, requests=requests[count], rounds=3)
            for name, result in asyncio.run(run_plan(server.url, workload, plan, show_progress=False)).items():
                results[name][f"c{count}"] = summarize(result)
    return results


def _add_ratios(policies: dict[str, dict[str, Any]]) -> None:
    """Each measurement's layer speed-up and its ratio to full depth's, measured side by side."""
    for section in ("engine", "http", "caption"):
        for shape, full in policies[BASELINE].get(section, {}).items():
            for name in POLICIES:
                row = policies[name].get(section, {}).get(shape)
                if not row or not full.get("throughput_rps") or not row.get("p50_ms"):
                    continue
                row["throughput_ratio_to_full"] = row["throughput_rps"] / full["throughput_rps"]
                row["p50_speedup_vs_full"] = full["p50_ms"] / row["p50_ms"]
                row["p95_speedup_vs_full"] = full["p95_ms"] / row["p95_ms"]
                if row.get("mean_exit_layer") and full.get("mean_exit_layer"):
                    row["layer_speedup"] = full["mean_exit_layer"] / row["mean_exit_layer"]


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# GPU comparison, {results['gpu']}, {results['date']}", "", f"Command: `{results['command']}`", ""]
    for section in ("engine", "http", "caption"):
        shapes = sorted({shape for p in results["policies"].values() for shape in p.get(section, {})},
                        key=lambda s: int(s[1:]))  # fmt: skip
        if not shapes:
            continue
        lines += [f"## {section}", "", "| policy | shape | p50 ms | p95 ms | req/s or rows/s | layer speed-up | "
                  "throughput vs full | p50 speed-up vs full |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for shape in shapes:
            for name, policy in results["policies"].items():
                row = policy.get(section, {}).get(shape)
                if row:
                    lines.append(f"| {name} | {shape} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | "
                                 f"{row['throughput_rps']:.1f} | {row.get('layer_speedup', 1.0):.2f}x | "
                                 f"{row.get('throughput_ratio_to_full', 1.0):.2f}x | "
                                 f"{row.get('p50_speedup_vs_full', 1.0):.2f}x |")  # fmt: skip
        lines.append("")
    if "parity" in results:
        lines += ["## parity with CPU fp32 (test split)", "", "| dtype | policy | labels same | exit layers same | "
                  "accuracy CPU fp32 | accuracy GPU | meets target |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for dtype, per_policy in results["parity"].items():
            if dtype == "samples":
                continue
            for name, row in per_policy.items():
                lines.append(f"| {dtype} | {name} | {row['label_agreement']:.4f} | {row['exit_layer_agreement']:.4f}"
                             f" | {row['accuracy_cpu_fp32'] * 100:.2f} | {row['accuracy_gpu'] * 100:.2f} | "
                             f"{row['meets_target']} |")  # fmt: skip
        lines.append("")
    lines += ["## engine counters", "", "```", json.dumps(results.get("engine_counters", {}), indent=1), "```", ""]
    return "\n".join(lines)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--caption-bundle", help="also measure the caption server (needs --images)")
    arguments.add_argument("--images", help="a folder of PNG/JPEG images for the caption server")
    arguments.add_argument("--out", default="bench/results")
    arguments.add_argument("--quick", action="store_true", help="a smoke run: few rows and requests")
    arguments.add_argument("--skip", default="", help="sections to leave out: parity,engine,http,caption")
    arguments.add_argument("--merge-into", help="an earlier run's JSON: its sections are kept, this run's added")
    args = arguments.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    quick = args.quick
    gpu_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    results: dict[str, Any] = {
        "gpu": gpu_name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.gpu_comparison", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "quick": quick,
        "policies": {name: {} for name in POLICIES},
    }
    step: Callable[[str], None] = lambda name: print(f"[gpu_comparison] {name}", file=sys.stderr, flush=True)  # noqa: E731
    needs_bundle = {"parity", "engine", "http"} - skip
    bundle_dir = resolve_bundle_dir(Path(args.bundle)) if needs_bundle else Path(args.bundle)
    if "parity" not in skip:
        step("parity")
        results["parity"] = parity(bundle_dir, 64 if quick else 1 << 30)
    if "engine" not in skip:
        step("engine")
        engine, counters = engine_section(bundle_dir, 3 if quick else 20, 10 if quick else 200)
        for name in POLICIES:
            results["policies"][name]["engine"] = engine[name]
        results["engine_counters"] = counters
    serve = [sys.executable, "-m", "service.cli", "serve", "--device", "auto", "--max-batch-size", "128",
             "--max-queue", "1024"]  # fmt: skip
    if "http" not in skip:
        step("http")
        requests = {1: 15, 32: 96, 64: 128} if quick else {1: 300, 32: 3000, 64: 4000}
        http = http_section([*serve, "--bundle", str(bundle_dir)], text_workload(), HTTP_CLIENTS, requests)
        for name in POLICIES:
            results["policies"][name]["http"] = http[name]
    if "caption" not in skip and args.caption_bundle and args.images:
        step("caption")
        caption_dir = resolve_bundle_dir(Path(args.caption_bundle))
        caption = http_section([*serve, "--bundle", str(caption_dir)], image_workload(Path(args.images)),
                               (CAPTION_CLIENTS,), {CAPTION_CLIENTS: 32 if quick else 480})  # fmt: skip
        for name in POLICIES:
            results["policies"][name]["caption"] = caption[name]
    if args.merge_into and Path(args.merge_into).exists():
        earlier = json.loads(Path(args.merge_into).read_text())
        for name in POLICIES:
            earlier["policies"].setdefault(name, {}).update(results["policies"][name])
        earlier.setdefault("later_runs", []).append({"date": results["date"], "command": results["command"]})
        results = earlier
    _add_ratios(results["policies"])
    stem = "gpu_comparison_" + gpu_name.lower().replace("nvidia ", "").replace(" ", "_").replace("/", "_")
    write_results(Path(args.out), stem, results, markdown(results))


if __name__ == "__main__":
    main()
