"""Per-request dependencies: the model registry, the task's default model once it is ready (the one readiness
check of a request, held until the request is answered), and the optional API key.

All are `async def` on purpose: FastAPI runs a plain `def` dependency in a thread pool, a thread hand-off per
request that cost more than the check itself."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from service.classification import ReadyClassifier
from service.errors import UnauthorizedError
from service.models.model_registry import ModelRegistry


async def model_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.models
    return registry


Models = Annotated[ModelRegistry, Depends(model_registry)]


async def default_classifier(request: Request, models: Models) -> AsyncIterator[ReadyClassifier]:
    """The default classifier (TEI's routes), ready, held until the request is answered; 503 while it loads."""
    with models.lease(None, "classification") as served:
        request.state.model = served.name
        yield served.classifier()


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


Classifier = Annotated[ReadyClassifier, Depends(default_classifier)]
