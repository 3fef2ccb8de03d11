"""Admission settings per model (service/model_versions/model_admission.py), table-driven: a model's serving.json
beats the server's flag, which beats the task's default, which beats the flag's default; a bad file stops start-up
with the file and the reason; the caption default answers a 16-client load and still sheds an overload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beem.bundle.manifest import BundleError
from service.engine.admission_queue import AdmissionLimits, AdmissionQueue, QueueFullError
from service.engine.row_ledger import RowLedger
from service.metrics import ServiceMetrics
from service.model_versions.model_admission import CORES, SERVING_FILE, model_admission
from service.settings import ServerSettings
from service.tasks import CAPTION
from tests.engine.test_admission import FakeClock, Row, measured


@pytest.mark.parametrize(("task", "own", "flags", "expected"), [
    ("classification", {}, {}, (500.0, "server default")),
    ("caption", {}, {}, (4000.0, "task default")),
    ("caption", {}, {"max_queue_wait_ms": 900.0}, (900.0, "server")),
    ("caption", {"max_queue_wait_ms": 12000}, {"max_queue_wait_ms": 900.0}, (12000.0, "model")),
    ("classification", {"max_queue_wait_ms": 50}, {}, (50.0, "model")),
])  # fmt: skip
def test_where_a_models_wait_budget_comes_from(
    tmp_path: Path, tiny_bundle_dir: Path, task: str, own: dict[str, float], flags: dict[str, float],
    expected: tuple[float, str],
) -> None:  # fmt: skip
    if own:
        (tmp_path / SERVING_FILE).write_text(json.dumps(own))
    admission = model_admission(ServerSettings(bundle=tiny_bundle_dir, **flags), task, tmp_path)
    assert (admission.settings.max_queue_wait_ms, admission.sources["max_queue_wait_ms"]) == expected
    assert admission.summary()["max_queue_wait_ms"] == {"value": expected[0], "from": expected[1]}
    assert admission.sources["max_batch_size"] == "server default"


@pytest.mark.parametrize(("models", "own", "flags", "expected"), [
    (1, {}, {}, (None, "server default")),  # one model: torch's own default, every core
    (2, {}, {}, (max(1, CORES // 2), f"a share of {CORES} cores")),
    (3, {}, {}, (max(1, CORES // 3), f"a share of {CORES} cores")),
    (2, {}, {"torch_threads": 2}, (2, "server")),
    (2, {"torch_threads": 2}, {"torch_threads": 1}, (2, "model")),
])  # fmt: skip
def test_several_models_share_the_cores_unless_told_otherwise(
    tmp_path: Path, tiny_bundle_dir: Path, models: int, own: dict[str, int], flags: dict[str, int],
    expected: tuple[int | None, str],
) -> None:  # fmt: skip
    if own:
        (tmp_path / SERVING_FILE).write_text(json.dumps(own))
    settings = ServerSettings(bundle=tiny_bundle_dir, **flags)
    admission = model_admission(settings, "classification", tmp_path, models_served=models)
    assert (admission.settings.torch_threads, admission.sources["torch_threads"]) == expected


@pytest.mark.parametrize(("content", "says"), [
    ("{not json", "not a valid serving.json"),
    (json.dumps({"max_queue_wait_ms": -1}), "greater than 0"),
    (json.dumps({"request_timeout_s": 4}), "Extra inputs"),
    (json.dumps({"torch_threads": 0}), "greater than or equal to 1"),
    (json.dumps({"max_queue": 2}), "max_inputs_per_request"),  # below the server's 64 inputs a request
])  # fmt: skip
def test_a_bad_serving_file_is_refused_with_its_path_and_reason(
    tmp_path: Path, tiny_bundle_dir: Path, content: str, says: str
) -> None:
    (tmp_path / SERVING_FILE).write_text(content)
    with pytest.raises(BundleError, match=says) as refused:
        model_admission(ServerSettings(bundle=tiny_bundle_dir), "classification", tmp_path)
    assert SERVING_FILE in str(refused.value)


@pytest.mark.parametrize(("rate", "in_flight", "waiting", "admitted"), [
    (17.5, 16, 0, True),  # 16 closed-loop clients at the measured 16-client drain rate: 0.9 s of work ahead
    (17.5, 32, 30, True),  # 3.5 s
    (17.5, 32, 40, False),  # 4.1 s: an overload still sheds
    (3.0, 12, 0, True),  # a slow machine: 4 s of work ahead is still in
    (3.0, 13, 0, False),
])  # fmt: skip
def test_the_caption_default_answers_16_clients_and_sheds_an_overload(
    rate: float, in_flight: int, waiting: int, admitted: bool
) -> None:
    metrics = ServiceMetrics(3)
    limits = AdmissionLimits(max_queue=512, max_queue_wait_ms=CAPTION.admission_defaults["max_queue_wait_ms"])
    drain = measured(None)
    drain.record(int(rate * 10), 10.0)  # `rate` rows per busy second over one window
    queue = AdmissionQueue[Row](limits, RowLedger(metrics, "caption", 3), drain, metrics, FakeClock())
    queue.submit([Row() for _ in range(waiting)]) if waiting else None
    queue.report_load(in_flight)
    if admitted:
        queue.submit([Row()])
    else:
        with pytest.raises(QueueFullError, match="expected queue wait"):
            queue.submit([Row()])
