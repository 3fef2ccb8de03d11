"""Per-request dependencies: the model registry and the optional API key; and the lease on the default classifier
that TEI's routes take in their handler.

The dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in a thread pool, a thread
hand-off per request that cost more than the check itself. The lease is a plain context manager the handler
enters, not a `yield` dependency: FastAPI runs a generator dependency through an exit stack, about 30 us a
request on this 2-core CPU (a tenth of /predict's overhead over the engine's own time)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Request

from service.classification import ReadyClassifier
from service.errors import UnauthorizedError
from service.model_versions.model_registry import ModelRegistry
from service.tasks import CLASSIFICATION


async def model_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.models
    return registry


Models = Annotated[ModelRegistry, Depends(model_registry)]


@contextmanager
def default_classifier(models: ModelRegistry, request: Request) -> Iterator[ReadyClassifier]:
    """The default classifier (TEI's routes), ready, held until the request is answered; 503 while it loads."""
    with models.lease(None, CLASSIFICATION.name) as served:
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
