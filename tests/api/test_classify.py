"""POST /v1/classify and POST /predict through the real app and engine, on every engine path: the host path
(the CPU's default), the device path (CUDA's default; here on the CPU, every step eager) and the compiled path (the
host path with torch.compile'd layers and heads)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.settings import ServerSettings
from tests.api.conftest import ready_client

TEXTS = ["a gorgeous, moving film", "dull and far too long", "the plot never comes together"]


@pytest.fixture(scope="module", params=["host", "device", "compiled"])
def client(request: pytest.FixtureRequest, tiny_bundle_dir: Path) -> Iterator[TestClient]:
    yield from ready_client(ServerSettings(bundle=tiny_bundle_dir, max_inputs_per_request=8, max_body_bytes=4096,
                                           max_input_tokens=16, engine_path=request.param))  # fmt: skip


def test_single_text_gets_label_score_and_exit_layer(client: TestClient) -> None:
    response = client.post("/v1/classify", json={"inputs": TEXTS[0]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny-sentiment:1"
    (result,) = body["results"]
    assert result["label"] in ("negative", "positive")
    assert 0.5 <= result["score"] <= 1.0
    assert 1 <= result["exit_layer"] <= result["num_layers"] == 3
    assert result["policy"] == "beem-a"  # the bundle's default
    assert result["exits"] is None
    assert body["mean_exit_layer"] == result["exit_layer"]


def test_batch_and_pairs_keep_their_order(client: TestClient) -> None:
    singles = client.post("/v1/classify", json={"inputs": TEXTS, "policy": {"name": "full"}}).json()["results"]
    assert [r["exit_layer"] for r in singles] == [3, 3, 3]
    for text, result in zip(TEXTS, singles, strict=True):
        alone = client.post("/v1/classify", json={"inputs": text, "policy": {"name": "full"}}).json()["results"][0]
        assert alone["label"] == result["label"]
        assert alone["score"] == pytest.approx(result["score"], abs=1e-5)
    pairs = client.post("/v1/classify", json={"inputs": [["premise here", "a hypothesis"]]})
    assert pairs.status_code == 200 and len(pairs.json()["results"]) == 1


@pytest.mark.parametrize(
    ("policy", "expected_layers"),
    [
        ({"name": "static", "layer": 2}, {2}),
        ({"name": "full"}, {3}),
        ({"name": "beem-a", "alpha": 0.0}, {1}),  # any score reaches 0
        ({"name": "max-prob", "threshold": 0.0}, {1}),
        ({"name": "entropy", "threshold": 10.0}, {1}),  # every entropy is below 10 nats
        ({"name": "patience", "patience": 0}, {1}),
        ({"name": "beem-c", "alpha": 1e9}, {3}),  # unreachable: full depth
    ],
)
def test_per_request_policy_parameters_need_no_reload(
    client: TestClient, policy: dict[str, object], expected_layers: set[int]
) -> None:
    body = client.post("/v1/classify", json={"inputs": TEXTS, "policy": policy}).json()
    assert {r["exit_layer"] for r in body["results"]} == expected_layers
    assert {r["policy"] for r in body["results"]} == {policy["name"]}


def test_max_layers_caps_every_sample(client: TestClient) -> None:
    body = client.post("/v1/classify", json={"inputs": TEXTS, "policy": {"name": "full"}, "max_layers": 2}).json()
    assert {r["exit_layer"] for r in body["results"]} == {2}


def test_return_exits_lists_every_computed_exit(client: TestClient) -> None:
    body = client.post(
        "/v1/classify", json={"inputs": TEXTS[1], "policy": {"name": "static", "layer": 2}, "return_exits": True}
    ).json()
    (result,) = body["results"]
    assert [e["layer"] for e in result["exits"]] == [1, 2]
    assert result["exits"][-1]["label"] == result["label"]
    assert result["exits"][-1]["confidence"] == pytest.approx(result["score"])


def test_predict_speaks_text_embeddings_inference(client: TestClient) -> None:
    single = client.post("/predict", json={"inputs": TEXTS[0]})
    assert single.status_code == 200, single.text
    ranked = single.json()
    assert {p["label"] for p in ranked} == {"negative", "positive"}
    assert ranked[0]["score"] >= ranked[1]["score"]
    assert sum(p["score"] for p in ranked) == pytest.approx(1.0, abs=1e-5)

    batch = client.post("/predict", json={"inputs": [[TEXTS[0]], [TEXTS[1], "a pair"]], "raw_scores": True})
    assert batch.status_code == 200
    assert len(batch.json()) == 2 and all(len(row) == 2 for row in batch.json())

    pair = client.post("/predict", json={"inputs": ["premise", "hypothesis"]})  # TEI: two strings = one pair
    assert pair.status_code == 200 and isinstance(pair.json()[0], dict)


def test_models_and_metrics(client: TestClient) -> None:
    model = client.get("/v1/models").json()["data"][0]
    assert model["id"] == "tiny-sentiment:1" and model["num_layers"] == 3
    assert "beem-a" in model["policies"] and "alpha" in model["policies"]["beem-a"]["params"]
    client.post("/v1/classify", json={"inputs": TEXTS, "policy": {"name": "static", "layer": 2}})
    metrics = client.get("/metrics").text
    tiny = 'model="tiny-sentiment"'
    assert f'beem_exit_layer_bucket{{le="2.0",{tiny},policy="static",task="classification",version="1"}}' in metrics
    assert f'beem_requests_total{{{tiny},policy="static",route="/v1/classify",status="200"}}' in metrics
    for name in ("beem_layers_computed_total", "beem_layers_possible_total", "beem_batch_size_bucket",
                 "beem_queue_depth", "beem_queue_wait_seconds_bucket", "beem_request_duration_seconds_bucket",
                 f'beem_model_info{{{tiny},name="tiny-sentiment",task="classification",version="1"}} 1.0'):  # fmt: skip
        assert name in metrics, name
    eager_steps = re.search(r'^beem_device_steps_total\{model="tiny-sentiment",run="eager",version="1"\} (\S+)$',
                            metrics, re.MULTILINE)  # fmt: skip
    device_steps = eager_steps is not None and float(eager_steps.group(1)) > 0
    assert device_steps == (client.app.state.settings.engine_path == "device")  # type: ignore[attr-defined]
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/docs").status_code == 200


def test_info_names_the_engine_path_and_what_the_compiled_one_did(client: TestClient) -> None:
    early_exit = client.get("/info").json()["early_exit"]
    engine_path = client.app.state.settings.engine_path  # type: ignore[attr-defined]
    assert early_exit["engine_path"] == engine_path
    if engine_path == "compiled":
        assert early_exit["engine_path_detail"].startswith("compiled with torch.compile in ")
    else:
        assert early_exit["engine_path_detail"] is None
