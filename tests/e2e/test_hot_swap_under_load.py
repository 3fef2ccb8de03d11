"""Hot swap in a real `beem serve` process under 16-client load: a new version appears, SIGHUP asks the server to
look, and the swap happens while every client keeps sending; not one request fails, requests move from version 1
to version 2, and version 1 is unloaded once drained."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx

from tests.e2e.test_real_server import ServerProcess
from tests.engine.engine_driver import TEXTS
from tests.model_store_builders import add_version

CLIENTS = 16
MAX_LOAD_S = 90.0


def test_a_version_swaps_in_under_16_client_load_with_no_failed_request(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    model_dir = tmp_path / "store" / "tiny-sentiment"
    model_dir.mkdir(parents=True)
    add_version(model_dir, tiny_bundle_dir, 1)
    server = ServerProcess(model_dir, "--poll-interval-s", "0", "--max-batch-wait-ms", "2")
    try:
        server.wait_ready()
        statuses, answered_by = asyncio.run(_load_through_a_swap(server, model_dir, tiny_bundle_dir))
        versions = httpx.get(f"{server.url}/v1/models").json()["data"][0]["versions"]
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert answered_by[0] == "tiny-sentiment:1" and answered_by[-1] == "tiny-sentiment:2"
    first_v2 = answered_by.index("tiny-sentiment:2")
    assert set(answered_by[first_v2 + CLIENTS :]) == {"tiny-sentiment:2"}  # once swapped, new requests go to 2
    assert versions == [{"version": "1", "status": "unloaded", "error": None},
                        {"version": "2", "status": "serving", "error": None}]  # fmt: skip
    assert 'beem_model_reloads_total{model="tiny-sentiment",outcome="loaded"} 1.0' in metrics


async def _load_through_a_swap(server: ServerProcess, model_dir: Path, bundle_dir: Path) -> tuple[list[int], list[str]]:
    """16 closed-loop clients until version 1 has been unloaded (and a little after); the statuses of every request
    and, in the order answered, which version answered."""
    statuses: list[int] = []
    answered_by: list[str] = []
    swapped = asyncio.Event()

    async def client(number: int, http: httpx.AsyncClient) -> None:
        sent = 0
        while not swapped.is_set():
            response = await http.post("/v1/classify", json={"inputs": TEXTS[(number + sent) % len(TEXTS)]})
            sent += 1
            statuses.append(response.status_code)
            if response.status_code == 200:
                answered_by.append(response.json()["model"])

    async def swap(http: httpx.AsyncClient) -> None:
        await asyncio.sleep(1.0)  # load before the swap
        add_version(model_dir, bundle_dir, 2)
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + MAX_LOAD_S
        while time.monotonic() < deadline:
            versions = (await http.get("/v1/models")).json()["data"][0]["versions"]
            if any(v["version"] == "1" and v["status"] == "unloaded" for v in versions):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # load after it
        swapped.set()

    limits = httpx.Limits(max_connections=CLIENTS + 1)
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as http:
        await asyncio.gather(swap(http), *(client(number, http) for number in range(CLIENTS)))
    return statuses, answered_by
