"""A real `beem serve` process on the tiny caption bundle, talked to over HTTP: concurrent uploads share
token steps and get the answers they would get alone; a damaged upload is a 4xx, not a crash; a caption server
has no classification routes."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from beem.captioning.scene_generator import random_scene, read_idx, render
from tests.e2e.test_real_server import ServerProcess

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# static/2 gives every token a depth that no other policy here gives: a row answered under another row's policy
# shows up in its exit layers, even when the tiny model's tokens do not depend on the image.
POLICIES: list[dict[str, Any]] = [
    {"name": "beem-a"},
    {"name": "full"},
    {"name": "max-prob"},
    {"name": "static", "layer": 2},
]
CONCURRENT = 12
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def manifest(tiny_caption_bundle_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((tiny_caption_bundle_dir / "manifest.json").read_text())
    assert loaded["task"] == "caption"
    return loaded


@pytest.fixture(scope="module")
def caption_server(tiny_caption_bundle_dir: Path) -> Iterator[ServerProcess]:
    """One server for the module (starting one costs seconds); batch wait set through the environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BEEM_MAX_BATCH_WAIT_MS", "50")
        running = ServerProcess(tiny_caption_bundle_dir, "--torch-threads", "1")  # steady on a busy 2-core box
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def scene_images(fake_fashion_mnist_dir: Path) -> list[bytes]:
    """Six different PNG / JPEG files: four rendered scenes (like the training data), a flat colour, noise."""
    pictures = read_idx(fake_fashion_mnist_dir / "train-images-idx3-ubyte.gz")
    rng = np.random.default_rng(3)
    images = []
    for _ in range(4):
        items = random_scene(rng)
        images.append(render(items, [pictures[int(rng.integers(len(pictures)))] for _ in items]))
    images.append(Image.new("RGB", (112, 112), (200, 30, 30)))
    images.append(Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)))
    files = []
    for index, image in enumerate(images):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG" if index == 3 else "PNG")
        files.append(buffer.getvalue())
    assert len(set(files)) == len(files)
    return files


def _request_kwargs(image: bytes, policy: dict[str, Any] | None, as_json: bool) -> dict[str, Any]:
    if as_json:
        body: dict[str, Any] = {"image": base64.b64encode(image).decode("ascii")}
        if policy is not None:
            body["policy"] = policy
        return {"json": body}
    data = {"policy": json.dumps(policy)} if policy is not None else None
    return {"files": {"image": ("upload.bin", image, "application/octet-stream")}, "data": data}


def _samples(metrics_text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
    }


def _value(samples: Samples, metric: str, /, **labels: str) -> float:
    """The value of the sample whose labels are `labels` plus the server's one model and version; 0 for a labelled
    series that has not been created yet."""
    served = {("model", "tiny-captioner"), ("version", "1")}
    wanted = set(labels.items())
    matching = [value for (name, have), value in samples.items() if name == metric and set(have) - wanted <= served
                and wanted <= set(have)]  # fmt: skip
    assert len(matching) <= 1, (metric, labels, matching)
    return matching[0] if matching else 0.0


def _scrape(server: ServerProcess) -> Samples:
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    return _samples(response.text)


def _answer(response: httpx.Response) -> tuple[str, list[str], list[int]]:
    body = response.json()
    return body["caption"], body["tokens"], body["token_exit_layers"]


def _check_caption_body(body: dict[str, Any], manifest: dict[str, Any], policy: dict[str, Any] | None) -> None:
    num_layers = int(manifest["num_layers"])
    assert set(body) == {"model", "caption", "tokens", "token_exit_layers", "mean_exit_layer", "num_layers", "policy"}
    assert body["model"] == f"{manifest['name']}:{manifest['version']}"
    assert body["num_layers"] == num_layers
    assert body["policy"] == (policy["name"] if policy is not None else manifest["default_policy"])
    layers = body["token_exit_layers"]
    assert 1 <= len(layers) == len(body["tokens"]) <= int(manifest["max_length"])
    assert all(1 <= layer <= num_layers for layer in layers), layers
    assert body["mean_exit_layer"] == pytest.approx(sum(layers) / len(layers))
    assert isinstance(body["caption"], str)


