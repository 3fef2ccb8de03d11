"""On the default bundle: a sample's label and exit layer do not depend on its batch, and equal what calibration
simulated offline for the same sample (one policy implementation, one model path)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from beem.bundle.manifest import resolve_bundle_dir
from beem.calibration.exit_cache import ExitCache
from beem.data.examples import read_dataset
from beem.data.rotten_tomatoes import REPO_DATA_FILE
from beem.data.splits import split_dataset
from beem.policies.exit_policies import run_sample
from beem.policies.policy_table import build_policy
from service.settings import DEFAULT_BUNDLE, ServerSettings
from tests.api.conftest import ready_client

SAMPLES = 40


@pytest.fixture(scope="module")
def default_client() -> Iterator[TestClient]:
    yield from ready_client(ServerSettings(bundle=DEFAULT_BUNDLE, max_batch_size=16, max_batch_wait_ms=20))


def _serve(client: TestClient, texts: list[str], policy: str) -> list[tuple[str, int]]:
    response = client.post("/v1/classify", json={"inputs": texts, "policy": {"name": policy}})
    assert response.status_code == 200, response.text
    return [(r["label"], r["exit_layer"]) for r in response.json()["results"]]


@pytest.mark.parametrize("policy", ["beem-a", "beem-c", "max-prob", "patience"])
def test_batching_never_changes_a_samples_answer(default_client: TestClient, policy: str) -> None:
    texts = [e.text for e in split_dataset(read_dataset(REPO_DATA_FILE)).test.examples[:SAMPLES]]
    alone = [_serve(default_client, [text], policy)[0] for text in texts]
    together = _serve(default_client, texts, policy)  # padded to the longest, joining the engine in groups
    reversed_neighbours = _serve(default_client, texts[::-1], policy)[::-1]
    assert together == alone
    assert reversed_neighbours == alone
    assert len({layer for _, layer in alone}) > 1, "the policy should exit samples at different layers"


def test_served_exit_layers_equal_the_offline_calibration(default_client: TestClient) -> None:
    bundle_dir = resolve_bundle_dir(DEFAULT_BUNDLE)
    cache = ExitCache.load(bundle_dir / "calibration_exits.safetensors")
    calibration = split_dataset(read_dataset(REPO_DATA_FILE)).calibration.examples[:SAMPLES]
    model = default_client.get("/v1/models").json()["data"][0]
    labels = model["labels"]
    for name in ("beem-a", "max-prob"):
        policy = build_policy(name, model["policies"][name]["params"], model["num_layers"])
        expected = [
            (labels[int(cache.exit_labels[n, layer - 1])], layer)
            for n in range(SAMPLES)
            for layer in [run_sample(policy, cache.observations(n))]
        ]
        assert _serve(default_client, [e.text for e in calibration], name) == expected
