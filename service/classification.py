"""From a typed classification call to its typed outcome: tokenize off the event loop, enqueue, await.

The request path has one shape (vLLM's api_router / serving split): a route checks readiness once (a lease
on the model registry's serving version gives it a `ReadyClassifier`), translates the HTTP body into one `ClassifyCall`
(inputs, the chosen policy, limits), makes one `classify` call, and translates the `ClassifyOutcome` back. Nothing
here knows HTTP beyond the request it watches for a disconnect. It never blocks the event loop: long inputs
tokenize in a worker thread, the engine runs in its own thread, and the call waits on one future that its rows
resolve as they leave.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fastapi import Request

from beem.bundle.bundle_reader import LoadedBundle
from beem.policies.exit_policies import ExitPolicy
from service.answer_waiting import RequestAnswers
from service.engine.classify.classification_engine import ClassificationEngine
from service.engine.classify.tokenized_row import TokenizedRow
from service.engine.row_outcome import ClassAnswer
from service.errors import InputValidationError, NotReadyError, PayloadTooLargeError
from service.monitoring.shadow_monitor import ShadowMonitor
from service.policy_choice import ChosenPolicy, choose_policy
from service.schemas import PolicySpec
from service.settings import ServerSettings
from service.text_encoder import TextEncoder, TokenSpan

INLINE_TOKENIZE_MAX_CHARS = 2000
SHADOW_DEADLINE_S = 10.0  # a shadow row not run by then is dropped (counted as timeout): the engine had no room


@dataclass(frozen=True)
class TextRow:
    text: str
    pair: str | None = None


@dataclass(frozen=True, kw_only=True)
class ClassifyCall:
    """One classification request as the service runs it, built once by its route."""

    rows: tuple[TextRow, ...]
    policy: ChosenPolicy
    max_layers: int | None = None  # no row runs deeper (None: the model's depth)
    return_exits: bool = False  # every computed exit in each answer
    truncate: bool = False  # cut inputs over the token limit instead of refusing them
    truncation_side: str = "right"
    wants_distribution: bool = False  # every label's probability and raw score, not only the top label


@dataclass(frozen=True)
class ClassifyOutcome:
    """The call's answers in input order, with what TEI's response headers report."""

    answers: tuple[ClassAnswer, ...]
    characters: int  # of every text and pair
    tokens: int  # every row's token ids, special tokens included
    tokenization_s: float  # mean per row
    queue_s: float  # mean per row: admission until it joined the engine
    inference_s: float  # mean per row: joining the engine until it was answered (rows leave at their own layer)

    @property
    def mean_exit_layer(self) -> float:
        return sum(answer.exit_layer for answer in self.answers) / len(self.answers)


class ClassificationService:
    """Owns the engine and the text encoder; `ready()` is the one readiness check a request makes."""

    def __init__(self, engine: ClassificationEngine, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._text_encoder: TextEncoder | None = None  # made once the bundle is loaded
        self.live_policies: Mapping[str, ExitPolicy] = {}  # what requests are served with (a read-only view:
        # online control moves them)
        self.monitor: ShadowMonitor | None = None  # set once the bundle is loaded

    def ready(self) -> ReadyClassifier:
        """The loaded, warmed-up model; 503 while it is still loading."""
        bundle = self.engine.bundle
        if bundle is None or not self.engine.health().warmed_up:
            raise NotReadyError("the model is still loading; retry shortly")
        if self._text_encoder is None:
            self._text_encoder = TextEncoder(bundle.tokenizer, self.settings.max_input_tokens or bundle.max_length)
        return ReadyClassifier(self, bundle, self._text_encoder)


@dataclass(frozen=True)
class ReadyClassifier:
    """The loaded model as one request sees it: readiness was checked once, when this was made."""

    service: ClassificationService
    bundle: LoadedBundle
    text_encoder: TextEncoder

    @property
    def max_input_tokens(self) -> int:
        return self.text_encoder.max_tokens

    def policy(self, spec: PolicySpec | None) -> ChosenPolicy:
        return choose_policy(self.bundle.manifest, self.service.live_policies or self.bundle.policies, spec)

    async def tokenize(self, texts: Sequence[str], add_special_tokens: bool) -> list[list[TokenSpan]]:
        """Every text's tokens with their spans, untruncated (TEI's /tokenize); long texts off the event loop."""
        self._check_count(len(texts))
        if sum(len(text) for text in texts) <= INLINE_TOKENIZE_MAX_CHARS:
            return self.text_encoder.spans(texts, add_special_tokens)
        return await asyncio.to_thread(self.text_encoder.spans, texts, add_special_tokens)

    async def classify(self, call: ClassifyCall, request: Request) -> ClassifyOutcome:
        self._check_rows(call)
        settings, engine = self.service.settings, self.service.engine
        engine.queue.check(len(call.rows))  # shed (429) before spending anything on the request
        started = time.perf_counter()
        if sum(len(row.text) + len(row.pair or "") for row in call.rows) <= INLINE_TOKENIZE_MAX_CHARS:
            # A few short texts tokenize in ~0.1 ms: cheaper on the loop than a thread hand-off (~0.4 ms).
            encoded = self._encode(call)
        else:
            encoded = await asyncio.to_thread(self._encode, call)
        tokenization_s = time.perf_counter() - started
        answers = RequestAnswers(asyncio.get_running_loop(), len(call.rows), ClassAnswer)
        deadline = time.monotonic() + settings.request_timeout_s
        items = [
            TokenizedRow(
                input_ids=input_ids,
                token_type_ids=token_types,
                policy=call.policy.policy,
                policy_name=call.policy.name,
                last_layer=call.max_layers or self.bundle.num_layers,
                return_exits=call.return_exits,
                wants_distribution=call.wants_distribution,
                deadline=deadline,
                on_done=answers.callback(row),
            )
            for row, (input_ids, token_types) in enumerate(encoded)
        ]
        engine.submit(items)
        results = await answers.wait(request, items, settings.request_timeout_s, engine.notice_cancellation)
        monitor = self.service.monitor
        if monitor is not None and call.max_layers is None and monitor.monitors(call.policy.name, call.policy.policy):
            self._shadow(monitor, call.policy, items, results, time.perf_counter() - started)
        return ClassifyOutcome(
            answers=tuple(results),
            characters=sum(len(row.text) + len(row.pair or "") for row in call.rows),
            tokens=sum(len(item.input_ids) for item in items),
            tokenization_s=tokenization_s / len(items),
            queue_s=sum(item.joined_at - item.enqueued_at for item in items) / len(items),
            inference_s=sum(item.answered_at - item.joined_at for item in items) / len(items),
        )

    def _shadow(
        self,
        monitor: ShadowMonitor,
        chosen: ChosenPolicy,
        items: list[TokenizedRow],
        answers: list[ClassAnswer],
        latency_s: float,
    ) -> None:
        """Count the rows for the agreement monitor, and re-run the sampled early exits at full depth, at low
        priority (no client waits for them)."""
        num_layers = self.bundle.num_layers
        sampled = monitor.observe_rows(chosen.name, [a.exit_layer < num_layers for a in answers], latency_s)
        full = self.bundle.policies["full"]
        for row in sampled:
            item = items[row]
            self.service.engine.queue.submit_shadow(TokenizedRow(
                input_ids=item.input_ids, token_type_ids=item.token_type_ids, policy=full, policy_name="full",
                last_layer=num_layers, deadline=time.monotonic() + SHADOW_DEADLINE_S,
                on_done=monitor.comparison(chosen.name, chosen.policy, answers[row]), shadow=True,
            ))  # fmt: skip

    def _check_count(self, count: int) -> None:
        if count == 0:
            raise InputValidationError("inputs is empty")
        limit = self.service.settings.max_inputs_per_request
        if count > limit:
            raise PayloadTooLargeError(f"{count} inputs in one request; the limit is {limit}")

    def _check_rows(self, call: ClassifyCall) -> None:
        self._check_count(len(call.rows))
        for index, row in enumerate(call.rows):
            if not row.text.strip() or (row.pair is not None and not row.pair.strip()):
                raise InputValidationError(f"inputs[{index}] is empty or whitespace")
        depth = self.bundle.num_layers
        if call.max_layers is not None and call.max_layers > depth:
            raise InputValidationError(f"max_layers is {call.max_layers}; the model has {depth} layers")

    def _encode(self, call: ClassifyCall) -> list[tuple[list[int], list[int] | None]]:
        rows = call.rows
        texts = [row.text for row in rows]
        pairs = [row.pair or "" for row in rows] if any(row.pair is not None for row in rows) else None
        encoded = self.text_encoder.encode(texts, pairs, call.truncate, call.truncation_side)
        limit = self.max_input_tokens
        for index, (row_ids, _) in enumerate(encoded):
            if len(row_ids) > limit:
                raise InputValidationError(
                    f"inputs[{index}] is {len(row_ids)} tokens; the limit is {limit} (send truncate=true to cut it)"
                )
        return encoded