def test_concurrent_uploads_share_batches_and_match_their_solo_answers(
    caption_server: ServerProcess, manifest: dict[str, Any], scene_images: list[bytes]
) -> None:
    num_layers = int(manifest["num_layers"])
    # Request i: image i % 6, policy i % 4 (all 12 pairs differ); every third one as base64 JSON, the rest multipart.
    plan = [(scene_images[i % len(scene_images)], POLICIES[i % len(POLICIES)], i % 3 == 0) for i in range(CONCURRENT)]
    before = _scrape(caption_server)

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=caption_server.url, timeout=60) as client:
            return await asyncio.gather(*(
                client.post("/v1/caption", **_request_kwargs(image, policy, as_json)) for image, policy, as_json in plan
            ))  # fmt: skip

    together = asyncio.run(fire())
    assert [r.status_code for r in together] == [200] * CONCURRENT, [r.text for r in together]
    during = _scrape(caption_server)

    for response, (_, policy, _) in zip(together, plan, strict=True):
        body = response.json()
        _check_caption_body(body, manifest, policy)
        if policy["name"] == "full":
            assert body["token_exit_layers"] == [num_layers] * len(body["tokens"])
        if policy["name"] == "static":
            assert body["token_exit_layers"] == [policy["layer"]] * len(body["tokens"])

    # Batching: the 12 rows ran in fewer than 12 batches, at least one of them with more than one row.
    batches = _value(during, "beem_batch_size_count") - _value(before, "beem_batch_size_count")
    rows = _value(during, "beem_batch_size_sum") - _value(before, "beem_batch_size_sum")
    single_row_batches = _value(during, "beem_batch_size_bucket", le="1.0") - _value(
        before, "beem_batch_size_bucket", le="1.0"
    )
    assert rows == CONCURRENT
    assert single_row_batches < batches < CONCURRENT, (single_row_batches, batches)

    # Every generated token is one caption exit, counted under its own policy, and its layers are the compute.
    all_layers = [layer for r in together for layer in r.json()["token_exit_layers"]]
    for policy in {p["name"] for p in POLICIES}:
        layers = [layer for r in together if r.json()["policy"] == policy for layer in r.json()["token_exit_layers"]]
        labels = {"policy": policy, "task": "caption"}
        count = _value(during, "beem_exit_layer_count", **labels) - _value(before, "beem_exit_layer_count", **labels)
        total = _value(during, "beem_exit_layer_sum", **labels) - _value(before, "beem_exit_layer_sum", **labels)
        assert (count, total) == (len(layers), sum(layers)), policy
    full_at_top = _value(during, "beem_exit_layer_bucket", le=f"{num_layers - 1}.0", policy="full", task="caption")
    assert full_at_top == 0  # no full-depth token ever left early
    computed = _value(during, "beem_layers_computed_total", task="caption") - _value(
        before, "beem_layers_computed_total", task="caption"
    )
    assert computed == sum(all_layers)
    info = {"name": manifest["name"], "task": "caption", "version": str(manifest["version"])}
    assert _value(during, "beem_model_info", **info) == 1.0
    assert _value(during, "beem_requests_total", route="/v1/caption", policy="full", status="200") >= 3

    # Alone, one at a time, each request gets exactly the answer it got inside a shared batch.
    with httpx.Client(base_url=caption_server.url, timeout=60) as client:
        for response, (image, policy, as_json) in zip(together, plan, strict=True):
            _wait_until_idle(client)
            alone = client.post("/v1/caption", **_request_kwargs(image, policy, as_json))
            assert alone.status_code == 200, alone.text
            assert _answer(alone) == _answer(response), policy
    after = _scrape(caption_server)
    # ...and sequential requests never share a batch.
    assert _value(after, "beem_batch_size_count") - _value(during, "beem_batch_size_count") == CONCURRENT
    assert _value(after, "beem_batch_size_sum") - _value(during, "beem_batch_size_sum") == CONCURRENT
    # A lone row waits the whole BEEM_MAX_BATCH_WAIT_MS (50 ms) for company before its batch starts.
    waits = _value(after, "beem_queue_wait_seconds_count") - _value(during, "beem_queue_wait_seconds_count")
    short_waits = _value(after, "beem_queue_wait_seconds_bucket", le="0.03") - _value(
        during, "beem_queue_wait_seconds_bucket", le="0.03"
    )
    assert (waits, short_waits) == (CONCURRENT, 0)


