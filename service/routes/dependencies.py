"""Per-request dependencies: the task's model once it is ready (the one readiness check of a request), and the
optional API key.

All are `async def` on purpose: FastAPI runs a plain `def` dependency in a thread pool, a thread hand-off per
request that cost more than the check itself."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from beem.bundle.manifest import Manifest
from service.captioning import CaptionService, ReadyCaptioner
from service.classification import ClassificationService, ReadyClassifier
from service.errors import NotReadyError, UnauthorizedError


async def ready_classifier(request: Request) -> ReadyClassifier:
    """503 while the model loads; afterwards the loaded model the whole request uses."""
    service: ClassificationService = request.app.state.classification
    return service.ready()


async def ready_manifest(request: Request) -> Manifest:
    """Either task's manifest, once its model is ready (503 before)."""
    health = request.app.state.engine.health()
    if not health.warmed_up:
        raise NotReadyError("the model is still loading; retry shortly")
    manifest: Manifest = request.app.state.manifest
    return manifest


async def ready_captioner(request: Request) -> ReadyCaptioner:
    service: CaptionService = request.app.state.captioning
    return service.ready()


async def require_api_key(request: Request) -> None:
    """With an API key configured, accept `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    offered = request.headers.get("x-api-key") or ""
    authorization = request.headers.get("authorization") or ""
    if authorization.lower().startswith("bearer "):
        offered = authorization[7:].strip()
    if not secrets.compare_digest(offered.encode(), expected.get_secret_value().encode()):
        raise UnauthorizedError("missing or wrong API key")


Classifier = Annotated[ReadyClassifier, Depends(ready_classifier)]
Captioner = Annotated[ReadyCaptioner, Depends(ready_captioner)]
ReadyManifest = Annotated[Manifest, Depends(ready_manifest)]
