"""text-embeddings-inference's routes and shapes (service/routes/predict.py, tokenize.py, tei_info.py), through
the real app over the tiny bundle."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.classification import ReadyClassifier
from service.settings import ServerSettings

TEXT = "a gorgeous, moving film"
TEI_HEADERS = ("x-compute-time", "x-compute-characters", "x-compute-tokens", "x-total-time", "x-tokenization-time",
               "x-queue-time", "x-inference-time")  # fmt: skip


INPUTS = [TEXT, [TEXT, "and its pair"], [[TEXT], ["dull and far too long", "a pair"]]]


@pytest.mark.parametrize("path", ["/", "/invocations"])
@pytest.mark.parametrize("inputs", INPUTS, ids=["one", "pair", "batch"])
def test_post_root_and_invocations_answer_as_predict(client: TestClient, path: str, inputs: object) -> None:
    expected = client.post("/predict", json={"inputs": inputs})
    got = client.post(path, json={"inputs": inputs})
    assert expected.status_code == got.status_code == 200, got.text
    assert _labels(got.json()) == _labels(expected.json())


def _labels(answer: list) -> list:  # type: ignore[type-arg]
    return [_labels(item) for item in answer] if isinstance(answer[0], list) else [p["label"] for p in answer]


def test_predict_answers_every_label_highest_first_with_teis_headers(client: TestClient) -> None:
    response = client.post("/predict", json={"inputs": TEXT})
    assert response.status_code == 200
    answer = response.json()
    assert sorted(p["label"] for p in answer) == ["negative", "positive"]
    assert answer[0]["score"] >= answer[1]["score"] and math.isclose(sum(p["score"] for p in answer), 1, rel_tol=1e-5)
    for header in TEI_HEADERS:
        assert response.headers[header].isdigit(), header  # whole milliseconds or counts, as TEI sends them
    assert int(response.headers["x-compute-characters"]) == len(TEXT)
    assert int(response.headers["x-compute-tokens"]) >= 5
    assert 1 <= int(response.headers["x-exit-layer"]) <= 3
    assert response.headers["x-exit-policy"] == "beem-a"
    assert response.headers["x-compute-type"] == "cpu"  # the device it ran on


def test_a_batch_reports_its_mean_exit_layer_and_summed_counts(client: TestClient) -> None:
    texts = [TEXT, "dull and far too long"]
    response = client.post("/predict", json={"inputs": [[t] for t in texts]})
    assert response.status_code == 200
    assert len(response.json()) == 2
    assert int(response.headers["x-compute-characters"]) == sum(len(t) for t in texts)
    assert 1.0 <= float(response.headers["x-mean-exit-layer"]) <= 3.0
    assert "x-exit-layer" not in response.headers


def test_inference_api_parameters_give_the_nested_answer_with_top_k(client: TestClient) -> None:
    """What huggingface_hub's InferenceClient sends; a TEI request (no `parameters`) keeps TEI's flat answer."""
    flat = client.post("/", json={"inputs": TEXT}).json()
    nested = client.post("/", json={"inputs": TEXT, "parameters": {}}).json()
    assert nested == [flat]
    top = client.post("/", json={"inputs": TEXT, "parameters": {"top_k": 1}}).json()
    assert top == [flat[:1]]
    raw = client.post("/predict", json={"inputs": TEXT, "raw_scores": True}).json()
    none = client.post("/", json={"inputs": TEXT, "parameters": {"function_to_apply": "none"}}).json()
    assert none == [raw]
    sigmoid = client.post("/", json={"inputs": TEXT, "parameters": {"function_to_apply": "sigmoid"}}).json()[0]
    logits = {p["label"]: p["score"] for p in raw}
    assert {p["label"]: p["score"] for p in sigmoid} == pytest.approx(
        {label: 1 / (1 + math.exp(-logit)) for label, logit in logits.items()}
    )
    bad = client.post("/", json={"inputs": TEXT, "parameters": {"top_k": 0}})
    assert bad.status_code == 422 and "top_k" in bad.json()["error"]


def test_info_has_teis_shape_and_the_early_exit_fields(client: TestClient) -> None:
    info = client.get("/info").json()
    assert info["model_type"] == {"classifier": {"id2label": {"0": "negative", "1": "positive"},
                                                 "label2id": {"negative": 0, "positive": 1}}}  # fmt: skip
    assert info["model_id"] == "tiny-sentiment:1" and info["model_dtype"] == "float32"
    assert info["max_input_length"] == 16 and info["max_client_batch_size"] == 8
    assert {"max_batch_tokens", "max_concurrent_requests", "version", "auto_truncate", "model_sha"} <= set(info)
    assert info["early_exit"]["num_layers"] == 3 and info["early_exit"]["default_policy"] == "beem-a"
    assert "full" in info["early_exit"]["policies"]


@pytest.mark.parametrize("path", ["/health", "/ping", "/"])
def test_health_routes_answer_200_when_ready(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200 and response.content == b""
    assert client.head(path).status_code == 200


@pytest.mark.parametrize("path", ["/health", "/ping", "/"])
def test_health_routes_answer_503_while_loading(tiny_bundle_dir: Path, path: str) -> None:
    loading = TestClient(create_app(ServerSettings(bundle=tiny_bundle_dir)))  # no lifespan: nothing loads
    response = loading.get(path)
    assert response.status_code == 503
    assert response.json()["error_type"] == "unavailable" and "unhealthy" in response.json()["error"]
    assert loading.post("/", json={"inputs": TEXT}).status_code == 503
    assert loading.get("/info").status_code == 503


def test_tokenize_gives_teis_tokens_with_byte_offsets(client: TestClient) -> None:
    text = "ünï café"
    response = client.post("/tokenize", json={"inputs": text})
    assert response.status_code == 200
    (tokens,) = response.json()  # one text: still a list of lists
    assert tokens[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert tokens[-1]["text"] == "[SEP]" and tokens[-1]["special"]
    for token in tokens[1:-1]:
        assert text.encode()[token["start"] : token["stop"]].decode() == token["text"]
    assert tokens[-2]["text"] == "café" and tokens[-2]["start"] == len("ünï ".encode())


def test_tokenize_a_batch_without_special_tokens(client: TestClient) -> None:
    response = client.post("/tokenize", json={"inputs": ["fine", "dull film"], "add_special_tokens": False})
    assert [[t["text"] for t in row] for row in response.json()] == [["fine"], ["dull", "film"]]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"inputs": []}, 422, "empty"),
        ({"inputs": ["x"] * 9}, 413, "limit is 8"),
        ({"inputs": "x", "prompt_name": "query"}, 422, "no prompts"),
        ({"inputs": 3}, 422, "inputs"),
    ],
)
def test_tokenize_rejects_with_a_reason(client: TestClient, body: object, status: int, says: str) -> None:
    response = client.post("/tokenize", json=body)
    assert response.status_code == status
    assert says in response.json()["error"]


def test_post_root_counts_as_traffic_and_get_root_as_a_probe(client: TestClient) -> None:
    def count(route: str) -> float:
        prefix = f'beem_requests_total{{model="tiny-sentiment",policy="beem-a",route="{route}",status="200"}} '
        lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith(prefix)]
        return float(lines[0].split()[-1]) if lines else 0.0

    before = count("/")
    assert client.get("/").status_code == 200
    assert client.post("/", json={"inputs": TEXT}).status_code == 200
    assert count("/") == before + 1


def test_tokenize_a_long_non_ascii_text_maps_every_byte_offset(client: TestClient) -> None:
    """Byte offsets are built in one pass; a long text goes to a worker thread, and is still exact."""
    text = "café naïve " * 200  # 2,200 characters: over the inline limit; 2 bytes for some
    (tokens,) = client.post("/tokenize", json={"inputs": text, "add_special_tokens": False}).json()
    encoded = text.encode()
    assert all(encoded[t["start"] : t["stop"]].decode() == t["text"] for t in tokens)
    assert tokens[-1]["stop"] == len(encoded.rstrip())


def test_a_very_negative_logit_has_a_sigmoid_score_not_an_error() -> None:
    from service.routes.predict import _sigmoid

    assert _sigmoid(-1000.0) == 0.0 and _sigmoid(1000.0) == 1.0 and _sigmoid(0.0) == 0.5


def test_tei_routes_hold_the_serving_versions_lease_until_answered(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A swap drains a version by its leases: a TEI request holds one while it runs and gives it back after,
    refused ones too (the lease is taken in the handler, not by a dependency)."""
    serving = client.app.state.models.resolve(None, "classification")  # type: ignore[attr-defined]
    held_while_running: list[int] = []
    classify, tokenize = ReadyClassifier.classify, ReadyClassifier.tokenize

    async def recording_classify(self: ReadyClassifier, *args: object) -> object:
        held_while_running.append(serving.leases)
        return await classify(self, *args)  # type: ignore[arg-type]

    async def recording_tokenize(self: ReadyClassifier, *args: object) -> object:
        held_while_running.append(serving.leases)
        return await tokenize(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ReadyClassifier, "classify", recording_classify)
    monkeypatch.setattr(ReadyClassifier, "tokenize", recording_tokenize)
    assert client.post("/predict", json={"inputs": TEXT}).status_code == 200
    assert client.post("/tokenize", json={"inputs": TEXT}).status_code == 200
    too_long = client.post("/predict", json={"inputs": "word " * 40, "truncate": False})
    assert too_long.status_code == 422, too_long.text  # refused inside the lease: past max_input_tokens
    assert client.get("/info").status_code == 200
    assert held_while_running == [1, 1, 1]
    assert serving.leases == 0
