"""POST /predict: text-embeddings-inference's classification route, so TEI clients work unchanged.

Input as TEI reads it: "text" is one input; ["text", "pair"] is one sentence pair; [["a"], ["b", "pair"]] is a
batch. Output: every label with its score, highest first; a list of such lists for a batch. Served with the
bundle's calibrated default policy (BEEM-A).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from service.classification import TextRow
from service.errors import InputValidationError
from service.routes.dependencies import Classification, require_api_key
from service.schemas import ErrorBody, Prediction, PredictRequest

router = APIRouter(dependencies=[Depends(require_api_key)])
ERRORS = {status: {"model": ErrorBody} for status in (401, 413, 422, 429, 503, 504)}


def _sequence(values: list[str], where: str) -> TextRow:
    if len(values) == 1:
        return TextRow(values[0])
    if len(values) == 2:
        return TextRow(values[0], values[1])
    raise InputValidationError(f"{where} must be [text] or [text, pair], got {len(values)} strings")


def parse_tei_inputs(inputs: str | list[str] | list[list[str]]) -> tuple[list[TextRow], bool]:
    """-> (rows, is_batch)."""
    if isinstance(inputs, str):
        return [TextRow(inputs)], False
    if not inputs:
        raise InputValidationError("inputs is empty")
    if all(isinstance(item, str) for item in inputs):
        return [_sequence(inputs, "inputs")], False  # type: ignore[arg-type]
    return [_sequence(item, f"inputs[{i}]") for i, item in enumerate(inputs)], True  # type: ignore[arg-type]


@router.post(
    "/predict",
    response_model=list[Prediction] | list[list[Prediction]],
    responses=ERRORS,  # type: ignore[arg-type]
)
async def predict(
    body: PredictRequest, request: Request, service: Classification
) -> list[Prediction] | list[list[Prediction]]:
    rows, is_batch = parse_tei_inputs(body.inputs)
    chosen = service.choose_policy(None)
    request.state.policy = chosen.name
    side = body.truncation_direction.lower()
    outcomes = await service.classify(
        request, rows, chosen, None, False, bool(body.truncate), side, wants_distribution=True
    )
    labels = service.bundle.labels
    answers = []
    for outcome in outcomes:
        scores = outcome.logits if body.raw_scores else outcome.probabilities
        assert scores is not None, "asked for the distribution"
        ranked = sorted(zip(labels, scores, strict=True), key=lambda pair: -pair[1])
        answers.append([Prediction(label=label, score=score) for label, score in ranked])
    return answers if is_batch else answers[0]
