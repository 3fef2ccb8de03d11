"""What the soak watches of the server (`bench/soak.py`): its process (resident memory, open file descriptors,
threads, from /proc) and its row ledger (every version's rows admitted and rows left by outcome).

The ledger of a live version is in /metrics (`beem_admitted_rows_total`, `beem_rows_total`, labelled with model and
version); an unloaded version's metrics leave /metrics with it, and its final counts stay in /v1/models
(`versions[].rows`). Rows refused at admission (`shed`) were never admitted; every admitted row leaves by one of
the other outcomes, so a settled version balances when admitted == left - shed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.live_load import metric_sum

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def process_sample(pid: int) -> dict[str, float]:
    """Resident memory (MiB), open file descriptors and threads of process `pid`."""
    proc = Path("/proc") / str(pid)
    resident_pages = int((proc / "statm").read_text().split()[1])
    status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line)
    return {
        "rss_mib": resident_pages * PAGE_BYTES / 2**20,
        "open_fds": len(os.listdir(proc / "fd")),
        "threads": int(status["Threads"].strip()),
    }


def live_ledgers(samples: list[tuple[str, dict[str, str], float]]) -> dict[str, dict[str, Any]]:
    """{"model:version": {"admitted", "left" by outcome, "in_flight", "queued"}} of every live version."""
    versions = {(labels["model"], labels["version"]) for name, labels, _ in samples
                if name == "beem_admitted_rows_total" and "model" in labels}  # fmt: skip
    ledgers = {}
    for model, version in sorted(versions):
        left: dict[str, int] = {}
        for name, labels, value in samples:
            if name == "beem_rows_total" and labels.get("model") == model and labels.get("version") == version:
                left[labels["outcome"]] = left.get(labels["outcome"], 0) + int(value)
        ledgers[f"{model}:{version}"] = {
            "admitted": int(metric_sum(samples, "beem_admitted_rows_total", model=model, version=version)),
            "left": left,
            "in_flight": int(metric_sum(samples, "beem_inflight_rows", model=model, version=version)),
            "queued": int(metric_sum(samples, "beem_queue_depth", model=model, version=version)),
        }
    return ledgers


def unloaded_ledgers(models: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{"model:version": {"admitted", "left"}} of every unloaded version, from /v1/models."""
    return {f"{entry['name']}:{version['version']}": version["rows"]
            for entry in models["data"] for version in entry["versions"]
            if version["status"] == "unloaded" and version.get("rows")}  # fmt: skip


def unbalanced(ledger: dict[str, Any]) -> int:
    """Rows admitted that have not left (0 when the version is settled and its ledger balances)."""
    left = ledger["left"]
    return int(ledger["admitted"] - (sum(left.values()) - left.get("shed", 0)))


def settled(ledgers: dict[str, dict[str, Any]]) -> bool:
    return all(ledger.get("in_flight", 0) == 0 and ledger.get("queued", 0) == 0 for ledger in ledgers.values())


def totals(ledgers: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Rows admitted and left by outcome, summed over versions."""
    summed: dict[str, int] = {"admitted": 0}
    for ledger in ledgers.values():
        summed["admitted"] += ledger["admitted"]
        for outcome, count in ledger["left"].items():
            summed[outcome] = summed.get(outcome, 0) + count
    return summed
