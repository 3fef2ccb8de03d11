"""What a task is, once (issue 22): every piece of the service that differs between classification and captions
is named by one record here, and nothing else in `service/` spells a task's name.

A record says how a bundle of its kind (the manifest's `task`) is served: the engine built from the shared parts
(queue, ledger, drain rate, metrics, budget), the request service wrapped around it, the answer type its rows come
back with, and the API routes `beem_requests_total` counts for it. The routers themselves are mounted per task by
the app factory (`service/app.py`, `TASK_ROUTERS`): a route leases its model from the registry, which builds
versions from these records, so a record holding routers would import itself in a circle.

Adding a task: a record here, its engine under `service/engine/<task>/`, its service and routes, and its routers
in `TASK_ROUTERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from beem.policies.exit_policies import ExitPolicy
from service.captioning import CaptionService
from service.classification import ClassificationService
from service.engine.admission_queue import AdmissionQueue
from service.engine.caption.caption_engine import CaptionEngine
from service.engine.classify.classification_engine import ClassificationEngine
from service.engine.classify.device.device_path import DevicePathOptions
from service.engine.drain_rate import DrainRate
from service.engine.row_ledger import RowLedger
from service.engine.row_outcome import CaptionAnswer, ClassAnswer, RowAnswer
from service.engine.step_engine import EngineBudget, StepEngine, resolve_device
from service.metrics import ServiceMetrics
from service.monitoring.shadow_monitor import ShadowMonitor
from service.settings import ServerSettings


@dataclass(frozen=True)
class EngineParts:
    """What every task's engine is built from (`served_version.build_engine` makes them from the settings)."""

    task: str
    queue: AdmissionQueue[Any]
    ledger: RowLedger
    drain: DrainRate
    metrics: ServiceMetrics
    budget: EngineBudget


class TaskService(Protocol):
    """What a version holds of its task's request service (its own API is the task's)."""

    live_policies: Mapping[str, ExitPolicy]
    monitor: ShadowMonitor | None


@dataclass(frozen=True)
class Task:
    name: str  # the manifest's `task`, the `task` label of every metric, what a route asks the registry for
    make_engine: Callable[[EngineParts, ServerSettings], StepEngine[Any, Any]]
    make_service: Callable[[Any, ServerSettings], TaskService]  # (its engine, the settings)
    answer_type: type[RowAnswer]
    api_routes: frozenset[str]  # the routes beem_requests_total counts for it
    # Admission settings this task's models take when neither their serving.json nor the server sets them
    # (service/model_versions/model_admission.py).
    admission_defaults: Mapping[str, float] = field(default_factory=dict)


def _classification_engine(parts: EngineParts, settings: ServerSettings) -> ClassificationEngine:
    options = DevicePathOptions(buckets=settings.step_buckets(), cuda_graphs=settings.cuda_graphs,
                                skip_unprofitable_exits=settings.skip_unprofitable_exits,
                                compile_decisions=settings.compile_decisions)  # fmt: skip
    return ClassificationEngine(
        task=parts.task, queue=parts.queue, ledger=parts.ledger, drain=parts.drain, metrics=parts.metrics,
        budget=parts.budget, device=settings.device, dtype=settings.dtype,
        engine_path=resolved_engine_path(settings), device_path_options=options,
    )  # fmt: skip


def _caption_engine(parts: EngineParts, settings: ServerSettings) -> CaptionEngine:
    return CaptionEngine(task=parts.task, queue=parts.queue, ledger=parts.ledger, drain=parts.drain,
                         metrics=parts.metrics, budget=parts.budget, device=settings.device,
                         dtype=settings.dtype)  # fmt: skip


def resolved_engine_path(settings: ServerSettings) -> str:
    """The layer path's name (`classify/layer_paths.py`), `auto` resolved."""
    if settings.engine_path == "auto":
        return "device" if uses_device_path(settings) else "host"
    return settings.engine_path


def uses_device_path(settings: ServerSettings) -> bool:
    """engine_path auto: the device path where the engine will run on CUDA, the host path on the CPU."""
    if settings.engine_path != "auto":
        return settings.engine_path == "device"
    return resolve_device(settings.device, settings.dtype)[0].type == "cuda"


# beem_requests_total's route label for every model's Open Inference Protocol infer path, named or versioned
# (routes/open_inference.py), so a label per model name does not grow the metric.
OPEN_INFERENCE_INFER_ROUTE = "/v2/models/{name}/infer"
CLASSIFICATION = Task(
    name="classification",
    make_engine=_classification_engine,
    make_service=ClassificationService,
    answer_type=ClassAnswer,
    api_routes=frozenset(
        {
            "/v1/classify",
            "/predict",
            "/",
            "/invocations",
            "/tokenize",
            "/info",
            "/v1/models",
            OPEN_INFERENCE_INFER_ROUTE,
        }
    ),
)
CAPTION = Task(
    name="caption",
    make_engine=_caption_engine,
    make_service=CaptionService,
    answer_type=CaptionAnswer,
    api_routes=frozenset({"/v1/caption", "/v1/models", OPEN_INFERENCE_INFER_ROUTE}),
    # A caption row takes hundreds of ms (16 clients on 2 cores: p50 0.79 s, p95 1.66 s; bench/results/
    # caption_serving_c16_all_answered_cpu.json), so classification's 500 ms budget refused most of a 16-client
    # load. 4 s is about 2.4x that p95: it answers 16 clients and still sheds once ~70 rows are ahead.
    admission_defaults={"max_queue_wait_ms": 4000.0},
)
TASKS: dict[str, Task] = {task.name: task for task in (CLASSIFICATION, CAPTION)}


def task_named(name: str) -> Task:
    task = TASKS.get(name)
    if task is None:
        raise ValueError(f"task {name!r}: this server serves {', '.join(sorted(TASKS))}")
    return task
