"""From validated request to answered rows: tokenize off the event loop, pick each row's policy, enqueue, await.

The HTTP routes only shape requests and responses; this module is where a request meets the engine. It never
blocks the event loop: long inputs tokenize in a worker thread, the engine runs in its own thread, and the request
waits on one future that its rows resolve as they leave.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import Request

from beem.bundle.bundle_reader import LoadedBundle
from service.answer_waiting import RequestAnswers
from service.engine.inference_engine import InferenceEngine
from service.engine.row_outcome import ClassAnswer
from service.engine.work_item import WorkItem
from service.errors import InputValidationError, NotReadyError, PayloadTooLargeError
from service.policy_choice import ChosenPolicy, choose_policy
from service.schemas import PolicySpec
from service.settings import ServerSettings
from service.text_encoder import TextEncoder

INLINE_TOKENIZE_MAX_CHARS = 2000


@dataclass(frozen=True)
class TextRow:
    text: str
    pair: str | None = None


class ClassificationService:
    def __init__(self, engine: InferenceEngine, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._text_encoder: TextEncoder | None = None  # made once the bundle is loaded

    @property
    def bundle(self) -> LoadedBundle:
        if self.engine.bundle is None or not self.engine.health().warmed_up:
            raise NotReadyError("the model is still loading; retry shortly")
        return self.engine.bundle

    @property
    def max_input_tokens(self) -> int:
        return self.settings.max_input_tokens or self.bundle.max_length

    def choose_policy(self, spec: PolicySpec | None) -> ChosenPolicy:
        return choose_policy(self.bundle.manifest, self.bundle.policies, spec)

    def check_rows(self, rows: Sequence[TextRow]) -> None:
        if not rows:
            raise InputValidationError("inputs is empty")
        if len(rows) > self.settings.max_inputs_per_request:
            raise PayloadTooLargeError(
                f"{len(rows)} inputs in one request; the limit is {self.settings.max_inputs_per_request}"
            )
        for index, row in enumerate(rows):
            if not row.text.strip() or (row.pair is not None and not row.pair.strip()):
                raise InputValidationError(f"inputs[{index}] is empty or whitespace")

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text_encoder is None:
            self._text_encoder = TextEncoder(self.bundle.tokenizer, self.max_input_tokens)
        return self._text_encoder

    def _tokenize(self, rows: Sequence[TextRow], truncate: bool, side: str) -> list[tuple[list[int], list[int] | None]]:
        texts = [row.text for row in rows]
        pairs = [row.pair or "" for row in rows] if any(row.pair is not None for row in rows) else None
        encoded = self.text_encoder.encode(texts, pairs, truncate, side)
        limit = self.max_input_tokens
        for index, (row_ids, _) in enumerate(encoded):
            if len(row_ids) > limit:
                raise InputValidationError(
                    f"inputs[{index}] is {len(row_ids)} tokens; the limit is {limit} (send truncate=true to cut it)"
                )
        return encoded

    async def classify(
        self,
        request: Request,
        rows: Sequence[TextRow],
        chosen: ChosenPolicy,
        max_layers: int | None,
        return_exits: bool,
        truncate: bool,
        truncation_side: str = "right",
        wants_distribution: bool = False,
    ) -> list[ClassAnswer]:
        bundle = self.bundle
        self.check_rows(rows)
        if max_layers is not None and max_layers > bundle.num_layers:
            raise InputValidationError(f"max_layers is {max_layers}; the model has {bundle.num_layers} layers")
        self.engine.queue.check(len(rows))  # shed (429) before spending anything on the request
        if sum(len(row.text) + len(row.pair or "") for row in rows) <= INLINE_TOKENIZE_MAX_CHARS:
            # A few short texts tokenize in ~0.1 ms: cheaper on the loop than a thread hand-off (~0.4 ms).
            encoded = self._tokenize(rows, truncate, truncation_side)
        else:
            encoded = await asyncio.to_thread(self._tokenize, rows, truncate, truncation_side)
        answers = RequestAnswers(asyncio.get_running_loop(), len(rows), ClassAnswer)
        deadline = time.monotonic() + self.settings.request_timeout_s
        items = [
            WorkItem(
                input_ids=input_ids,
                token_type_ids=token_types,
                policy=chosen.policy,
                policy_name=chosen.name,
                last_layer=max_layers or bundle.num_layers,
                return_exits=return_exits,
                wants_distribution=wants_distribution,
                deadline=deadline,
                on_done=answers.callback(row),
            )
            for row, (input_ids, token_types) in enumerate(encoded)
        ]
        self.engine.submit(items)
        return await answers.wait(request, items, self.settings.request_timeout_s, self.engine.notice_cancellation)
