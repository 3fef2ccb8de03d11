"""Hot swap in a real `beem serve` process under 16-client load: a new version appears (a copy, or `beem
recalibrate`'s new thresholds for the same weights), SIGHUP asks the server to look, and the swap happens while
every client keeps sending; not one request fails, requests move from version 1 to version 2, and version 1 is
unloaded once drained."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from beem.bundle.bundle_reader import load_bundle
from beem.calibration.policy_calibration import CalibrationOptions
from beem.recalibration import recalibrate
from tests.e2e.test_real_server import ServerProcess
from tests.engine.engine_driver import TEXTS
from tests.model_store_builders import add_version

CLIENTS = 16
MAX_LOAD_S = 90.0
# The wait budget is raised far above the default 500 ms: the new version is loaded (and, in the second test,
# recalibrated in this test process) on the same two cores the 16 clients load, and on a slow machine that work
# alone pushed the expected queue wait past 500 ms (2 of 444 requests refused with 429 in one full-suite run).
# These tests are about the swap losing no request; admission under CPU contention has its own tests.
SWAP_SERVER_FLAGS = ("--poll-interval-s", "0", "--max-batch-wait-ms", "2", "--max-queue-wait-ms", "10000")


def test_a_version_swaps_in_under_16_client_load_with_no_failed_request(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    model_dir = tmp_path / "store" / "tiny-sentiment"
    model_dir.mkdir(parents=True)
    add_version(model_dir, tiny_bundle_dir, 1)
    server = ServerProcess(model_dir, *SWAP_SERVER_FLAGS)
    try:
        server.wait_ready()
        statuses, answered_by = asyncio.run(
            _load_through_a_swap(server, lambda: add_version(model_dir, tiny_bundle_dir, 2))
        )
        versions = httpx.get(f"{server.url}/v1/models").json()["data"][0]["versions"]
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert answered_by[0] == "tiny-sentiment:1" and answered_by[-1] == "tiny-sentiment:2"
    first_v2 = answered_by.index("tiny-sentiment:2")
    assert set(answered_by[first_v2 + CLIENTS :]) == {"tiny-sentiment:2"}  # once swapped, new requests go to 2
    assert [(v["version"], v["status"], v["error"]) for v in versions] == [("1", "unloaded", None),
                                                                            ("2", "serving", None)]  # fmt: skip
    # The unloaded version's final ledger: every row it admitted left it, answered (none shed at 16 clients).
    left = versions[0]["rows"]["left"]
    assert versions[0]["rows"]["admitted"] == left["answered"] == answered_by.count("tiny-sentiment:1") > 0
    assert versions[1]["rows"] is None
    assert 'beem_model_reloads_total{model="tiny-sentiment",outcome="loaded"} 1.0' in metrics


def test_a_recalibrated_version_swaps_in_under_load_with_its_new_thresholds_live(
    tmp_path: Path, tiny_bundle_dir: Path, tiny_data_file: Path
) -> None:
    """`beem recalibrate` over a sample of requests (texts, no labels) while 16 clients keep sending: version 2 has
    the same weights and Learn-then-Test thresholds, and the server's live thresholds become version 2's."""
    model_dir = tmp_path / "store" / "tiny-sentiment"
    model_dir.mkdir(parents=True)
    add_version(model_dir, tiny_bundle_dir, 1)
    texts_file = tmp_path / "requests.txt"
    texts_file.write_text("\n".join(json.loads(line)["text"] for line in tiny_data_file.read_text().splitlines()))
    options = CalibrationOptions(selection_rule="ltt", epsilon=0.25, delta=0.1, risk="disagreement")
    server = ServerProcess(model_dir, *SWAP_SERVER_FLAGS)
    try:
        server.wait_ready()
        before = _live_thresholds(httpx.get(f"{server.url}/v1/models").json())
        statuses, answered_by = asyncio.run(
            _load_through_a_swap(server, lambda: recalibrate(model_dir / "1", options, texts_file))
        )
        served = httpx.get(f"{server.url}/v1/models").json()
    finally:
        server.stop()
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert answered_by[0] == "tiny-sentiment:1" and answered_by[-1] == "tiny-sentiment:2"
    (entry,) = served["data"]
    assert entry["version"] == "2" and entry["calibration"]["selection_rule"] == "ltt"
    recalibrated = load_bundle(model_dir / "2").policies
    expected = {name: policy.threshold if math.isfinite(policy.threshold) else str(policy.threshold)
                for name, policy in recalibrated.items()}  # fmt: skip
    assert _live_thresholds(served) == expected
    assert expected != before  # the swap changed something a request sees
    assert all(entry["policies"][name]["guarantee"]["risk"] == "disagreement" for name in expected if name != "full")


def _live_thresholds(models: dict[str, object]) -> dict[str, object]:
    (entry,) = models["data"]  # type: ignore[index]
    return {name: policy["live_threshold"] for name, policy in entry["policies"].items()}


async def _load_through_a_swap(server: ServerProcess, publish: Callable[[], Path]) -> tuple[list[int], list[str]]:
    """16 closed-loop clients until version 1 has been unloaded (and a little after), `publish()` writing version 2
    after a second of load (in a thread: the clients keep sending); the statuses of every request and, in the order
    answered, which version answered."""
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
        await asyncio.to_thread(publish)
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
