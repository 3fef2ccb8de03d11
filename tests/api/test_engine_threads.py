"""Each model's engine thread serves as it was configured, and every torch op of loading a version (the shadow
monitor's calibration levels included) runs in that thread: at start-up and after a hot swap, for a classifier and
a captioner, through the real factory, lifespan, registry and engine threads.

Why it matters (issue 21): a parallel torch op in any other thread gives that thread an OpenMP pool of its own,
and with more OpenMP threads than cores every parallel region of a forward pays a wake-up. Computing the monitor's
levels in the loading caller's thread made every served caption 3x slower on 2 cores; nothing failed, so only a
benchmark could see it. These tests see the cause."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from beem.calibration.agreement_levels import AgreementLevels, agreement_levels
from beem.calibration.exit_cache import ExitCache
from beem.policies.exit_policies import ExitPolicy
from service.model_versions.model_registry import ModelRegistry
from service.model_versions.served_version import ServedVersion, VersionStatus
from service.settings import ServerSettings
from tests.api.conftest import ready_client
from tests.model_store_builders import add_version, model_store

TORCH_THREADS = 2  # more than one, so an OpenMP pool is worth the name; what a 2-core machine serves with


@pytest.fixture
def level_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The OS thread ids that computed calibration agreement levels (the real function, watched)."""
    seen: list[int] = []

    def watched(cache: ExitCache, policy: ExitPolicy) -> AgreementLevels:
        seen.append(threading.get_native_id())
        return agreement_levels(cache, policy)

    monkeypatch.setattr("service.model_versions.served_version.agreement_levels", watched)
    return seen


@pytest.fixture
def store(tmp_path: Path, tiny_bundle_dir: Path, tiny_caption_bundle_dir: Path) -> Path:
    bundles = {"tiny-sentiment": tiny_bundle_dir, "tiny-captioner": tiny_caption_bundle_dir}
    return model_store(tmp_path / "store", bundles)


@pytest.fixture
def client(store: Path, level_threads: list[int]) -> Iterator[TestClient]:
    settings = ServerSettings(model_store=store, default_model="tiny-sentiment", poll_interval_s=0,
                              torch_threads=TORCH_THREADS)  # fmt: skip
    yield from ready_client(settings)


def serving(client: TestClient) -> dict[str, ServedVersion]:
    registry: ModelRegistry = client.app.state.models  # type: ignore[attr-defined]
    return {v.name: v for v in registry.live_versions() if v.status == VersionStatus.SERVING}


def assert_serves_as_configured(version: ServedVersion) -> None:
    thread = version.engine.serving_thread
    assert thread is not None, f"{version.name}:{version.version} has not finished loading"
    assert thread.torch_threads == TORCH_THREADS, (version.name, version.version)
    # The process's own priority: a swap loads at nice 19 and must hand the thread back at the serving priority.
    assert thread.nice() == os.getpriority(os.PRIO_PROCESS, 0), (version.name, version.version)


def test_engine_threads_serve_as_configured_at_start_up(client: TestClient) -> None:
    versions = serving(client)
    assert set(versions) == {"tiny-sentiment", "tiny-captioner"}
    for version in versions.values():
        assert_serves_as_configured(version)
    ids = {version.engine.serving_thread.native_id for version in versions.values()}  # type: ignore[union-attr]
    assert len(ids) == 2 and threading.get_native_id() not in ids  # one engine thread per model


def test_calibration_levels_are_computed_in_the_engine_threads(client: TestClient, level_threads: list[int]) -> None:
    versions = serving(client)
    engine_threads = {version.engine.serving_thread.native_id for version in versions.values()}  # type: ignore[union-attr]
    assert level_threads, "the monitor's levels were computed"
    assert set(level_threads) <= engine_threads, "a torch op of loading ran outside the engine threads"
    # Each model's levels in its own engine's thread.
    assert all(version.monitor is not None for version in versions.values())


@pytest.mark.parametrize("model", ["tiny-sentiment", "tiny-captioner"])
def test_a_swapped_in_version_serves_as_configured(
    client: TestClient,
    store: Path,
    level_threads: list[int],
    tiny_bundle_dir: Path,
    tiny_caption_bundle_dir: Path,
    model: str,
) -> None:
    before = serving(client)[model]
    level_threads.clear()
    add_version(store / model, tiny_bundle_dir if model == "tiny-sentiment" else tiny_caption_bundle_dir, 2, name=model)
    (outcome,) = client.post("/admin/reload").json()["reloads"]
    assert outcome["outcome"] == "loaded", outcome

    after = serving(client)[model]
    assert after.version == "2" and after is not before
    # Loaded on one torch thread at nice 19 beside the serving version, then handed back as it will serve.
    assert_serves_as_configured(after)
    assert after.engine.serving_thread.native_id != before.engine.serving_thread.native_id  # type: ignore[union-attr]
    assert level_threads and set(level_threads) == {after.engine.serving_thread.native_id}  # type: ignore[union-attr]
    # The other model's engine was not touched by the swap.
    for other in serving(client).values():
        assert_serves_as_configured(other)


def test_a_set_up_that_fails_refuses_the_version_and_the_old_one_serves_on(
    client: TestClient, store: Path, tiny_bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(cache: ExitCache, policy: ExitPolicy) -> AgreementLevels:
        raise ValueError("calibration cache unreadable")

    monkeypatch.setattr("service.model_versions.served_version.agreement_levels", broken)
    add_version(store / "tiny-sentiment", tiny_bundle_dir, 2, name="tiny-sentiment")
    (outcome,) = client.post("/admin/reload").json()["reloads"]
    assert outcome["outcome"] == "refused"
    assert "set-up failed: ValueError: calibration cache unreadable" in outcome["error"]
    assert serving(client)["tiny-sentiment"].version == "1"
    response = client.post("/v1/classify", json={"inputs": "a gorgeous, moving film"})
    assert response.status_code == 200 and response.json()["model"] == "tiny-sentiment:1"
