"""POST /v1/caption: an image (multipart upload or base64 JSON; PNG or JPEG) -> its caption, with every token's
exit layer. Served when the loaded bundle is a captioner."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import UploadFile

from service.errors import InputValidationError, UnsupportedMediaError
from service.image_input import decode_base64
from service.routes.dependencies import Models, require_api_key
from service.schemas import (
    MODEL_REFERENCE,
    POLICY_SPEC,
    CaptionRequest,
    CaptionResponse,
    ErrorBody,
    ModelReference,
    PolicySpec,
)
from service.tasks import CAPTION

router = APIRouter(dependencies=[Depends(require_api_key)])
ERRORS = {status: {"model": ErrorBody} for status in (401, 404, 413, 415, 422, 429, 503, 504)}
MODEL_FIELD: TypeAdapter[str] = TypeAdapter(ModelReference)
IMAGE_FIELD = "image"
OPENAPI_BODIES = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": CaptionRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [IMAGE_FIELD],
                    "properties": {
                        IMAGE_FIELD: {"type": "string", "format": "binary", "description": "PNG or JPEG file"},
                        "policy": {"type": "string", "description": 'JSON policy, e.g. {"name": "full"}'},
                        "model": {"type": "string", "description": MODEL_REFERENCE},
                    },
                }
            },
        },
    }
}


async def _multipart(request: Request) -> tuple[bytes, PolicySpec | None, str | None]:
    async with request.form(max_files=1, max_fields=4) as form:
        upload = form.get(IMAGE_FIELD)
        if not isinstance(upload, UploadFile):
            raise InputValidationError(f"multipart upload needs a file part named {IMAGE_FIELD!r}")
        data = await upload.read()
        policy, model = form.get("policy"), form.get("model")
    if policy is not None and not isinstance(policy, str):
        raise InputValidationError("policy: a JSON text form field, not a file")
    if model is not None and not isinstance(model, str):
        raise InputValidationError("model: a text form field, not a file")
    try:
        spec = POLICY_SPEC.validate_json(policy) if policy else None
    except ValidationError as error:
        raise RequestValidationError([{**e, "loc": ("policy", *e["loc"])} for e in error.errors()]) from error
    try:
        return data, spec, MODEL_FIELD.validate_python(model) if model is not None else None
    except ValidationError as error:
        raise RequestValidationError([{**e, "loc": ("model", *e["loc"])} for e in error.errors()]) from error


async def _json(request: Request) -> tuple[bytes, PolicySpec | None, str | None]:
    try:
        body = CaptionRequest.model_validate_json(await request.body())
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from error
    return decode_base64(body.image), body.policy, body.model


@router.post("/v1/caption", response_model=CaptionResponse, responses=ERRORS, openapi_extra=OPENAPI_BODIES)  # type: ignore[arg-type]
async def caption(request: Request, models: Models) -> CaptionResponse:
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        image_bytes, spec, model = await _multipart(request)
    elif content_type.startswith("application/json"):
        image_bytes, spec, model = await _json(request)
    else:
        raise UnsupportedMediaError(
            f"content-type {content_type or '(none)'}: send multipart/form-data with an {IMAGE_FIELD!r} file, or "
            "application/json with a base64 'image'"
        )
    with models.lease(model, CAPTION.name) as served:  # held until answered: a swap lets it finish
        request.state.model = served.name
        captioner = served.captioner()
        chosen = captioner.policy(spec)
        request.state.policy = chosen.name
        outcome = await captioner.caption(request, image_bytes, chosen)
    bundle = captioner.bundle
    vocabulary = bundle.vocabulary
    return CaptionResponse(
        model=bundle.manifest.model_id,
        caption=vocabulary.decode(outcome.tokens),
        tokens=[vocabulary.words[token] for token in outcome.tokens],
        token_exit_layers=list(outcome.exit_layers),
        mean_exit_layer=sum(outcome.exit_layers) / max(len(outcome.exit_layers), 1),
        num_layers=bundle.num_layers,
        policy=chosen.name,
    )
