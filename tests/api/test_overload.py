"""Overload and time limits: 429 with Retry-After past the expected-wait bound, 504 past the deadline, 503 until
ready."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ServerSettings
from tests.api.conftest import ready_client


def test_expected_wait_past_the_bound_sheds_with_retry_after(tiny_bundle_dir: Path) -> None:
    for client in ready_client(ServerSettings(bundle=tiny_bundle_dir, max_queue_wait_ms=500)):
        engine = client.app.state.models.default_for("classification").active.engine  # type: ignore[attr-defined]
        engine.drain.record(10, 1.0)  # the engine has measured 10 rows per busy second
        engine.queue.report_load(30)  # and holds 30 rows: a new request would wait 3 s
        response = client.post("/v1/classify", json={"inputs": ["one", "two"]})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "3"
        assert response.json()["error_type"] == "overloaded"
        assert "expected queue wait 3000 ms" in response.json()["error"]
        engine.queue.report_load(0)  # drained
        assert client.post("/v1/classify", json={"inputs": "one"}).status_code == 200
        metrics = client.get("/metrics").text
        assert 'status="429"' in metrics
        assert 'beem_rows_total{model="tiny-sentiment",outcome="shed",task="classification",version="1"} 2.0' in metrics


def test_request_past_its_deadline_gets_504_and_costs_no_compute(tiny_bundle_dir: Path) -> None:
    settings = ServerSettings(bundle=tiny_bundle_dir, request_timeout_s=0.05, max_batch_wait_ms=500)
    for client in ready_client(settings):
        response = client.post("/v1/classify", json={"inputs": "waits for a batch that fills too slowly"})
        assert response.status_code == 504
        assert response.json()["error_type"] == "timeout"


def test_not_ready_before_the_model_is_loaded(tiny_bundle_dir: Path) -> None:
    client = TestClient(create_app(ServerSettings(bundle=tiny_bundle_dir)))  # no lifespan: nothing loads
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    response = client.post("/v1/classify", json={"inputs": "too early"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"


def _overloaded(client: TestClient) -> None:
    """The default model's engine reports 10 rows a second and 30 in flight: every request is refused."""
    engine = client.app.state.models.default_for("classification").active.engine  # type: ignore[attr-defined]
    engine.drain.record(10, 1.0)
    engine.queue.report_load(30)


def _retrying(client: TestClient, stop_at: float, refusals: list[float]) -> None:
    while time.monotonic() < stop_at:
        started = time.monotonic()
        assert client.post("/v1/classify", json={"inputs": "again"}).status_code == 429
        refusals.append(time.monotonic() - started)


def test_a_refusal_is_paced_so_clients_that_retry_at_once_cannot_storm(tiny_bundle_dir: Path) -> None:
    """Eight clients resending at once on 429 for 0.6 s, refusals paced at 200 ms: at most 8 x (0.6 / 0.2 + 1)
    refusals (unpaced, each client sends hundreds); each refusal takes at least the pace, costing no CPU."""
    settings = ServerSettings(bundle=tiny_bundle_dir, max_queue_wait_ms=100, refusal_pace_ms=200)
    for client in ready_client(settings):
        _overloaded(client)
        refusals: list[float] = []
        threads = [threading.Thread(target=_retrying, args=(client, time.monotonic() + 0.6, refusals))
                   for _ in range(8)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert 8 <= len(refusals) <= 8 * 4
        assert min(refusals) >= 0.2


def test_with_no_pace_a_refusal_is_answered_at_once(tiny_bundle_dir: Path) -> None:
    for client in ready_client(ServerSettings(bundle=tiny_bundle_dir, max_queue_wait_ms=100, refusal_pace_ms=0)):
        _overloaded(client)
        started = time.monotonic()
        assert client.post("/v1/classify", json={"inputs": "again"}).status_code == 429
        assert time.monotonic() - started < 0.2
