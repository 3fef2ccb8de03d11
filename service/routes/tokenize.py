"""POST /tokenize, as text-embeddings-inference serves it (huggingface/text-embeddings-inference,
router/src/http/server.rs `tokenize`; shapes in types.rs `TokenizeRequest` / `SimpleToken`).

One text or a list of texts; always answered with a list per text (a single text gives [[...]]), untruncated.
Offsets are UTF-8 byte offsets into the text, as TEI's are; a special token has its own string as text and no
offsets. TEI's `prompt_name` selects a prompt this server does not have, so it is refused with a 422.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from service.errors import InputValidationError
from service.routes.dependencies import Models, default_classifier, require_api_key
from service.schemas import ErrorBody, SimpleToken, TokenizeRequest

router = APIRouter(dependencies=[Depends(require_api_key)])
ERRORS = {status: {"model": ErrorBody} for status in (401, 413, 422, 503)}


@router.post("/tokenize", response_model=list[list[SimpleToken]], responses=ERRORS)  # type: ignore[arg-type]
async def tokenize(body: TokenizeRequest, request: Request, models: Models) -> list[list[SimpleToken]]:
    if body.prompt_name is not None:
        raise InputValidationError(f"prompt_name {body.prompt_name!r}: this model has no prompts")
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    with default_classifier(models, request) as classifier:
        spans_per_text = await classifier.tokenize(texts, body.add_special_tokens)
    return [
        [SimpleToken(id=t.id, text=t.text, special=t.special, start=t.start, stop=t.stop) for t in spans]
        for spans in spans_per_text
    ]
