"""The Hugging Face client written for TEI, `huggingface_hub.InferenceClient(model=URL).text_classification`,
against a real `beem serve` process: what a user of TEI would run, unchanged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from tests.e2e.test_real_server import TEXTS, ServerProcess
from tests.model_store_builders import unbuildable_bundle

KEY = "s3cret"


@pytest.fixture(scope="module")
def guarded_server(tiny_bundle_dir: Path) -> Iterator[ServerProcess]:
    """Served with an API key (BEEM_API_KEY, as a deployment sets it)."""
    running = ServerProcess(tiny_bundle_dir, "--max-batch-wait-ms", "20", env={"BEEM_API_KEY": KEY})
    running.wait_ready()
    yield running
    running.stop()


def _predict(server: ServerProcess, text: str) -> list[dict[str, object]]:
    response = httpx.post(f"{server.url}/predict", json={"inputs": text}, headers={"authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    answer: list[dict[str, object]] = response.json()
    return answer


def test_text_classification_on_one_text_returns_every_label(guarded_server: ServerProcess) -> None:
    client = InferenceClient(model=guarded_server.url, api_key=KEY)
    got = client.text_classification(TEXTS[0])
    assert [(e.label, pytest.approx(e.score)) for e in got] == [
        (p["label"], p["score"]) for p in _predict(guarded_server, TEXTS[0])
    ]
    (best,) = client.text_classification(TEXTS[0], top_k=1)
    assert best.label == got[0].label


def test_text_classification_on_several_texts_at_once(guarded_server: ServerProcess) -> None:
    """Concurrent calls are batched by the server and each gets its own text's answer."""

    async def classify_all() -> list[list[object]]:
        client = AsyncInferenceClient(model=guarded_server.url, api_key=KEY)
        return await asyncio.gather(*(client.text_classification(text) for text in TEXTS * 3))  # type: ignore[arg-type]

    answers = asyncio.run(classify_all())
    for text, answer in zip(TEXTS * 3, answers, strict=True):
        assert [e.label for e in answer] == [p["label"] for p in _predict(guarded_server, text)]  # type: ignore[attr-defined]


def test_a_wrong_api_key_is_refused_with_401(guarded_server: ServerProcess) -> None:
    with pytest.raises(HfHubHTTPError) as refused:
        InferenceClient(model=guarded_server.url, api_key="wrong").text_classification(TEXTS[0])
    assert refused.value.response.status_code == 401
    assert httpx.get(f"{guarded_server.url}/health").status_code == 200  # health stays open, as TEI's


def test_a_server_that_is_not_ready_answers_503(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    """A bundle whose model cannot be built (its exit heads' width changed after export) never becomes ready:
    the client gets a 503 with the reason, as from a TEI whose backend is unhealthy."""
    running = ServerProcess(unbuildable_bundle(tiny_bundle_dir, tmp_path / "broken"))
    try:
        deadline = time.monotonic() + 60
        while not _readyz_error(running):  # the load has failed: the server will never be ready
            assert time.monotonic() < deadline, "the broken bundle should fail to load"
            time.sleep(0.1)
        with pytest.raises(HfHubHTTPError) as refused:
            InferenceClient(model=running.url, api_key="any").text_classification(TEXTS[0])
        assert refused.value.response.status_code == 503
        assert httpx.get(f"{running.url}/health").status_code == 503
    finally:
        running.stop()


def _readyz_error(server: ServerProcess) -> str:
    try:
        return str(httpx.get(f"{server.url}/readyz", timeout=1).json().get("error") or "")
    except httpx.TransportError:
        return ""
