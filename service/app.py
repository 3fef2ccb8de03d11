"""The app factory and lifespan (DESIGN 5.3): `create_app(settings)` wires settings, metrics, models and routes.

Every served bundle's manifest and checksums are verified before the app exists, so a bad bundle stops start-up
with a message. The models themselves load in the background, one after another: /healthz answers at once,
/readyz turns 200 when every model is warm. A request names its model (or gets its task's default), and holds
that model's serving version until it is answered; new versions swap in while the server runs
(`service/model_versions/hot_swap.py`: polling, `POST /admin/reload`, SIGHUP). On shutdown (SIGTERM via uvicorn) the
server stops accepting connections, finishes what was admitted, and every engine drains before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response, install_error_handlers
from service.metrics import ServerMetrics
from service.model_versions.hot_swap import VersionWatcher
from service.model_versions.model_registry import ModelRegistry
from service.model_versions.served_version import build_engine
from service.routes import admin, caption, classify, open_inference, operations, predict, tei_info, tokenize
from service.settings import ServerSettings
from service.tasks import CAPTION, CLASSIFICATION, OPEN_INFERENCE_INFER_ROUTE, TASKS, uses_device_path

log = logging.getLogger(__name__)
OPEN_INFERENCE_INFER = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
# The routers each task serves, mounted when a served model is of that task (service/tasks.py says why here).
TASK_ROUTERS = {
    CLASSIFICATION.name: (classify.router, predict.router, tokenize.router, tei_info.router),
    CAPTION.name: (caption.router,),
}
__all__ = ["build_engine", "create_app", "uses_device_path"]


def create_app(settings: ServerSettings) -> FastAPI:
    """A server for every bundle the settings name: each model gets its engine, each task its routes."""
    models = ModelRegistry(settings)  # every starting version's manifest read and verified once, here
    metrics = ServerMetrics(lambda: [(v.name, v.version, v.metrics) for v in models.live_versions()])
    watcher = VersionWatcher(models, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def start() -> None:
            await watcher.load_initial()
            watcher.start_polling()

        starting = asyncio.create_task(start())
        reloads_on_sighup = _reload_on_sighup(watcher)
        yield
        app.state.shutting_down = True
        if reloads_on_sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if not starting.done():
            starting.cancel()
        await watcher.close()

    app = FastAPI(
        title="beem-serve",
        summary="Early-exit (BEEM) transformer classification and captioning",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.models = models
    app.state.watcher = watcher
    app.state.metrics = metrics
    app.state.shutting_down = False
    install_error_handlers(app)
    counted: frozenset[str] = frozenset()  # the API routes (beem_requests_total); probes and metrics are not
    for task in TASKS.values():
        if task.name in models.tasks:
            for router in TASK_ROUTERS[task.name]:
                app.include_router(router)
            counted |= task.api_routes
    app.include_router(operations.router)
    app.include_router(admin.router)
    app.include_router(open_inference.health_router)
    app.include_router(open_inference.router)
    # Added last = outermost: requests rejected for their size are counted too.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, counted=counted)
    return app


def _reload_on_sighup(watcher: VersionWatcher) -> bool:
    """SIGHUP looks for new versions (retrying refused ones), as servers reload their configuration. Only where
    the event loop runs in the main thread (uvicorn's); False elsewhere (an app driven by a test client)."""

    def reload() -> None:
        log.info("SIGHUP: looking for new model versions")
        watcher.reload_in_background()

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
        return True
    return False


class RequestMetricsMiddleware:
    """beem_requests_total and beem_request_duration_seconds for the API routes, whatever the outcome."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, counted: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.counted = counted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # GET / is TEI's health probe, POST / its predict: only the latter is API traffic.
        path = scope.get("path")
        if scope["type"] == "http" and path not in self.counted and OPEN_INFERENCE_INFER.match(path or ""):
            path = OPEN_INFERENCE_INFER_ROUTE  # one label for every model's infer path, not one per name
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
            state = scope.get("state") or {}
            self.metrics.requests.labels(path, state.get("model", "none"), state.get("policy", "none"),
                                         str(status)).inc()  # fmt: skip
            self.metrics.request_duration.labels(path).observe(time.perf_counter() - started)


class BodySizeLimitMiddleware:
    """413 for a body over the limit, declared (Content-Length) or streamed, before any of it is parsed. (A body
    that trickles in is the connection's limit: service/http_protocol.py.)"""

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
