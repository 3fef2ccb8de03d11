"""POST /v1/classify: our own route, with the early-exit controls (policy, max_layers, return_exits)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from service.classification import ClassifyCall, TextRow
from service.routes.dependencies import Models, require_api_key
from service.schemas import ClassifyRequest, ClassifyResponse, ClassifyResult, ErrorBody, ExitInfo
from service.tasks import CLASSIFICATION

router = APIRouter(dependencies=[Depends(require_api_key)])
ERRORS = {status: {"model": ErrorBody} for status in (401, 404, 413, 422, 429, 503, 504)}


def rows_of(inputs: str | list[str] | list[tuple[str, str]]) -> tuple[TextRow, ...]:
    if isinstance(inputs, str):
        return (TextRow(inputs),)
    return tuple(TextRow(item) if isinstance(item, str) else TextRow(item[0], item[1]) for item in inputs)


@router.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS)  # type: ignore[arg-type]
async def classify(body: ClassifyRequest, request: Request, models: Models) -> ClassifyResponse:
    with models.lease(body.model, CLASSIFICATION.name) as served:  # held until answered: a swap lets it finish
        request.state.model = served.name
        classifier = served.classifier()
        chosen = classifier.policy(body.policy)
        request.state.policy = chosen.name
        call = ClassifyCall(rows=rows_of(body.inputs), policy=chosen, max_layers=body.max_layers,
                            return_exits=body.return_exits, truncate=body.truncate)  # fmt: skip
        outcome = await classifier.classify(call, request)
    bundle = classifier.bundle
    labels = bundle.labels
    results = [
        ClassifyResult(
            label=labels[answer.label],
            score=answer.score,
            exit_layer=answer.exit_layer,
            num_layers=bundle.num_layers,
            policy=chosen.name,
            exits=[ExitInfo(layer=t.layer, label=labels[t.label], confidence=t.confidence) for t in answer.exits]
            if body.return_exits
            else None,
        )
        for answer in outcome.answers
    ]
    return ClassifyResponse(model=bundle.manifest.model_id, results=results, mean_exit_layer=outcome.mean_exit_layer)
