"""Fuzzing every route: schemathesis from the app's own OpenAPI schema, and hypothesis with arbitrary JSON.

Bounded examples per route keep it within the suite's time on 2 cores. The properties: no 5xx, and every answer
fits the schema the route publishes (errors included: a JSON object with `error` and `error_type`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from service.app import create_app
from service.settings import ServerSettings
from tests.api.conftest import ready_client

POST_ROUTES = ("/v1/classify", "/predict", "/", "/invocations", "/tokenize")


def _settings(bundle: Path) -> ServerSettings:
    return ServerSettings(bundle=bundle, max_inputs_per_request=8, max_body_bytes=4096, max_input_tokens=16,
                          request_timeout_s=10)  # fmt: skip


@pytest.fixture(scope="module")
def loaded_app(tiny_bundle_dir: Path) -> Iterator[TestClient]:
    yield from ready_client(_settings(tiny_bundle_dir))


@pytest.fixture(scope="module")
def api_schema(tiny_bundle_dir: Path) -> schemathesis.BaseSchema:
    """An app of its own: schemathesis runs its lifespan (once, for the process) and shuts it down itself. The
    fuzzing starts once the model is ready, so a 503 would be a real failure."""
    app = create_app(_settings(tiny_bundle_dir))
    with asgi.get_client(app) as client:  # starts the app's lifespan, which schemathesis's calls then share
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the fuzzed app did not become ready"
            time.sleep(0.05)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_route_answers_5xx_or_off_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance, content_type_conformance])


# Any JSON value: what a client can put in a body, lone surrogates and odd numbers included.
TEXTS = st.text() | st.text(alphabet=st.sampled_from(["\ud800", "\udfff", "a", " ", "\u00e9", "\x00"]))  # + surrogates
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXTS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# ...and bodies shaped like the routes' own, so the values reach past the outer schema.
OPTIONAL_FIELDS = ("policy", "parameters", "truncate", "max_layers", "add_special_tokens", "raw_scores")
SHAPED = st.fixed_dictionaries({"inputs": JSON_VALUES}, optional=dict.fromkeys(OPTIONAL_FIELDS, JSON_VALUES))


@pytest.mark.parametrize("route", POST_ROUTES)
@given(body=JSON_VALUES | SHAPED)
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_json_body_gets_an_answer_or_a_4xx_with_a_reason(loaded_app: TestClient, route: str, body: object) -> None:
    # As an ASCII JSON writer sends it: lone surrogates travel as \u escapes, valid JSON that Python reads back.
    response = loaded_app.post(route, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code < 500, (route, body, response.text)
    answer = response.json()
    if response.status_code >= 400:
        assert set(answer) == {"error", "error_type"} and answer["error"], answer


@pytest.fixture(scope="module")
def caption_app(tiny_caption_bundle_dir: Path) -> Iterator[TestClient]:
    yield from ready_client(ServerSettings(bundle=tiny_caption_bundle_dir, max_body_bytes=4096, request_timeout_s=10))


@given(body=JSON_VALUES | st.fixed_dictionaries({"image": JSON_VALUES}, optional={"policy": JSON_VALUES}))
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_json_body_to_the_caption_route_gets_an_answer_or_a_4xx(caption_app: TestClient, body: object) -> None:
    response = caption_app.post("/v1/caption", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        assert set(response.json()) == {"error", "error_type"}
