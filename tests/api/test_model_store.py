"""Several models in one server, through the real factory, lifespan and engine threads: a model store with two
classifiers and a captioner served side by side, requests that name their model, /v1/models, and hot swap (an
explicit reload, polling, a broken version refused while the old one serves on)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.model_versions.model_admission import SERVING_FILE
from service.settings import ServerSettings
from tests.api.conftest import ready_client
from tests.api.test_caption_api import encoded, scene
from tests.model_store_builders import add_broken_version, add_version, model_store

TEXTS = ["a gorgeous, moving film", "dull and far too long"]


@pytest.fixture
def store(tmp_path: Path, tiny_bundle_dir: Path, tiny_caption_bundle_dir: Path) -> Path:
    root = model_store(tmp_path / "store", {"tiny-sentiment": tiny_bundle_dir, "tiny-other": tiny_bundle_dir,
                                            "tiny-captioner": tiny_caption_bundle_dir})  # fmt: skip
    (root / "tiny-other" / SERVING_FILE).write_text(json.dumps({"max_queue_wait_ms": 50, "max_batch_size": 8}))
    return root


@pytest.fixture
def client(store: Path) -> Iterator[TestClient]:
    yield from ready_client(ServerSettings(model_store=store, default_model="tiny-sentiment", poll_interval_s=0))


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the one sample of `name` whose labels include `labels` (0 for a labelled counter that has not
    counted anything yet, so its series does not exist)."""
    values = []
    for line in text.splitlines():
        found = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if found and found.group(1) == name:
            have = dict(re.findall(r'(\w+)="([^"]*)"', found.group(2)))
            if all(have.get(key) == value for key, value in labels.items()):
                values.append(float(found.group(3)))
    assert len(values) <= 1, (name, labels, values)
    return values[0] if values else 0.0


def test_classifiers_and_a_captioner_are_served_side_by_side(client: TestClient) -> None:
    listing = client.get("/v1/models").json()
    assert listing["default_model"] == "tiny-sentiment"
    models = {entry["name"]: entry for entry in listing["data"]}
    assert listing["data"][0]["name"] == "tiny-sentiment"  # the default first (clients read data[0])
    assert set(models) == {"tiny-sentiment", "tiny-other", "tiny-captioner"}
    assert models["tiny-captioner"]["task"] == "caption" and models["tiny-other"]["task"] == "classification"
    assert models["tiny-sentiment"]["default_for"] == ["classification"]
    assert models["tiny-captioner"]["default_for"] == ["caption"]
    for entry in models.values():
        assert entry["status"] == "serving" and entry["ready"]
        assert entry["versions"] == [{"version": "1", "status": "serving", "error": None, "rows": None}]

    for name in ("tiny-sentiment", "tiny-other", "tiny-other:1"):
        response = client.post("/v1/classify", json={"inputs": TEXTS, "model": name})
        assert response.status_code == 200, response.json()
        assert response.json()["model"] == f"{name.split(':')[0]}:1"
    assert client.post("/v1/classify", json={"inputs": TEXTS}).json()["model"] == "tiny-sentiment:1"
    assert client.post("/predict", json={"inputs": TEXTS[0]}).status_code == 200  # TEI: the default classifier
    assert client.get("/info").json()["model_id"] == "tiny-sentiment:1"

    image = ("a.png", encoded(scene(1)), "image/png")
    uploaded = client.post("/v1/caption", files={"image": image}, data={"model": "tiny-captioner"})
    assert uploaded.status_code == 200 and uploaded.json()["model"] == "tiny-captioner:1"
    assert client.post("/v1/caption", files={"image": image}).json()["model"] == "tiny-captioner:1"

    metrics = client.get("/metrics").text
    for name in ("tiny-sentiment", "tiny-other"):
        assert metric(metrics, "beem_rows_total", model=name, version="1", outcome="answered") >= 2
    assert metric(metrics, "beem_rows_total", model="tiny-captioner", version="1", outcome="answered") == 2
    assert metric(metrics, "beem_requests_total", model="tiny-other", route="/v1/classify", status="200") == 2


