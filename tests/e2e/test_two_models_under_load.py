"""Two models under load at once on a real `beem serve` (issue 25): a flood on one model leaves the other's requests
answered within their wait budget. Each model's engine has its own thread, queue and share of the cores
(service/model_versions/model_admission.py); how much throughput each keeps is `python -m bench.two_models`."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx

from loadtest.http_connection import Connection
from tests.e2e.test_real_server import TEXTS, ServerProcess
from tests.model_store_builders import model_store

BUDGET_MS = 500  # the classification default max_queue_wait_ms


def test_a_flood_on_one_model_leaves_the_others_requests_answered_in_their_budget(
    tmp_path: Path, tiny_bundle_dir: Path
) -> None:
    store = model_store(tmp_path / "store", {"tiny-sentiment": tiny_bundle_dir, "tiny-other": tiny_bundle_dir})
    running = ServerProcess(None, "--model-store", str(store), "--default-model", "tiny-sentiment")
    try:
        running.wait_ready()
        models = httpx.get(f"{running.url}/v1/models").json()["data"]
        assert all(m["admission"]["torch_threads"]["from"].startswith("a share of") for m in models)

        flood_statuses: list[int] = []
        stop_at = time.monotonic() + 3.0

        async def flood() -> None:
            # The lean load-generator client, in a thread of its own: the neighbour's latency below is then the
            # server's, not 32 httpx coroutines' turns on one event loop.
            body = json.dumps({"inputs": TEXTS * 2, "model": "tiny-sentiment"}).encode()

            async def one_client() -> None:
                connection = Connection("127.0.0.1", running.port, None)
                try:
                    while time.monotonic() < stop_at:
                        flood_statuses.append((await connection.post("/v1/classify", body)).status)
                finally:
                    connection.close()

            await asyncio.gather(*(one_client() for _ in range(32)))

        flooding = threading.Thread(target=asyncio.run, args=(flood(),))
        flooding.start()
        other: list[tuple[int, float]] = []
        with httpx.Client(base_url=running.url, timeout=30) as client:
            time.sleep(0.5)  # the flood is on
            while time.monotonic() < stop_at:
                started = time.monotonic()
                response = client.post("/v1/classify", json={"inputs": TEXTS[0], "model": "tiny-other"})
                other.append((response.status_code, (time.monotonic() - started) * 1000))
                time.sleep(0.05)
        flooding.join()
        assert len(flood_statuses) > 50 and set(flood_statuses) <= {200, 429}
        assert len(other) >= 5 and all(status == 200 for status, _ in other), other
        assert max(ms for _, ms in other) < BUDGET_MS, other
    finally:
        running.stop()
