"""How a request waits for the engine thread's answers without blocking the event loop: futures resolved from
the engine thread, a watcher that flags the rows when the client leaves, and the request's deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from fastapi import Request

from service.engine.row_outcome import CaptionAnswer, ClassAnswer, Dropped, RowFate, RowOutcome
from service.errors import (
    ClientGoneError,
    EngineFailureError,
    RequestTimeoutError,
    ServiceError,
    ShuttingDownError,
)

DISCONNECT_POLL_S = 0.05
OutcomeT = TypeVar("OutcomeT")
AnswerT = TypeVar("AnswerT", ClassAnswer, CaptionAnswer)


class Cancellable(Protocol):
    cancelled: bool


def resolver(loop: asyncio.AbstractEventLoop, future: asyncio.Future[OutcomeT]) -> Callable[[OutcomeT], None]:
    """A thread-safe callback that hands one outcome to the request's event loop."""

    def resolve(outcome: OutcomeT) -> None:
        loop.call_soon_threadsafe(_set_once, future, outcome)

    return resolve


def _set_once(future: asyncio.Future[OutcomeT], outcome: OutcomeT) -> None:
    if not future.done():
        future.set_result(outcome)


async def wait_for_outcomes(
    request: Request,
    items: Sequence[Cancellable],
    futures: list[asyncio.Future[RowOutcome]],
    timeout_s: float,
    on_client_gone: Callable[[], None],
    answer_type: type[AnswerT],
) -> list[AnswerT]:
    """Every row's answer, or the error for the first row that has none: 499 when the client left, 504 past the
    deadline (the engine drops the rows at its next step, counting them as timed out), 503 at shutdown, 500 when
    the engine step failed."""
    watcher = asyncio.create_task(_cancel_when_client_leaves(request, items, on_client_gone))
    try:
        outcomes = await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
    except TimeoutError as error:
        raise RequestTimeoutError(f"not answered within {timeout_s} s") from error
    finally:
        watcher.cancel()
    answers = []
    for outcome in outcomes:
        if isinstance(outcome, Dropped):
            raise _error_for(outcome, timeout_s)
        assert isinstance(outcome, answer_type)
        answers.append(outcome)
    return answers


def _error_for(dropped: Dropped, timeout_s: float) -> ServiceError:
    if dropped.fate is RowFate.CLIENT_GONE:
        return ClientGoneError("the client closed the connection")
    if dropped.fate is RowFate.TIMEOUT:
        return RequestTimeoutError(f"not answered within {timeout_s} s")
    if dropped.fate is RowFate.SHUTDOWN:
        return ShuttingDownError("the server is shutting down")
    return EngineFailureError(f"the engine failed on this request ({dropped.detail or dropped.fate})")


async def _cancel_when_client_leaves(
    request: Request, items: Sequence[Cancellable], on_client_gone: Callable[[], None]
) -> None:
    """Poll for a disconnect while rows are in flight; the engine then drops them before its next step."""
    with contextlib.suppress(asyncio.CancelledError):
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        for item in items:
            item.cancelled = True
        on_client_gone()
