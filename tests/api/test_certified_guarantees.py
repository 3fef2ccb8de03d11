"""What a server shows of a bundle's Learn-then-Test guarantees: each policy's in /info's `early_exit` and in
/v1/models, as the manifest records them; nothing for a bundle calibrated by another rule."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from beem.bundle.manifest import read_manifest
from service.settings import ServerSettings
from tests.api.conftest import ready_client

BUILT_IN = ("beem-a", "beem-c", "max-prob", "entropy", "patience", "static", "full")
WIRE_FIELDS = ("risk", "epsilon", "delta", "n", "losses", "observed_risk", "p_value", "certified", "statement")


@pytest.fixture(scope="module")
def ltt_client(tiny_ltt_bundle_dir: Path) -> Iterator[TestClient]:
    yield from ready_client(ServerSettings(bundle=tiny_ltt_bundle_dir))


def test_info_and_models_show_each_policys_guarantee(ltt_client: TestClient, tiny_ltt_bundle_dir: Path) -> None:
    recorded = {name: dict(record.guarantee) for name, record in read_manifest(tiny_ltt_bundle_dir).policies.items()
                if record.guarantee is not None}  # fmt: skip
    assert set(recorded) >= set(BUILT_IN) - {"full"} and "full" not in recorded

    shown = ltt_client.get("/info").json()["early_exit"]["guarantees"]
    assert shown == {name: {key: guarantee[key] for key in WIRE_FIELDS} for name, guarantee in recorded.items()}

    (entry,) = ltt_client.get("/v1/models").json()["data"]
    assert {name: policy["guarantee"] for name, policy in entry["policies"].items()} == {**recorded, "full": None}
    assert all(name in recorded for name in entry["policies"] if name != "full")
    assert entry["calibration"]["selection_rule"] == "ltt" and entry["calibration"]["epsilon"] == 0.25


def test_policies_chosen_by_another_rule_show_none(client: TestClient, tiny_bundle_dir: Path) -> None:
    recorded = {name: record.guarantee for name, record in read_manifest(tiny_bundle_dir).policies.items()}
    assert all(recorded[name] is None for name in BUILT_IN)  # paired-bound: nothing certified
    certified = {name: guarantee for name, guarantee in recorded.items() if guarantee is not None}
    shown = client.get("/info").json()["early_exit"]["guarantees"]
    assert shown == ({name: {key: g[key] for key in WIRE_FIELDS} for name, g in certified.items()} or None)
    (entry,) = client.get("/v1/models").json()["data"]
    assert {name: policy["guarantee"] for name, policy in entry["policies"].items()} == recorded
