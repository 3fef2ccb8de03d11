"""text-embeddings-inference's model and health routes (huggingface/text-embeddings-inference,
router/src/http/server.rs `get_model_info` and `health`; the Info shape in router/src/lib.rs `Info`).

- GET /info: TEI's `Info` for a classifier (`model_type.classifier` with id2label and label2id), our limits in
  TEI's names, and `early_exit` (the bundle, its depth and policies, their certified guarantees) added.
- GET /health, GET /ping (SageMaker) and GET /: 200 with an empty body when the model is ready, else 503 with an
  error body, as TEI's health check answers. Unlike TEI, which opens its port only once the model has loaded,
  this server answers while loading, so the 503 is what a client sees then. Like TEI's, these never ask for the
  API key.
"""

from __future__ import annotations

import importlib.metadata
import logging

from fastapi import APIRouter, Depends, Request, Response
from pydantic import ValidationError

from beem.bundle.manifest import Manifest
from service.errors import NotReadyError
from service.routes.dependencies import Models, default_classifier, require_api_key
from service.schemas import ClassifierModel, EarlyExitInfo, ErrorBody, InfoResponse, ModelType, PolicyGuarantee
from service.tasks import CLASSIFICATION

log = logging.getLogger(__name__)
router = APIRouter()
SERVER_VERSION = importlib.metadata.version("beem-serve")


@router.get("/info", response_model=InfoResponse, responses={401: {"model": ErrorBody}, 503: {"model": ErrorBody}},
            dependencies=[Depends(require_api_key)])  # fmt: skip
async def info(request: Request, models: Models) -> InfoResponse:
    settings = request.app.state.settings
    with default_classifier(models, request) as classifier:
        engine = classifier.service.engine
        manifest = classifier.bundle.manifest
        max_input_tokens = classifier.max_input_tokens
    labels = manifest.labels
    guarantees = _guarantees(manifest)
    return InfoResponse(
        model_id=manifest.model_id,
        model_sha=None,
        model_dtype=str(engine.dtype).removeprefix("torch."),
        served_model_name=manifest.name,
        model_type=ModelType(classifier=ClassifierModel(
            id2label={str(i): label for i, label in enumerate(labels)},
            label2id={label: i for i, label in enumerate(labels)},
        )),
        max_concurrent_requests=settings.max_queue,
        max_input_length=max_input_tokens,
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_requests=settings.max_batch_size,
        max_client_batch_size=settings.max_inputs_per_request,
        auto_truncate=False,
        tokenization_workers=1,
        version=SERVER_VERSION,
        sha=None,
        docker_label=None,
        early_exit=EarlyExitInfo(
            bundle=manifest.model_id,
            num_layers=manifest.num_layers,
            default_policy=manifest.default_policy,
            policies=list(manifest.policies),
            backbone=str(manifest.backbone.get("name") or manifest.backbone.get("model_type") or "unknown"),
            engine_path=engine.engine_path,
            engine_path_detail=getattr(engine.path, "detail", None),
            guarantees=guarantees or None,
        ),
    )  # fmt: skip


def _guarantees(manifest: Manifest) -> dict[str, PolicyGuarantee]:
    """The manifest's Learn-then-Test guarantees in the wire form; one that does not read as one (a hand-edited
    manifest) is left out rather than failing the route."""
    guarantees = {}
    for name, record in manifest.policies.items():
        if record.guarantee is None:
            continue
        try:
            guarantees[name] = PolicyGuarantee.model_validate(dict(record.guarantee))
        except ValidationError:
            log.warning("%s: policy %s's guarantee is malformed; /info leaves it out", manifest.model_id, name)
    return guarantees


async def health(request: Request, models: Models) -> Response:
    """TEI's health: the default classifier's serving version is warm."""
    served = models.default_for(CLASSIFICATION.name).active
    engine_health = served.engine.health()
    if not served.ready or engine_health.closed or request.app.state.shutting_down:
        detail = f" ({served.error or engine_health.error})" if served.error or engine_health.error else ""
        raise NotReadyError(f"unhealthy: the model is not ready{detail}")
    return Response(status_code=200)


HEALTH_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"description": "ready (empty body)"},
    503: {"model": ErrorBody},
}
for path in ("/health", "/ping", "/"):  # GET, and HEAD as axum's `get` answers it (left out of the schema)
    name = f"health{path.replace('/', '_')}"
    router.add_api_route(path, health, methods=["GET"], response_class=Response, responses=HEALTH_RESPONSES,
                         name=name)  # fmt: skip
    router.add_api_route(path, health, methods=["HEAD"], response_class=Response, name=f"{name}_head",
                         include_in_schema=False)  # fmt: skip
