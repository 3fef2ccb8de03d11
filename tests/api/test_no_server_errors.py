"""Whatever JSON a client sends, the answer is never a 5xx (property test over generated bodies)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
POLICY = st.fixed_dictionaries(
    {"name": st.sampled_from(["beem-a", "beem-c", "max-prob", "entropy", "patience", "static", "full", "x"])},
    optional={"alpha": JSON, "threshold": JSON, "patience": JSON, "layer": JSON},
)
BODY = st.fixed_dictionaries(
    {"inputs": JSON | st.text(max_size=40) | st.lists(st.text(max_size=20), max_size=5)},
    optional={"policy": POLICY | JSON, "max_layers": JSON, "return_exits": JSON, "truncate": JSON},
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY)
def test_classify_never_answers_5xx(client: TestClient, body: dict[str, object]) -> None:
    assert client.post("/v1/classify", json=body).status_code < 500


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.fixed_dictionaries({"inputs": JSON}, optional={"truncate": JSON, "raw_scores": JSON}))
def test_predict_never_answers_5xx(client: TestClient, body: dict[str, object]) -> None:
    assert client.post("/predict", json=body).status_code < 500
