"""The Open Inference Protocol's routes through the real app and engines (tests/e2e/test_open_inference_client.py
talks to a real server with tritonclient): over a store with a classifier and a captioner, the request shapes
and refusals a client library does not make, the metrics label and the API key."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.settings import ServerSettings
from tests.api.conftest import ready_client
from tests.api.test_caption_api import encoded, scene
from tests.model_store_builders import model_store

KEY = "open-inference-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, tiny_bundle_dir: Path,
           tiny_caption_bundle_dir: Path) -> Iterator[TestClient]:  # fmt: skip
    bundles = {"tiny-sentiment": tiny_bundle_dir, "tiny-captioner": tiny_caption_bundle_dir}
    store = model_store(tmp_path_factory.mktemp("v2") / "store", bundles)
    yield from ready_client(ServerSettings(model_store=store, default_model="tiny-sentiment", poll_interval_s=0,
                                           api_key=KEY, max_inputs_per_request=4))  # fmt: skip


def _infer(client: TestClient, model: str, body: dict[str, object], **headers: str) -> tuple[int, dict]:
    response = client.post(f"/v2/models/{model}/infer", content=json.dumps(body), headers={**AUTH, **headers})
    return response.status_code, response.json()


def _texts(*texts: str, name: str = "text") -> dict[str, object]:
    return {"name": name, "shape": [len(texts)], "datatype": "BYTES", "data": list(texts)}


def test_health_is_open_and_the_rest_needs_the_key(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert client.get("/v2/models/tiny-sentiment").status_code == 401
    assert client.post("/v2/models/tiny-sentiment/infer", json={"inputs": [_texts("hi")]}).status_code == 401
    assert client.get("/v2/models/tiny-sentiment/versions/1/ready", headers=AUTH).json() == {
        "name": "tiny-sentiment", "ready": True}  # fmt: skip


def test_json_in_json_out_with_pairs_and_the_versioned_path(client: TestClient) -> None:
    body = {"id": "q", "inputs": [_texts("good", "bad"), _texts("fine", "awful", name="text_pair")],
            "outputs": [{"name": "label"}, {"name": "exit_layer"}]}  # fmt: skip
    response = client.post("/v2/models/tiny-sentiment/versions/1/infer", content=json.dumps(body), headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer["model_name"] == "tiny-sentiment" and answer["model_version"] == "1" and answer["id"] == "q"
    assert [o["name"] for o in answer["outputs"]] == ["label", "exit_layer"]
    assert answer["outputs"][0]["shape"] == [2] and set(answer["outputs"][0]["data"]) <= {"negative", "positive"}


def test_a_caption_from_base64_json(client: TestClient) -> None:
    image = base64.b64encode(encoded(scene(2))).decode()
    status, answer = _infer(client, "tiny-captioner", {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                                                   "data": [image]}]})  # fmt: skip
    assert status == 200, answer
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert isinstance(outputs["text_output"]["data"][0], str) and outputs["num_tokens"]["datatype"] == "INT32"


REFUSED = [
    ("tiny-sentiment", {"inputs": [_texts("a"), _texts("b", "c", name="text_pair")]}, 400, "'text_pair' has 2"),
    ("tiny-sentiment", {"inputs": [_texts("a", name="texts")]}, 400, "reads text, text_pair"),
    ("tiny-sentiment", {"inputs": [_texts("a", name="text_pair")]}, 400, "'text' is missing"),
    ("tiny-sentiment", {"inputs": [_texts()]}, 400, "'text' is empty"),
    ("tiny-sentiment", {"inputs": [_texts("a")], "outputs": [{"name": "logits"}]}, 400, "this model has"),
    ("tiny-sentiment", {"inputs": [_texts("a")], "parameters": {"policy": "nope"}}, 400, "unknown|nope"),
    ("tiny-sentiment", {"inputs": [_texts("a")], "parameters": {"max_layers": 0}}, 400, "max_layers"),
    ("tiny-sentiment", {"inputs": [_texts("a")], "parameters": {"truncate": "yes"}}, 400, "truncate"),
    ("tiny-sentiment", {"inputs": [_texts(*"abcde")]}, 413, "the limit is 4"),
    ("tiny-sentiment", {"inputs": [_texts("word " * 400)]}, 422, "tokens"),
    ("tiny-captioner", {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%"]}]}, 422,
     "base64"),
    ("tiny-captioner", {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                    "data": [base64.b64encode(b"not an image").decode()]}]}, 415, "image"),
    ("tiny-captioner", {"inputs": [{"name": "image", "shape": [5], "datatype": "BYTES", "data": ["a"] * 5}]}, 413,
     "the limit is 4"),
    ("nobody", {"inputs": [_texts("a")]}, 404, "not served"),
]  # fmt: skip


@pytest.mark.parametrize(("model", "body", "status", "says"), REFUSED)
def test_refusals_say_what_was_wrong_in_the_protocols_error_object(
    client: TestClient, model: str, body: dict[str, object], status: int, says: str
) -> None:
    got, answer = _infer(client, model, body)
    assert got == status, answer
    assert re.search(says, answer["error"]), answer


def test_text_that_is_not_utf8_and_a_compressed_body_are_refused(client: TestClient) -> None:
    header = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 6}}]}).encode()  # fmt: skip
    body = header + b"\x02\x00\x00\x00\xff\xfe"
    response = client.post("/v2/models/tiny-sentiment/infer", content=body,
                           headers={**AUTH, "Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert response.status_code == 400 and "not UTF-8" in response.json()["error"]
    gzipped = client.post("/v2/models/tiny-sentiment/infer", content=b"\x1f\x8b",
                          headers={**AUTH, "Content-Encoding": "gzip"})  # fmt: skip
    assert gzipped.status_code == 415


def test_every_models_infer_is_counted_under_one_route_label(client: TestClient) -> None:
    assert _infer(client, "tiny-sentiment", {"inputs": [_texts("a")], "parameters": {"policy": "full"}})[0] == 200
    metrics = client.get("/metrics").text
    assert ('beem_requests_total{model="tiny-sentiment",policy="full",route="/v2/models/{name}/infer",'
            'status="200"}') in metrics  # fmt: skip
    assert 'route="/v2/models/tiny-sentiment/infer"' not in metrics
