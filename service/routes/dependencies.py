"""Per-request dependencies: the task's service on app.state, and the optional API key.

Both are `async def` on purpose: FastAPI runs a plain `def` dependency in a thread pool, a thread hand-off per
request that cost more than the check itself."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from service.captioning import CaptionService
from service.classification import ClassificationService
from service.errors import UnauthorizedError


async def classification_service(request: Request) -> ClassificationService:
    service: ClassificationService = request.app.state.classification
    return service


async def caption_service(request: Request) -> CaptionService:
    service: CaptionService = request.app.state.captioning
    return service


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


Classification = Annotated[ClassificationService, Depends(classification_service)]
Captioning = Annotated[CaptionService, Depends(caption_service)]