def _wait_until_idle(client: httpx.Client) -> None:
    """Until the engine holds no row. The client has its answer when the row's last token leaves, a moment
    before the engine's step is over; a request sent in that moment joins a busy engine, which takes it at once
    (by design), and would not be the lone row this test means."""
    deadline = time.monotonic() + 10
    while client.get("/readyz").json()["inflight_rows"]:
        assert time.monotonic() < deadline, "the engine did not go idle"
        time.sleep(0.005)


def _truncated_png(image: bytes) -> bytes:
    assert image.startswith(PNG_SIGNATURE)
    return image[: len(image) // 2]


@pytest.mark.parametrize(
    ("name", "as_json"),
    [("signature-then-garbage", False), ("signature-then-garbage", True), ("truncated", False)],
)
def test_a_damaged_upload_is_a_client_error_and_the_server_keeps_answering(
    caption_server: ServerProcess, manifest: dict[str, Any], scene_images: list[bytes], name: str, as_json: bool
) -> None:
    good = scene_images[0]
    damaged = {
        "signature-then-garbage": PNG_SIGNATURE + np.random.default_rng(5).bytes(400),
        "truncated": _truncated_png(good),
    }[name]
    with httpx.Client(base_url=caption_server.url, timeout=60) as client:
        reference = client.post("/v1/caption", **_request_kwargs(good, None, as_json=False))
        assert reference.status_code == 200, reference.text
        _check_caption_body(reference.json(), manifest, None)

        before = _scrape(caption_server)
        response = client.post("/v1/caption", **_request_kwargs(damaged, {"name": "full"}, as_json))
        assert 400 <= response.status_code < 500, response.text
        assert response.status_code in (415, 422)  # an image that is not PNG/JPEG, or a damaged one
        assert response.headers["content-type"].startswith("application/json")
        error = response.json()
        assert isinstance(error["error"], str) and error["error"].startswith("image:"), error
        assert error["error_type"] in ("unsupported_media_type", "validation")
        after = _scrape(caption_server)
        # Refused before the engine: no batch ran for it.
        assert _value(after, "beem_batch_size_count") == _value(before, "beem_batch_size_count")
        assert (
            _value(after, "beem_requests_total", route="/v1/caption", policy="full", status=str(response.status_code))
            - _value(
                before, "beem_requests_total", route="/v1/caption", policy="full", status=str(response.status_code)
            )
            == 1
        )

        again = client.post("/v1/caption", **_request_kwargs(good, None, as_json=True))
        assert again.status_code == 200, again.text
        assert _answer(again) == _answer(reference)
    assert caption_server.process.poll() is None
    assert not any(
        key[0] == "beem_requests_total" and dict(key[1]).get("status", "").startswith("5") and value > 0
        for key, value in _scrape(caption_server).items()
    )


def test_a_caption_server_has_no_classification_routes(caption_server: ServerProcess) -> None:
    with httpx.Client(base_url=caption_server.url, timeout=30) as client:
        for path, body in (("/v1/classify", {"inputs": "a red dress"}), ("/predict", {"inputs": "a red dress"})):
            response = client.post(path, json=body)
            assert response.status_code == 404, (path, response.text)
            assert response.headers["content-type"].startswith("application/json")
            assert "error" in response.json()
        models = client.get("/v1/models")
        assert models.status_code == 200
        assert models.json()["data"][0]["task"] == "caption"
