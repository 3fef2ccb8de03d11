"""Operational routes: liveness, readiness, metrics, and what model is loaded."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.model_versions.model_registry import ModelRegistry, ServedModel
from service.model_versions.served_version import ServedVersion
from service.routes.dependencies import Models, require_api_key
from service.tasks import CLASSIFICATION

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP (says nothing about the model)."""
    return {"status": "alive"}


@router.get("/readyz")
async def readyz(request: Request, models: Models) -> JSONResponse:
    """200 once every served model's serving version is loaded and warmed up; 503 before (and after shutdown
    began). `models` says where each one is."""
    ready = models.all_ready() and not request.app.state.shutting_down
    versions = [model.active for model in models.models.values()]
    healths = [version.engine.health() for version in versions]
    errors = [version.error or health.error for version, health in zip(versions, healths, strict=True)]
    body = {
        "status": "ready" if ready else "not_ready",
        "loaded": all(health.loaded for health in healths),
        "error": next((f"{v.name}: {e}" for v, e in zip(versions, errors, strict=True) if e), None),
        "queue_depth": sum(health.queue_depth for health in healths),
        "inflight_rows": sum(health.inflight_rows for health in healths),
        "models": {version.name: {"version": version.version, "status": version.status.value,
                                  "ready": version.ready, "error": error}
                   for version, error in zip(versions, errors, strict=True)},
    }  # fmt: skip
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, responses={
    200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
})  # fmt: skip
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", dependencies=[Depends(require_api_key)])
async def models_route(models: Models) -> dict[str, Any]:
    """Every served model, the default first: its serving version's manifest summary, each policy's calibrated
    and live parameters (and its Learn-then-Test guarantee, null without one), every version seen with its status,
    and the shadow monitor's estimates."""
    ordered = sorted(models.models.values(), key=lambda m: (m.name != models.default_name, m.name))
    return {"default_model": models.default_name, "data": [_model_entry(model, models) for model in ordered]}


def _model_entry(model: ServedModel, models: ModelRegistry) -> dict[str, Any]:
    served = model.active
    manifest = served.manifest
    monitor = served.monitor
    return {
        "id": manifest.model_id,
        "name": manifest.name,
        "version": manifest.version,
        "status": served.status.value,
        "ready": served.ready,
        "default_for": [task for task in sorted(models.tasks) if models.default_for(task) is model],
        "task": manifest.task,
        "created_at": manifest.created_at,
        "backbone": {key: manifest.backbone.get(key) for key in ("name", "origin", "model_type")},
        "num_layers": manifest.num_layers,
        "labels": list(manifest.labels) if manifest.task == CLASSIFICATION.name else None,
        "max_length": manifest.max_length,
        "default_policy": manifest.default_policy,
        "calibration": manifest.calibration or None,
        "admission": served.admission.summary(),
        "policies": {name: {"params": record.params, "calibration": record.calibration, "test": record.test,
                            "live_threshold": _live_threshold(served, name), "guarantee": record.guarantee}
                     for name, record in manifest.policies.items()},
        "data": manifest.data or None,
        "versions": [{"version": record.version, "status": record.status.value, "error": record.error,
                      "rows": record.rows}
                     for record in sorted(model.history.values(), key=lambda r: int(r.version))],
        "shadow": None if monitor is None else monitor.summary(),
    }  # fmt: skip


def _live_threshold(served: ServedVersion, name: str) -> float | str | None:
    policy = served.live_policies.view.get(name)
    if policy is None:
        return None
    return policy.threshold if math.isfinite(policy.threshold) else str(policy.threshold)
