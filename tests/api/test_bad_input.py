"""Bad input gets a 4xx with a JSON body saying what was wrong; the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from pydantic import SecretStr

from service.settings import ServerSettings
from tests.api.conftest import ready_client

LONG_TEXT = "words " * 40  # over the fixture's 16-token limit


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"inputs": ""}, 422, "empty"),
        ({"inputs": "   "}, 422, "empty"),
        ({"inputs": []}, 422, "empty"),
        ({"inputs": ["fine", 3]}, 422, "inputs"),
        ({"inputs": [["only one"]]}, 422, "inputs"),
        ({"inputs": ["x"] * 9}, 413, "limit is 8"),
        ({"inputs": LONG_TEXT}, 422, "tokens; the limit is 16"),
        ({"inputs": "ok", "policy": {"name": "nope"}}, 422, "policy.name"),
        ({"inputs": "ok", "policy": {"name": "beem-a", "alpha": -1}}, 422, "alpha"),
        (
            {"inputs": "ok", "policy": {"name": "max-prob", "threshold": 2}},
            422,
            "policy.threshold: Input should be less than or equal to 1",
        ),
        ({"inputs": "ok", "policy": {"name": "max-prob", "alpha": 1}}, 422, "does not apply"),
        ({"inputs": "ok", "policy": {"name": "static", "layer": 9}}, 422, "layer"),
        ({"inputs": "ok", "max_layers": 4}, 422, "the model has 3 layers"),
        ({"inputs": "ok", "max_layers": 0}, 422, "max_layers"),
        ({"inputs": "ok", "unknown": 1}, 422, "unknown"),
        ({"text": "ok"}, 422, "inputs"),
    ],
)
def test_classify_rejects_with_a_reason(client: TestClient, body: object, status: int, says: str) -> None:
    response = client.post("/v1/classify", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"error", "error_type"}
    assert says in error["error"]
    assert client.post("/v1/classify", json={"inputs": "still serving"}).status_code == 200


def test_truncate_accepts_long_input(client: TestClient) -> None:
    assert client.post("/v1/classify", json={"inputs": LONG_TEXT, "truncate": True}).status_code == 200
    assert client.post("/predict", json={"inputs": LONG_TEXT, "truncate": True}).status_code == 200
    assert client.post("/predict", json={"inputs": LONG_TEXT}).status_code == 422


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b'{"inputs": "unterminated', "application/json", 422),
        (b"inputs=text", "application/x-www-form-urlencoded", 422),
        (b"[1, 2, 3]", "application/json", 422),
        (b'{"inputs": "' + b"a" * 5000 + b'"}', "application/json", 413),  # over max_body_bytes (4096)
    ],
    ids=["broken-json", "not-json", "wrong-shape", "too-large"],
)
def test_malformed_bodies(client: TestClient, content: bytes, content_type: str, status: int) -> None:
    response = client.post("/v1/classify", content=content, headers={"content-type": content_type})
    assert response.status_code == status
    assert "error" in response.json()


def test_predict_rejects_three_strings(client: TestClient) -> None:
    response = client.post("/predict", json={"inputs": ["a", "b", "c"]})
    assert response.status_code == 422
    assert "[text] or [text, pair]" in response.json()["error"]


LONE = "\ud800"  # valid JSON ("\\ud800"), but no Unicode character


def _post_escaped(client: TestClient, route: str, body: object) -> Response:
    """As a JSON library writing ASCII sends it: the surrogate as a \\u escape (httpx's json= cannot)."""
    return client.post(route, content=json.dumps(body), headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("route", "body", "where"),
    [
        ("/v1/classify", {"inputs": LONE}, "inputs"),
        ("/v1/classify", {"inputs": ["fine", "ok " + LONE]}, "inputs.1"),
        ("/v1/classify", {"inputs": [["fine", "\udfff pair"]]}, "inputs.0.1"),
        ("/predict", {"inputs": LONE}, "inputs"),
        ("/predict", {"inputs": ["fine", LONE]}, "inputs.1"),
        ("/predict", {"inputs": [["fine"], [LONE, "pair"]]}, "inputs.1.0"),
        ("/tokenize", {"inputs": ["fine", LONE]}, "inputs.1"),
    ],
)
def test_a_lone_surrogate_is_refused_with_where_it_is(
    client: TestClient, route: str, body: dict[str, object], where: str
) -> None:
    response = _post_escaped(client, route, body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error_type"] == "validation"
    assert where in error["error"] and "lone UTF-16 surrogate" in error["error"]
    assert client.post(route, json={"inputs": "still serving"}).status_code == 200


def test_an_error_quoting_a_lone_surrogate_is_still_json(client: TestClient) -> None:
    response = _post_escaped(client, "/v1/classify", {"inputs": "ok", "policy": {"name": LONE}})
    assert response.status_code == 422
    assert "unknown policy" in response.json()["error"]  # a JSON body, whatever the message quotes


@pytest.fixture(scope="module")
def guarded_client(tiny_bundle_dir: Path) -> Iterator[TestClient]:
    yield from ready_client(ServerSettings(bundle=tiny_bundle_dir, api_key=SecretStr("s3cret")))


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"authorization": "Bearer wrong"}, 401),
        ({"x-api-key": "wrong"}, 401),
        ({"authorization": "Bearer s3cret"}, 200),
        ({"x-api-key": "s3cret"}, 200),
    ],
)
def test_api_key(guarded_client: TestClient, headers: dict[str, str], status: int) -> None:
    response = guarded_client.post("/v1/classify", json={"inputs": "fine"}, headers=headers)
    assert response.status_code == status
    assert guarded_client.get("/healthz").status_code == 200  # probes stay open


@pytest.mark.parametrize(
    ("method", "route"),
    [("POST", "/predict"), ("POST", "/"), ("POST", "/invocations"), ("POST", "/tokenize"), ("GET", "/info"),
     ("GET", "/v1/models"), ("POST", "/admin/reload")],
)  # fmt: skip
def test_every_api_route_needs_the_key_and_the_probes_do_not(
    guarded_client: TestClient, method: str, route: str
) -> None:
    body = {"inputs": "fine"} if method == "POST" else None
    assert guarded_client.request(method, route, json=body).status_code == 401
    with_key = guarded_client.request(method, route, json=body, headers={"authorization": "Bearer s3cret"})
    assert with_key.status_code == 200
    for probe in ("/health", "/ping", "/", "/healthz", "/readyz", "/metrics"):  # TEI's and ours stay open
        assert guarded_client.get(probe).status_code == 200, probe


def test_an_extra_key_is_named_in_the_error(client: TestClient) -> None:
    response = client.post("/v1/classify", json={"inputs": "fine", "text": 1})
    assert response.status_code == 422 and "text: Extra inputs are not permitted" in response.json()["error"]
