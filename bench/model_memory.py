"""Memory and engine threads per served model: `beem serve` on one bundle, then on the whole model store, each
process's resident memory (VmRSS) and thread count read from /proc once every model is warm and has answered.

    python -m bench.model_memory [--out bench/results]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx

from bench.result_files import write_results
from bench.server_process import ServerProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUPS = {
    "one model (minilm-rt-sentiment)": ["--bundle", "model_store/minilm-rt-sentiment"],
    "model store (two classifiers + the captioner)": ["--model-store", "model_store"],
}


def measure(flags: list[str]) -> dict[str, object]:
    command = [sys.executable, "-m", "service.cli", "serve", "--poll-interval-s", "0", *flags]
    with ServerProcess(command, cwd=REPO_ROOT) as server:
        models = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]
        for model in models:  # every model answers once, so nothing lazy is left out of the figure
            if model["task"] == "classification":
                httpx.post(f"{server.url}/v1/classify", json={"inputs": "fine", "model": model["name"]}, timeout=30)
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return {
            "models": [model["id"] for model in models],
            "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
            "threads": int(fields["Threads"]),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    results = {name: measure(flags) for name, flags in SETUPS.items()}
    rows = [f"| {name} | {len(r['models'])} | {r['rss_mb']:.0f} MB | {r['threads']} |"  # type: ignore[arg-type]
            for name, r in results.items()]  # fmt: skip
    table = "| server | models | RSS | OS threads |\n|---|---|---|---|\n" + "\n".join(rows)
    write_results(Path(args.out), "model_memory_cpu", results, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
