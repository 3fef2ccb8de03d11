"""text-embeddings-inference's classification routes, so TEI clients work unchanged: POST /predict, and POST / and
POST /invocations (SageMaker), which TEI serves with the same handler for a classifier (huggingface/
text-embeddings-inference, router/src/http/server.rs: `predict`, and the default routes registered for
`ModelType::Classifier`).

Input as TEI reads it (types.rs `PredictInput`): "text" is one input; ["text", "pair"] is one sentence pair (not a
batch of two); [["a"], ["b", "pair"]] is a batch. Output as TEI's `PredictResponse`: every label with its score,
highest first; a list of such lists for a batch. Served with the bundle's calibrated default policy.

Response headers as TEI's (lib.rs `ResponseMetadata`: whole milliseconds; for a batch, characters and tokens
summed, tokenization, queue and inference times averaged per input) plus ours: `x-exit-layer` for one input,
`x-mean-exit-layer` for a batch, and `x-exit-policy`.

The Hugging Face Inference API's request, `{"inputs": text, "parameters": {"top_k": k, "function_to_apply": f}}`,
is what `huggingface_hub.InferenceClient.text_classification` sends. TEI ignores `parameters` and answers one
input with a flat list, from which that client keeps only the first element. Here a request that carries
`parameters` gets the Inference API's answer instead: `top_k` and `function_to_apply` applied, and one input's
answer nested ([[...]]) as the client expects, so it receives the list it documents. A request without
`parameters` gets TEI's answer exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from fastapi import APIRouter, Depends, Request, Response

from service.classification import ClassifyCall, ClassifyOutcome, TextRow
from service.engine.row_outcome import ClassAnswer
from service.errors import InputValidationError
from service.routes.dependencies import Models, default_classifier, require_api_key
from service.schemas import ErrorBody, Prediction, PredictRequest

router = APIRouter(dependencies=[Depends(require_api_key)])
ERRORS = {status: {"model": ErrorBody} for status in (401, 413, 422, 429, 503, 504)}
PredictResponse = list[Prediction] | list[list[Prediction]]


def _sequence(values: Sequence[str], where: str) -> TextRow:
    if len(values) == 1:
        return TextRow(values[0])
    if len(values) == 2:
        return TextRow(values[0], values[1])
    raise InputValidationError(f"{where} must be [text] or [text, pair], got {len(values)} strings")


def parse_tei_inputs(inputs: str | list[str] | list[list[str]]) -> tuple[tuple[TextRow, ...], bool]:
    """-> (rows, is_batch)."""
    if isinstance(inputs, str):
        return (TextRow(inputs),), False
    if not inputs:
        raise InputValidationError("inputs is empty")
    if all(isinstance(item, str) for item in inputs):
        return (_sequence(inputs, "inputs"),), False  # type: ignore[arg-type]
    return tuple(_sequence(item, f"inputs[{i}]") for i, item in enumerate(inputs)), True


def _scores(answer: ClassAnswer, body: PredictRequest) -> Sequence[float]:
    applied = body.parameters.function_to_apply if body.parameters else None
    if applied == "none" or (applied is None and body.raw_scores):
        assert answer.logits is not None, "asked for the distribution"
        return answer.logits
    if applied == "sigmoid":
        assert answer.logits is not None, "asked for the distribution"
        return [_sigmoid(logit) for logit in answer.logits]
    assert answer.probabilities is not None, "asked for the distribution"
    return answer.probabilities


def _sigmoid(logit: float) -> float:
    # Either branch's exp has a non-positive argument, so no logit overflows it.
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    return math.exp(logit) / (1.0 + math.exp(logit))


def _ranked(answer: ClassAnswer, labels: Sequence[str], body: PredictRequest) -> list[Prediction]:
    ranked = sorted(zip(labels, _scores(answer, body), strict=True), key=lambda pair: -pair[1])
    top_k = body.parameters.top_k if body.parameters else None
    return [Prediction(label=label, score=score) for label, score in ranked[:top_k]]


def _tei_headers(
    response: Response, outcome: ClassifyOutcome, total_s: float, device: str, policy: str, is_batch: bool
) -> None:
    def ms(seconds: float) -> str:
        return str(int(seconds * 1000))  # TEI's Duration::as_millis: whole milliseconds, truncated

    response.headers.update({
        "x-compute-type": device, "x-compute-time": ms(total_s), "x-total-time": ms(total_s),
        "x-compute-characters": str(outcome.characters), "x-compute-tokens": str(outcome.tokens),
        "x-tokenization-time": ms(outcome.tokenization_s), "x-queue-time": ms(outcome.queue_s),
        "x-inference-time": ms(outcome.inference_s), "x-exit-policy": policy,
    })  # fmt: skip
    if is_batch:
        response.headers["x-mean-exit-layer"] = f"{outcome.mean_exit_layer:.3f}"
    else:
        response.headers["x-exit-layer"] = str(outcome.answers[0].exit_layer)


async def _predict(body: PredictRequest, request: Request, response: Response, models: Models) -> object:
    started = time.perf_counter()  # TEI's start_time: the handler's start
    rows, is_batch = parse_tei_inputs(body.inputs)
    with default_classifier(models, request) as classifier:  # held until answered: a swap lets it finish
        chosen = classifier.policy(None)
        request.state.policy = chosen.name
        call = ClassifyCall(rows=rows, policy=chosen, truncate=bool(body.truncate),
                            truncation_side=body.truncation_direction.lower(), wants_distribution=True)  # fmt: skip
        outcome = await classifier.classify(call, request)
    answers = [_ranked(answer, classifier.bundle.labels, body) for answer in outcome.answers]
    device = classifier.service.engine.device.type  # "cpu" or "cuda" (TEI's is always "gpu+optimized")
    _tei_headers(response, outcome, time.perf_counter() - started, device, chosen.name, is_batch)
    if is_batch:
        return answers
    return [answers[0]] if body.parameters is not None else answers[0]


for path in ("/predict", "/", "/invocations"):
    router.add_api_route(path, _predict, methods=["POST"], response_model=PredictResponse, responses=ERRORS,  # type: ignore[arg-type]
                         name=f"predict{path.replace('/', '_')}")  # fmt: skip
