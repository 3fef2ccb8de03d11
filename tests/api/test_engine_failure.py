"""A failing engine step answers its rows with a 500 (JSON body, counted as error) and the server serves on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from service.settings import ServerSettings
from tests.api.conftest import ready_client

ERROR_ROWS = 'beem_rows_total{model="tiny-sentiment",outcome="error",task="classification",version="1"} 2.0'
FAILED_REQUEST = 'beem_requests_total{model="tiny-sentiment",policy="beem-a",route="/v1/classify",status="500"} 1.0'


def _failing_once(run_layer: Callable[[object], object]) -> Callable[[object], object]:
    calls = {"count": 0}

    def run(state: object) -> object:
        calls["count"] += 1
        if calls["count"] == 1:
            raise RuntimeError("injected fault")
        return run_layer(state)

    return run


def test_a_step_that_raises_answers_500_and_the_next_request_is_served(
    tiny_bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for client in ready_client(ServerSettings(bundle=tiny_bundle_dir)):
        model = client.app.state.models.default_for("classification").active.engine.bundle.model  # type: ignore[attr-defined]
        monkeypatch.setattr(model, "run_layer", _failing_once(model.run_layer))
        failed = client.post("/v1/classify", json={"inputs": ["one", "two"]})
        assert failed.status_code == 500
        assert failed.json() == {"error": "the engine failed on this request (RuntimeError: injected fault)",
                                 "error_type": "internal"}  # fmt: skip
        served = client.post("/v1/classify", json={"inputs": ["one", "two"], "policy": {"name": "full"}})
        assert served.status_code == 200
        assert [r["exit_layer"] for r in served.json()["results"]] == [3, 3]
        metrics = client.get("/metrics").text
        assert ERROR_ROWS in metrics
        assert (
            'beem_requests_total{model="tiny-sentiment",policy="beem-a",route="/v1/classify",status="500"} 1.0'
            in metrics
        )


def test_a_fault_outside_a_step_stops_the_engine_and_says_so(
    tiny_bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the loop's own bookkeeping fails, the engine's state is not trusted: the rows in flight get 500 at once
    (not a 504 at their timeout), and the server refuses new work with 503 and a reason instead of queueing it."""
    for client in ready_client(ServerSettings(bundle=tiny_bundle_dir)):
        engine = client.app.state.models.default_for("classification").active.engine  # type: ignore[attr-defined]

        def broken_record(rows_left: int, busy_s: float) -> None:
            raise RuntimeError("injected bookkeeping fault")

        monkeypatch.setattr(engine.drain, "record", broken_record)
        failed = client.post("/v1/classify", json={"inputs": ["one", "two"], "policy": {"name": "full"}})
        assert failed.status_code == 500
        assert "injected bookkeeping fault" in failed.json()["error"]
        refused = client.post("/v1/classify", json={"inputs": "one"})
        assert refused.status_code == 503
        assert "engine loop failed" in refused.json()["error"]
        assert "injected bookkeeping fault" in refused.json()["error"]
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "injected bookkeeping fault" in ready.text
        metrics = client.get("/metrics").text
        assert ERROR_ROWS in metrics
