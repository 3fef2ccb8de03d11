"""What the live-server benchmarks (shadow_cost, hot_swap, drift_control) share: a closed-loop load that records
every request with the model version that answered it, /metrics and /v1/models read as numbers, the test split's
texts, and a new version of a model written into a model store as the builder writes one.

The load speaks through the load generator's lean HTTP client (`loadtest/http_connection.py`): on a 2-core
machine the client's CPU is taken from the server being measured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtest.http_connection import ConnectionPool, HttpError
from loadtest.load_report import percentile_ms
from loadtest.workload import CLASSIFY_ROUTE, text_workload

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
SHED_STATUS = 429
REFUSED_PAUSE_S = 0.05


@dataclass(frozen=True)
class Answer:
    sent_s: float  # when it was written, seconds after the load's t0
    latency_s: float
    status: int  # HTTP status; 0 when none came (connection error, client timeout)
    model: str | None = None  # the response's "name:version"
    exit_layer: int | None = None
    label: str | None = None
    detail: str | None = None  # the start of a non-200 answer's body


def test_texts() -> tuple[str, ...]:
    """The committed default bundle's test split (rotten_tomatoes snippets, the bundle's own split)."""
    return text_workload().texts


def classify_body(text: str) -> dict[str, Any]:
    """One text, the model's default policy (no policy field: the served, monitored parameters)."""
    return {"inputs": text, "truncate": True}


async def send(pool: ConnectionPool, text: str, t0: float, timeout_s: float) -> Answer:
    started = time.perf_counter()
    try:
        response = await pool.post_json(CLASSIFY_ROUTE, classify_body(text), timeout_s)
    except (HttpError, OSError, TimeoutError, ValueError):
        return Answer(started - t0, time.perf_counter() - started, 0)
    latency = time.perf_counter() - started
    if response.status != 200:
        return Answer(started - t0, latency, response.status, detail=response.body[:200].decode(errors="replace"))
    payload = response.json()
    result = payload["results"][0]
    return Answer(started - t0, latency, 200, payload.get("model"), int(result["exit_layer"]), result["label"])


async def closed_loop(
    url: str,
    texts: Sequence[str],
    clients: int,
    stop: asyncio.Event,
    records: list[Answer],
    t0: float,
    first_index: int = 0,
    timeout_s: float = 30.0,
) -> None:
    """`clients` loops, each sending the next text as soon as its last answer came, until `stop` is set."""
    issued = first_index

    async def client(pool: ConnectionPool) -> None:
        nonlocal issued
        while not stop.is_set():
            text = texts[issued % len(texts)]
            issued += 1
            answer = await send(pool, text, t0, timeout_s)
            records.append(answer)
            if answer.status in (0, SHED_STATUS):
                await asyncio.sleep(REFUSED_PAUSE_S)  # a refused client does not spin, taking the server's CPU

    async with ConnectionPool(url) as pool:
        await asyncio.gather(*(client(pool) for _ in range(clients)))


async def load_for(url: str, texts: Sequence[str], clients: int, seconds: float, first_index: int = 0) -> list[Answer]:
    """A closed loop of `clients` for `seconds` (requests in flight then are answered and kept)."""
    records: list[Answer] = []
    stop = asyncio.Event()
    t0 = time.perf_counter()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    await closed_loop(url, texts, clients, stop, records, t0, first_index)
    return records


def latency_summary(records: Sequence[Answer], seconds: float | None = None) -> dict[str, Any]:
    ok = [r.latency_s for r in records if r.status == 200]
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": sum(1 for r in records if r.status != 200),
        "p50_ms": percentile_ms(ok, 50),
        "p95_ms": percentile_ms(ok, 95),
        "p99_ms": percentile_ms(ok, 99),
        **({} if seconds is None else {"seconds": seconds, "throughput_rps": len(ok) / seconds}),
    }


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of /metrics as (name, labels, value)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def metric_sum(samples: Sequence[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def metric_value(samples: Sequence[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float | None:
    """The one sample of `name` with these labels (None when absent)."""
    found = [
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    ]
    return found[0] if found else None


def number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
