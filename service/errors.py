"""Domain errors and the one place they become HTTP responses (DESIGN 5.3).

Every error body is `{"error": "...", "error_type": "..."}`, the shape text-embeddings-inference uses, so clients
can tell a bad request from an overloaded server without parsing prose.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from beem.policies.policy_parameters import PolicyParameterError
from beem.policies.policy_table import POLICY_NAMES
from service.engine.admission_queue import EngineClosedError, QueueFullError
from service.schemas import INPUT_SHAPE_TAGS

log = logging.getLogger(__name__)


class ServiceError(Exception):
    status_code = 400
    error_type = "bad_request"
    headers: ClassVar[dict[str, str] | None] = None


class InputValidationError(ServiceError):
    status_code = 422
    error_type = "validation"


class ProtocolError(ServiceError):
    """An Open Inference Protocol request the protocol does not allow or this model cannot read (400, the status
    the protocol names for a failed request; its body's "error" is what the protocol's error object holds)."""

    status_code = 400
    error_type = "bad_request"


class PayloadTooLargeError(ServiceError):
    status_code = 413
    error_type = "payload_too_large"


class UnsupportedMediaError(ServiceError):
    status_code = 415
    error_type = "unsupported_media_type"


class UnauthorizedError(ServiceError):
    status_code = 401
    error_type = "unauthorized"
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class ModelNotFoundError(ServiceError):
    """A request named a model (or version) this server does not serve."""

    status_code = 404
    error_type = "model_not_found"


class NotReadyError(ServiceError):
    status_code = 503
    error_type = "unavailable"
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1"}


class RequestTimeoutError(ServiceError):
    status_code = 504
    error_type = "timeout"


class ShuttingDownError(ServiceError):
    status_code = 503
    error_type = "unavailable"
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1"}


class EngineFailureError(ServiceError):
    """The engine step that ran this request's rows failed; the engine goes on serving."""

    status_code = 500
    error_type = "internal"


class ClientGoneError(ServiceError):
    status_code = 499  # nginx's "client closed request": nobody reads it, but logs and metrics do
    error_type = "client_closed_request"


class ErrorJSONResponse(JSONResponse):
    """Error messages may quote what the client sent, and JSON lets that hold lone surrogates, which UTF-8
    cannot encode: escaped to ASCII, the body is still the same JSON and can always be written."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(
    status_code: int, message: str, error_type: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return ErrorJSONResponse({"error": message, "error_type": error_type}, status_code=status_code, headers=headers)


def _location_steps(location: tuple[object, ...]) -> list[str]:
    """pydantic's location without "body" and without the shape tag that follows `inputs` (schemas.py)."""
    steps = [str(step) for step in location if step != "body"]
    if len(steps) > 1 and steps[0] == "inputs" and steps[1] in INPUT_SHAPE_TAGS:
        del steps[1]
    return steps


def _validation_message(error: RequestValidationError) -> str:
    """pydantic's errors, located by field. A policy's wire model is chosen by its name (a tagged union), so the
    tag is left out of the location and named in the message where it matters."""
    parts = []
    for detail in error.errors()[:5]:
        steps = _location_steps(detail.get("loc", ()))
        tag = next((step for step in steps if step in POLICY_NAMES), None)
        location = ".".join(step for step in steps if step != tag) or "body"
        if detail.get("type") == "union_tag_invalid":
            parts.append(f"{location}.name: unknown policy {detail.get('ctx', {}).get('tag')!r}; expected one of "
                         f"{', '.join(POLICY_NAMES)}")  # fmt: skip
        elif detail.get("type") == "extra_forbidden" and tag is not None:
            parts.append(f"{location} does not apply to policy {tag!r}")
        else:
            parts.append(f"{location}: {detail.get('msg', 'invalid')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, error: ServiceError) -> JSONResponse:
        return error_response(error.status_code, str(error), error.error_type, error.headers)

    @app.exception_handler(PolicyParameterError)
    async def _policy_error(_: Request, error: PolicyParameterError) -> JSONResponse:
        return error_response(422, str(error), "validation")

    @app.exception_handler(QueueFullError)
    async def _queue_full(request: Request, error: QueueFullError) -> JSONResponse:
        # Paced: a client that resends at once on 429 (ignoring Retry-After) cannot resend faster than this, so a
        # retry storm's refusals cannot take the cores from the admitted requests (the wait costs no CPU).
        pace_s = request.app.state.settings.refusal_pace_ms / 1000
        if pace_s > 0:
            await asyncio.sleep(pace_s)
        retry_after = str(int(error.retry_after_s))
        return error_response(429, f"overloaded: {error}", "overloaded", {"Retry-After": retry_after})

    @app.exception_handler(EngineClosedError)
    async def _closed(_: Request, error: EngineClosedError) -> JSONResponse:
        return error_response(503, str(error), "unavailable", {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_message(error), "validation")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), "http", getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal error", "internal")