def test_each_model_serves_with_its_own_admission_settings(client: TestClient) -> None:
    """tiny-other's serving.json sets its budget and batch; the captioner takes the caption default; /v1/models
    shows each value and where it came from, and the engines run with them."""
    models = {entry["name"]: entry["admission"] for entry in client.get("/v1/models").json()["data"]}
    assert models["tiny-other"]["max_queue_wait_ms"] == {"value": 50.0, "from": "model"}
    assert models["tiny-other"]["max_batch_size"] == {"value": 8, "from": "model"}
    assert models["tiny-captioner"]["max_queue_wait_ms"] == {"value": 4000.0, "from": "task default"}
    assert models["tiny-sentiment"]["max_queue_wait_ms"] == {"value": 500.0, "from": "server default"}
    registry = client.app.state.models  # type: ignore[attr-defined]
    assert registry.models["tiny-other"].active.engine.queue.limits.max_queue_wait_ms == 50.0
    assert registry.models["tiny-other"].active.engine.budget.max_batch_size == 8
    assert registry.models["tiny-captioner"].active.engine.queue.limits.max_queue_wait_ms == 4000.0


@pytest.mark.parametrize(
    ("route", "body", "status", "says"),
    [
        ("/v1/classify", {"inputs": "fine", "model": "nope"}, 404, "model 'nope' is not served"),
        ("/v1/classify", {"inputs": "fine", "model": "tiny-captioner"}, 404, "is a caption model"),
        ("/v1/classify", {"inputs": "fine", "model": "tiny-other:7"}, 404, "version 7 of 'tiny-other'"),
        ("/v1/classify", {"inputs": "fine", "model": "no spaces"}, 422, "model"),
        ("/v1/classify", {"inputs": "fine", "model": 3}, 422, "model"),
    ],
)  # fmt: skip
def test_a_model_that_is_not_served_is_a_clear_error(
    client: TestClient, route: str, body: dict[str, object], status: int, says: str
) -> None:
    response = client.post(route, json=body)
    assert response.status_code == status and says in response.json()["error"], response.json()
    assert client.post("/v1/classify", json={"inputs": "fine"}).status_code == 200  # and the server serves on


def test_a_caption_request_for_a_classifier_is_404(client: TestClient) -> None:
    image = ("a.png", encoded(scene(2)), "image/png")
    response = client.post("/v1/caption", files={"image": image}, data={"model": "tiny-other"})
    assert response.status_code == 404 and response.json()["error_type"] == "model_not_found"


def test_reload_swaps_in_a_new_version_and_unloads_the_old(client: TestClient, store: Path,
                                                           tiny_bundle_dir: Path) -> None:  # fmt: skip
    before = client.post("/v1/classify", json={"inputs": TEXTS, "policy": {"name": "full"}}).json()
    assert client.post("/admin/reload").json()["reloads"] == []  # nothing new yet
    add_version(store / "tiny-sentiment", tiny_bundle_dir, 2, name="tiny-sentiment")

    report = client.post("/admin/reload").json()
    assert report["reloads"] == [{"model": "tiny-sentiment", "version": "2", "outcome": "loaded", "error": None}]
    assert report["serving"] == {"tiny-captioner": "1", "tiny-other": "1", "tiny-sentiment": "2"}
    after = client.post("/v1/classify", json={"inputs": TEXTS, "policy": {"name": "full"}}).json()
    assert after["model"] == "tiny-sentiment:2"
    assert [r["label"] for r in after["results"]] == [r["label"] for r in before["results"]]  # the same weights
    assert client.post("/v1/classify", json={"inputs": "x", "model": "tiny-sentiment:1"}).status_code == 404

    entry = _wait_for_version_status(client, "tiny-sentiment", "1", "unloaded")
    assert [v["status"] for v in entry["versions"]] == ["unloaded", "serving"]
    metrics = client.get("/metrics").text
    assert metric(metrics, "beem_model_reloads_total", model="tiny-sentiment", outcome="loaded") == 1
    assert metric(metrics, "beem_model_serving_version", model="tiny-sentiment") == 2
    assert 'model="tiny-sentiment",' in metrics and 'version="1"' not in _lines_of(metrics, "tiny-sentiment")


