"""Two models under load at once on a real `beem serve` (issue 25): a flood on one model leaves the other's requests
answered within their wait budget. Each model's engine has its own thread, queue and share of the cores
(service/model_versions/model_admission.py); how much throughput each keeps is `python -m bench.two_models`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

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

        async def run() -> tuple[list[int], list[tuple[int, float]]]:
            flood_statuses: list[int] = []
            other: list[tuple[int, float]] = []
            stop_at = time.monotonic() + 3.0
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:

                async def flood() -> None:
                    while time.monotonic() < stop_at:
                        response = await client.post("/v1/classify", json={"inputs": TEXTS * 2,
                                                                           "model": "tiny-sentiment"})  # fmt: skip
                        flood_statuses.append(response.status_code)

                async def neighbour() -> None:
                    await asyncio.sleep(0.5)  # the flood is on
                    while time.monotonic() < stop_at:
                        started = time.monotonic()
                        response = await client.post("/v1/classify", json={"inputs": TEXTS[0], "model": "tiny-other"})
                        other.append((response.status_code, (time.monotonic() - started) * 1000))
                        await asyncio.sleep(0.05)

                await asyncio.gather(*(flood() for _ in range(32)), neighbour())
            return flood_statuses, other

        flood_statuses, other = asyncio.run(run())
        assert len(flood_statuses) > 50 and set(flood_statuses) <= {200, 429}
        assert len(other) >= 5 and all(status == 200 for status, _ in other), other
        assert max(ms for _, ms in other) < BUDGET_MS, other
    finally:
        running.stop()
