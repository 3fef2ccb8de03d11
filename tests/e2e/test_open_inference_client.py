"""The Open Inference Protocol (KServe v2) against a real `beem serve` process over a model store with a classifier
and a captioner, talked to with the real Triton client, `tritonclient.http` (binary tensor data, its default, and
JSON) and its asyncio form: health, metadata, one text, a batch, a chosen policy, probabilities, an image, an
unknown model, a wrong datatype, a server that is not ready."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from tests.api.test_caption_api import encoded, scene
from tests.e2e.test_real_server import TEXTS, ServerProcess
from tests.model_store_builders import model_store, unbuildable_bundle

CLASSIFIER, CAPTIONER = "tiny-sentiment", "tiny-captioner"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_bundle_dir: Path, tiny_caption_bundle_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("open_inference") / "store"
    return model_store(root, {CLASSIFIER: tiny_bundle_dir, CAPTIONER: tiny_caption_bundle_dir})


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[ServerProcess]:
    running = ServerProcess(None, "--model-store", str(store), "--default-model", CLASSIFIER,
                            "--max-batch-wait-ms", "20", "--torch-threads", "1")  # fmt: skip
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60)
    yield connection
    connection.close()


def _texts(texts: list[str], binary: bool = True, name: str = "text") -> triton.InferInput:
    tensor = triton.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary_data=binary)
    return tensor


def _labels(result: triton.InferResult) -> list[str]:
    """The client returns BYTES as bytes when they came binary, as str when they came as JSON."""
    return [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")]


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(CLASSIFIER) and client.is_model_ready(CAPTIONER, "1")
    server = client.get_server_metadata()
    assert server["name"] == "beem-serve" and "binary_tensor_data" in server["extensions"]
    metadata = client.get_model_metadata(CLASSIFIER)
    assert metadata["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("text", "BYTES", [-1]), ("text_pair", "BYTES", [-1])]  # fmt: skip
    assert {t["name"]: (t["datatype"], t["shape"]) for t in metadata["outputs"]} == {
        "label": ("BYTES", [-1]), "score": ("FP32", [-1]), "exit_layer": ("INT32", [-1]),
        "probabilities": ("FP32", [-1, 2])}  # fmt: skip
    assert client.get_model_metadata(CAPTIONER, "1")["inputs"] == [{"name": "image", "datatype": "BYTES",
                                                                     "shape": [-1]}]  # fmt: skip


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_one_text_and_a_batch_answer_as_v1_classify(
    client: triton.InferenceServerClient, server: ServerProcess, binary: bool
) -> None:
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("label", "score", "exit_layer")]
    one = client.infer(CLASSIFIER, [_texts(TEXTS[:1], binary)], outputs=outputs, request_id="first")
    assert one.get_response()["id"] == "first" and one.get_response()["model_version"] == "1"
    batch = client.infer(CLASSIFIER, [_texts(TEXTS, binary)], outputs=outputs)
    expected = httpx.post(f"{server.url}/v1/classify", json={"inputs": TEXTS}, timeout=30).json()["results"]
    assert _labels(batch) == [r["label"] for r in expected] and _labels(one) == [expected[0]["label"]]
    assert batch.as_numpy("exit_layer").tolist() == [r["exit_layer"] for r in expected]
    assert batch.as_numpy("exit_layer").dtype == np.int32 and batch.as_numpy("score").dtype == np.float32
    assert batch.as_numpy("score") == pytest.approx([r["score"] for r in expected], abs=1e-6)


def test_a_chosen_policy_with_its_parameters_and_probabilities(client: triton.InferenceServerClient) -> None:
    static = client.infer(CLASSIFIER, [_texts(TEXTS)], parameters={"policy": "static", "layer": 2})
    assert static.as_numpy("exit_layer").tolist() == [2] * len(TEXTS)
    asked = [triton.InferRequestedOutput("probabilities"), triton.InferRequestedOutput("label")]
    full = client.infer(CLASSIFIER, [_texts(TEXTS)], outputs=asked, parameters={"policy": "full"})
    probabilities = full.as_numpy("probabilities")
    assert probabilities.shape == (len(TEXTS), 2) and probabilities.sum(axis=1) == pytest.approx(1.0, abs=1e-5)
    assert full.as_numpy("score") is None  # only what was asked
    capped = client.infer(CLASSIFIER, [_texts(TEXTS)], parameters={"policy": "full", "max_layers": 1})
    assert capped.as_numpy("exit_layer").tolist() == [1] * len(TEXTS)


def test_an_image_is_captioned(client: triton.InferenceServerClient, server: ServerProcess) -> None:
    png = encoded(scene(1))
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([png], dtype=np.object_))
    result = client.infer(CAPTIONER, [image], parameters={"policy": "full"})
    expected = httpx.post(f"{server.url}/v1/caption", files={"image": ("scene.png", png, "image/png")},
                          data={"policy": json.dumps({"name": "full"})}, timeout=60).json()  # fmt: skip
    assert result.as_numpy("text_output")[0].decode() == expected["caption"]
    assert result.as_numpy("num_tokens")[0] == len(expected["tokens"])


def test_bad_requests_get_the_protocols_error_and_the_server_keeps_serving(
    client: triton.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no-such-model", [_texts(TEXTS[:1])])
    assert unknown.value.status() == "404" and "not served" in unknown.value.message()
    with pytest.raises(InferenceServerException) as wrong_type:
        numbers = triton.InferInput("text", [2], "INT32")
        numbers.set_data_from_numpy(np.array([1, 2], dtype=np.int32))
        client.infer(CLASSIFIER, [numbers])
    assert wrong_type.value.status() == "400" and "BYTES" in wrong_type.value.message()
    with pytest.raises(InferenceServerException) as wrong_parameter:
        client.infer(CLASSIFIER, [_texts(TEXTS[:1])], parameters={"policy": "beem-a", "alpha": -1.0})
    assert wrong_parameter.value.status() == "400" and "alpha" in wrong_parameter.value.message()
    with pytest.raises(InferenceServerException) as foreign_parameter:
        client.infer(CLASSIFIER, [_texts(TEXTS[:1])], parameters={"policy": "beem-a", "layer": 2})
    assert foreign_parameter.value.status() == "400" and "layer" in foreign_parameter.value.message()
    with pytest.raises(InferenceServerException) as wrong_version:
        client.get_model_metadata(CLASSIFIER, "9")
    assert wrong_version.value.status() == "404"
    assert _labels(client.infer(CLASSIFIER, [_texts(TEXTS[:1])]))  # still serving


def test_the_asyncio_client_runs_requests_concurrently(server: ServerProcess) -> None:
    async def run() -> list[list[str]]:
        client = triton_aio.InferenceServerClient(url=server.url.removeprefix("http://"))
        try:
            assert await client.is_server_ready()
            results = await asyncio.gather(*(client.infer(CLASSIFIER, [_texts([text])]) for text in TEXTS * 3))
            return [_labels(result) for result in results]
        finally:
            await client.close()

    labels = asyncio.run(run())
    assert labels[: len(TEXTS)] == labels[len(TEXTS) : 2 * len(TEXTS)]  # the same text, the same answer


def test_a_server_that_is_not_ready_says_so(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    """A bundle whose model cannot be built never becomes ready: live, not ready, and infer gets a 503."""
    running = ServerProcess(unbuildable_bundle(tiny_bundle_dir, tmp_path / "broken"))
    try:
        client = triton.InferenceServerClient(url=running.url.removeprefix("http://"))
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.is_server_live():
                    break
            except Exception:  # not listening yet
                assert time.monotonic() < deadline, "the server should start listening"
                time.sleep(0.1)
        assert not client.is_server_ready() and not client.is_model_ready(CLASSIFIER)
        with pytest.raises(InferenceServerException) as refused:
            client.infer(CLASSIFIER, [_texts(TEXTS[:1])])
        assert refused.value.status() == "503"
    finally:
        running.stop()
