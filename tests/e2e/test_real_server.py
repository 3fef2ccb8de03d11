"""A real `beem serve` process on a free port, talked to over HTTP with httpx."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

TEXTS = ["a gorgeous, moving film", "dull and far too long", "the plot never comes together", "fine acting"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    def __init__(self, bundle: Path | None, *flags: str, env: dict[str, str] | None = None) -> None:
        """`bundle` None: the flags say what to serve (`--model-store`)."""
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        served = [] if bundle is None else ["--bundle", str(bundle)]
        command = [sys.executable, "-m", "service.cli", "serve", *served, "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )  # fmt: skip

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready in {timeout_s} s")

    def output(self) -> str:
        if self.process.poll() is None:
            self.process.kill()
        out, _ = self.process.communicate(timeout=10)
        return out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def server(tiny_bundle_dir: Path) -> Iterator[ServerProcess]:
    running = ServerProcess(tiny_bundle_dir, "--max-batch-wait-ms", "20")
    running.wait_ready()
    yield running
    running.stop()


def test_concurrent_requests_are_batched_and_metrics_scraped(server: ServerProcess) -> None:
    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(
                client.post("/v1/classify", json={"inputs": TEXTS[i % 4], "policy": {"name": "full"}})
                for i in range(48)
            ))  # fmt: skip

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 48
    labels = {}
    for i, response in enumerate(responses):
        result = response.json()["results"][0]
        assert labels.setdefault(TEXTS[i % 4], result["label"]) == result["label"]  # same text, same answer
    metrics = httpx.get(f"{server.url}/metrics").text
    batches = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("beem_batch_size_count"))
    rows = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("beem_batch_size_sum"))
    assert rows == 48 and batches < 48, "concurrent requests should join the engine together"
    assert 'beem_requests_total{model="tiny-sentiment",policy="full",route="/v1/classify",status="200"} 48.0' in metrics


def test_sigterm_finishes_admitted_requests_then_exits(tiny_bundle_dir: Path) -> None:
    running = ServerProcess(tiny_bundle_dir, "--max-batch-wait-ms", "400", "--max-batch-size", "64")
    running.wait_ready()

    async def fire_then_terminate() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            requests = [asyncio.create_task(client.post("/v1/classify", json={"inputs": t})) for t in TEXTS]
            await asyncio.sleep(0.15)  # admitted and waiting for their batch to fill
            running.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*requests)

    try:
        responses = asyncio.run(fire_then_terminate())
        assert [r.status_code for r in responses] == [200] * len(TEXTS)
        # uvicorn re-raises the captured SIGTERM once shutdown is complete, so the exit status is the signal's.
        assert running.process.wait(timeout=30) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{running.url}/healthz", timeout=2)
        log = running.output()
        assert log.index("Shutting down") < log.index("Application shutdown complete")
    finally:
        running.stop()


def test_invalid_settings_stop_start_up_with_a_message(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    bad_batch = ServerProcess(tiny_bundle_dir, "--max-batch-size", "0")
    assert bad_batch.process.wait(timeout=60) == 2
    assert "max_batch_size" in bad_batch.output()
    missing = ServerProcess(tmp_path / "nothing")
    assert missing.process.wait(timeout=60) == 2
    assert "does not exist" in missing.output()


def test_a_request_whose_client_left_is_dropped_before_compute(tiny_bundle_dir: Path) -> None:
    running = ServerProcess(tiny_bundle_dir, "--max-batch-wait-ms", "1000")
    running.wait_ready()
    try:
        body = b'{"inputs": "nobody will read this answer"}'
        with socket.create_connection(("127.0.0.1", running.port)) as raw:
            raw.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.3)  # admitted; its batch is still filling
        time.sleep(2.0)  # the batch has run by now
        metrics = httpx.get(f"{running.url}/metrics").text
        assert (
            'beem_rows_total{model="tiny-sentiment",outcome="client_gone",task="classification",version="1"} 1.0'
            in metrics
        )
        assert 'beem_batch_size_count{model="tiny-sentiment",version="1"} 0.0' in metrics  # no batch ever ran for it
    finally:
        running.stop()


def test_rows_of_different_policies_share_a_batch_and_keep_their_own_rule(tiny_bundle_dir: Path) -> None:
    running = ServerProcess(tiny_bundle_dir, "--max-batch-wait-ms", "300")
    running.wait_ready()
    policies = [{"name": "static", "layer": 1}, {"name": "full"}, {"name": "static", "layer": 2}]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            return await asyncio.gather(*(
                client.post("/v1/classify", json={"inputs": TEXTS[:2], "policy": policy}) for policy in policies
            ))  # fmt: skip

    try:
        responses = asyncio.run(fire())
        layers = [{r["exit_layer"] for r in response.json()["results"]} for response in responses]
        assert layers == [{1}, {3}, {2}]
        metrics = httpx.get(f"{running.url}/metrics").text
        assert (
            'beem_batch_size_count{model="tiny-sentiment",version="1"} 1.0' in metrics
            and 'beem_batch_size_sum{model="tiny-sentiment",version="1"} 6.0' in metrics
        )
        # 6 rows entered layer 1; the two static-1 rows left, then the two static-2 rows: 4 at layer 2, 2 at 3.
        assert 'beem_layer_batch_size_sum{layer="2",model="tiny-sentiment",version="1"} 4.0' in metrics
        assert 'beem_layer_batch_size_sum{layer="3",model="tiny-sentiment",version="1"} 2.0' in metrics
    finally:
        running.stop()


def test_sigterm_under_load_answers_every_admitted_request(tiny_bundle_dir: Path) -> None:
    """The default bundle, 48 requests of every depth in flight or queued when SIGTERM comes: each one is
    answered (rows at every depth drain), and the process exits."""
    from service.settings import DEFAULT_BUNDLE

    running = ServerProcess(DEFAULT_BUNDLE, "--max-batch-size", "16", "--group-selection", "shallowest")
    running.wait_ready(120)
    policies = [{"name": "static", "layer": layer} for layer in range(1, 7)] + [{"name": "beem-a"}]
    texts = [f"{TEXTS[i % 4]} ({i}), and then some more words so the rows differ in length" * (1 + i % 3)
             for i in range(48)]  # fmt: skip

    async def fire_then_terminate() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
            requests = [asyncio.create_task(client.post("/v1/classify", json={
                "inputs": text, "policy": policies[i % len(policies)]})) for i, text in enumerate(texts)]  # fmt: skip
            await asyncio.sleep(0.3)  # all admitted; some answered, the rest queued or at some depth
            running.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*requests)

    try:
        responses = asyncio.run(fire_then_terminate())
        assert [r.status_code for r in responses] == [200] * len(texts)
        layers = {r.json()["results"][0]["exit_layer"] for r in responses}
        assert layers >= {1, 2, 3, 4, 5, 6}
        assert running.process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        running.stop()
