"""POST /v1/classify: our own route, with the early-exit controls (policy, max_layers, return_exits)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from service.classification import TextRow
from service.routes.dependencies import Classification, require_api_key
from service.schemas import ClassifyRequest, ClassifyResponse, ClassifyResult, ErrorBody, ExitInfo

router = APIRouter(dependencies=[Depends(require_api_key)])
ERRORS = {status: {"model": ErrorBody} for status in (401, 413, 422, 429, 503, 504)}


def rows_of(inputs: str | list[str] | list[tuple[str, str]]) -> list[TextRow]:
    if isinstance(inputs, str):
        return [TextRow(inputs)]
    return [TextRow(item) if isinstance(item, str) else TextRow(item[0], item[1]) for item in inputs]


@router.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS)  # type: ignore[arg-type]
async def classify(body: ClassifyRequest, request: Request, service: Classification) -> ClassifyResponse:
    chosen = service.choose_policy(body.policy)
    request.state.policy = chosen.name
    outcomes = await service.classify(
        request, rows_of(body.inputs), chosen, body.max_layers, body.return_exits, body.truncate
    )
    bundle = service.bundle
    labels = bundle.labels
    results = [
        ClassifyResult(
            label=labels[outcome.label],
            score=outcome.score,
            exit_layer=outcome.exit_layer,
            num_layers=bundle.num_layers,
            policy=chosen.name,
            exits=[ExitInfo(layer=t.layer, label=labels[t.label], confidence=t.confidence) for t in outcome.exits]
            if body.return_exits
            else None,
        )
        for outcome in outcomes
    ]
    return ClassifyResponse(
        model=f"{bundle.name}:{bundle.version}",
        results=results,
        mean_exit_layer=sum(r.exit_layer for r in results) / len(results),
    )