def test_a_broken_version_is_refused_and_the_old_one_serves_on(
    client: TestClient, store: Path, tiny_bundle_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    add_broken_version(store / "tiny-other", tiny_bundle_dir, 2)
    with caplog.at_level("ERROR"):
        (outcome,) = client.post("/admin/reload").json()["reloads"]
    assert outcome["outcome"] == "refused" and "model.safetensors" in outcome["error"]
    assert any("version 2 refused, version 1 serves on" in r.getMessage() for r in caplog.records)
    assert client.post("/v1/classify", json={"inputs": TEXTS, "model": "tiny-other"}).json()["model"] == "tiny-other:1"
    entry = next(e for e in client.get("/v1/models").json()["data"] if e["name"] == "tiny-other")
    assert [(v["version"], v["status"]) for v in entry["versions"]] == [("1", "serving"), ("2", "refused")]
    metrics = client.get("/metrics").text
    assert metric(metrics, "beem_model_reloads_total", model="tiny-other", outcome="refused") == 1
    assert metric(metrics, "beem_model_reloads_total", model="tiny-other", outcome="loaded") == 0
    assert client.get("/readyz").status_code == 200


def test_a_version_whose_manifest_names_another_version_is_refused(
    client: TestClient, store: Path, tiny_bundle_dir: Path
) -> None:
    copied = add_version(store / "tiny-other", tiny_bundle_dir, 2, name="tiny-other")
    copied.rename(store / "tiny-other" / "3")  # its manifest still says 2: a copy, not a new version
    (outcome,) = client.post("/admin/reload").json()["reloads"]
    assert outcome["outcome"] == "refused" and "manifest says version 2" in outcome["error"]


def test_polling_picks_up_a_new_version(store: Path, tiny_bundle_dir: Path) -> None:
    settings = ServerSettings(model_store=store, default_model="tiny-sentiment", poll_interval_s=0.1)
    for polling in ready_client(settings):
        add_version(store / "tiny-other", tiny_bundle_dir, 2, name="tiny-other")
        entry = _wait_for_version_status(polling, "tiny-other", "2", "serving")
        assert entry["version"] == "2"
        response = polling.post("/v1/classify", json={"inputs": TEXTS, "model": "tiny-other"})
        assert response.json()["model"] == "tiny-other:2"


def test_bundles_named_one_by_one_and_a_pinned_version(tiny_bundle_dir: Path, tiny_caption_bundle_dir: Path) -> None:
    settings = ServerSettings(bundle=tiny_caption_bundle_dir, more_bundles=[tiny_bundle_dir], poll_interval_s=0)
    for both in ready_client(settings):
        names = [entry["name"] for entry in both.get("/v1/models").json()["data"]]
        assert names == ["tiny-captioner", "tiny-sentiment"]  # `bundle`'s model is the default
        # The default model is a captioner: classification requests go to the first classifier.
        assert both.post("/v1/classify", json={"inputs": "fine"}).json()["model"] == "tiny-sentiment:1"
        assert both.post("/predict", json={"inputs": "fine"}).status_code == 200


def _wait_for_version_status(client: TestClient, model: str, version: str, status: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while True:
        entry = next(e for e in client.get("/v1/models").json()["data"] if e["name"] == model)
        if any(v["version"] == version and v["status"] == status for v in entry["versions"]):
            return dict(entry)
        assert time.monotonic() < deadline, entry
        time.sleep(0.05)


def _lines_of(metrics: str, model: str) -> str:
    return "\n".join(line for line in metrics.splitlines() if f'model="{model}"' in line and "_info" not in line)
