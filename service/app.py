"""The app factory and lifespan (DESIGN 5.3): `create_app(settings)` wires settings, metrics, engine and routes.

The bundle's manifest and checksums are verified before the app exists, so a bad bundle stops start-up with a
message. The model itself loads in the background: /healthz answers at once, /readyz turns 200 when it is
warm. On shutdown (SIGTERM via uvicorn) the server stops accepting connections, finishes what was admitted, and
the engine drains before the process exits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from beem.bundle.manifest import read_manifest, resolve_bundle_dir
from service.captioning import CaptionService
from service.classification import ClassificationService
from service.engine.admission_queue import AdmissionLimits, AdmissionQueue
from service.engine.caption_engine import CaptionEngine
from service.engine.device_engine import DeviceInferenceEngine, DevicePathOptions
from service.engine.drain_rate import DrainRate
from service.engine.inference_engine import InferenceEngine
from service.engine.row_ledger import RowLedger
from service.engine.step_engine import EngineBudget, resolve_device
from service.errors import error_response, install_error_handlers
from service.metrics import ServiceMetrics
from service.routes import caption, classify, operations, predict, tei_info, tokenize
from service.settings import ServerSettings

log = logging.getLogger(__name__)
# The API routes each task serves (beem_requests_total); probes and metrics are not counted.
COUNTED_ROUTES = {
    "classification": frozenset({"/v1/classify", "/predict", "/", "/invocations", "/tokenize", "/info", "/v1/models"}),
    "caption": frozenset({"/v1/caption", "/v1/models"}),
}


def create_app(settings: ServerSettings) -> FastAPI:
    """A classification or a caption server, by the bundle's task: each gets its engine and its routes."""
    manifest = read_manifest(resolve_bundle_dir(settings.bundle))  # read and verified once, here
    engine = build_engine(settings, manifest.task, manifest.num_layers)
    metrics = engine.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        load = functools.partial(engine.load, settings.bundle, settings.torch_threads, manifest=manifest)
        loading = asyncio.create_task(asyncio.to_thread(load))
        loading.add_done_callback(_log_load_failure)
        yield
        app.state.shutting_down = True
        await asyncio.to_thread(engine.close)
        if not loading.done():
            loading.cancel()

    app = FastAPI(
        title="beem-serve",
        summary="Early-exit (BEEM) transformer classification and captioning",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.manifest = manifest
    app.state.metrics = metrics
    app.state.engine = engine
    app.state.shutting_down = False
    install_error_handlers(app)
    if isinstance(engine, CaptionEngine):
        app.state.captioning = CaptionService(engine, settings)
        app.include_router(caption.router)
    else:
        app.state.classification = ClassificationService(engine, settings)
        app.include_router(classify.router)
        app.include_router(predict.router)
        app.include_router(tokenize.router)
        app.include_router(tei_info.router)
    app.include_router(operations.router)
    # Added last = outermost: requests rejected for their size are counted too.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, counted=COUNTED_ROUTES[manifest.task])
    return app


def build_engine(settings: ServerSettings, task: str, num_layers: int) -> InferenceEngine | CaptionEngine:
    """The engine of a bundle's task, with its admission queue, ledger and drain rate, from the settings."""
    metrics = ServiceMetrics(num_layers)
    engine_class = CaptionEngine if task == "caption" else InferenceEngine
    ledger = RowLedger(metrics, engine_class.task, num_layers)
    drain = DrainRate()
    limits = AdmissionLimits(settings.max_queue, settings.max_queue_wait_ms / 1000, settings.max_batch_wait_ms / 1000)
    budget = EngineBudget(settings.max_batch_size, settings.max_batch_tokens, settings.group_selection)
    queue = AdmissionQueue(limits, ledger, drain, metrics)  # type: ignore[var-annotated]
    if task != "caption" and uses_device_path(settings):
        options = DevicePathOptions(settings.step_buckets(), settings.cuda_graphs, settings.skip_unprofitable_exits,
                                    settings.compile_decisions)  # fmt: skip
        return DeviceInferenceEngine(queue, ledger, drain, metrics, budget, settings.device, settings.dtype,
                                     options=options)  # fmt: skip
    return engine_class(queue, ledger, drain, metrics, budget, settings.device, settings.dtype)


def uses_device_path(settings: ServerSettings) -> bool:
    """engine_path auto: the device path where the engine will run on CUDA, the host path on the CPU."""
    if settings.engine_path != "auto":
        return settings.engine_path == "device"
    return resolve_device(settings.device, settings.dtype)[0].type == "cuda"


def _log_load_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the bundle did not load; /readyz stays 503: %s", task.exception())


class RequestMetricsMiddleware:
    """beem_requests_total and beem_request_duration_seconds for the API routes, whatever the outcome."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, counted: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.counted = counted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # GET / is TEI's health probe, POST / its predict: only the latter is API traffic.
        path = scope.get("path")
        if scope["type"] != "http" or path not in self.counted or (path == "/" and scope["method"] != "POST"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            policy = (scope.get("state") or {}).get("policy", "none")
            self.metrics.requests.labels(scope["path"], policy, str(status)).inc()
            self.metrics.request_duration.labels(scope["path"]).observe(time.perf_counter() - started)


class BodySizeLimitMiddleware:
    """413 for a body over the limit, declared (Content-Length) or streamed, before any of it is parsed."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._reject(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await self._reject(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"request body over {self.max_body_bytes} bytes", "payload_too_large")
        await response(scope, receive, send)
