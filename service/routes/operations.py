"""Operational routes: liveness, readiness, metrics, and what model is loaded."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.routes.dependencies import ReadyManifest, require_api_key

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP (says nothing about the model)."""
    return {"status": "alive"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 once the bundle is loaded and warmed up; 503 before (and after shutdown began)."""
    health = request.app.state.engine.health()
    ready = health.warmed_up and not health.closed and not request.app.state.shutting_down
    body = {"status": "ready" if ready else "not_ready", "loaded": health.loaded, "error": health.error,
            "queue_depth": health.queue_depth, "inflight_rows": health.inflight_rows}  # fmt: skip
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, responses={
    200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
})  # fmt: skip
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", dependencies=[Depends(require_api_key)])
async def models(manifest: ReadyManifest) -> dict[str, Any]:
    """The loaded bundle: manifest summary and each policy's calibrated parameters and metrics."""
    return {
        "data": [{
            "id": manifest.model_id,
            "name": manifest.name,
            "version": manifest.version,
            "task": manifest.task,
            "created_at": manifest.created_at,
            "backbone": {key: manifest.backbone.get(key) for key in ("name", "origin", "model_type")},
            "num_layers": manifest.num_layers,
            "labels": list(manifest.labels) if manifest.task == "classification" else None,
            "max_length": manifest.max_length,
            "default_policy": manifest.default_policy,
            "calibration": manifest.calibration or None,
            "policies": {name: {"params": record.params, "calibration": record.calibration, "test": record.test}
                         for name, record in manifest.policies.items()},
            "data": manifest.data or None,
        }]
    }  # fmt: skip
