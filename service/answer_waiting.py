"""How a request waits for its rows' outcomes without blocking the event loop.

One `RequestAnswers` per request: the engine thread hands it each row's outcome; it wakes the event loop once,
when the last row has left (or at the first row that cannot be answered: the request fails then, and its other
rows are flagged so the engine spends nothing more on them). A client that leaves is noticed by a watcher that
starts only if the request is still waiting after one poll interval, so a fast request costs no extra task.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from fastapi import Request

from service.engine.row_outcome import Dropped, RowAnswer, RowFate, RowOutcome
from service.errors import (
    ClientGoneError,
    EngineFailureError,
    RequestTimeoutError,
    ServiceError,
    ShuttingDownError,
)

DISCONNECT_POLL_S = 0.05
AnswerT = TypeVar("AnswerT", bound=RowAnswer)


class Cancellable(Protocol):
    def cancel(self, fate: RowFate = ...) -> None: ...


class RequestAnswers(Generic[AnswerT]):
    """Collects the outcomes of one request's rows (from any thread) into one future on the request's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, num_rows: int, answer_type: type[AnswerT]) -> None:
        self.loop = loop
        self.answer_type: type[AnswerT] = answer_type
        self.future: asyncio.Future[list[RowOutcome]] = loop.create_future()
        self._outcomes: list[RowOutcome | None] = [None] * num_rows
        self._missing = num_rows
        self._lock = threading.Lock()  # rows of one request may leave from the engine thread and the event loop

    def callback(self, row: int) -> Callable[[RowOutcome], None]:
        """What row `row` calls when it leaves (its `on_done`)."""
        return lambda outcome: self._row_left(row, outcome)

    def _row_left(self, row: int, outcome: RowOutcome) -> None:
        with self._lock:
            if self._missing == 0:
                return  # already resolved (an earlier row failed the request)
            self._outcomes[row] = outcome
            self._missing = 0 if isinstance(outcome, Dropped) else self._missing - 1
            if self._missing:
                return
            outcomes: list[RowOutcome] = (
                [outcome] if isinstance(outcome, Dropped) else [o for o in self._outcomes if o is not None]
            )
        self.loop.call_soon_threadsafe(_set_once, self.future, outcomes)

    async def wait(
        self, request: Request, items: Sequence[Cancellable], timeout_s: float, on_client_gone: Callable[[], None]
    ) -> list[AnswerT]:
        """Every row's answer, or the error of the first row that has none: 499 when the client left, 504 past the
        deadline (the engine drops the rows at its next step, counting them as timed out), 503 at shutdown, 500
        when the engine step failed."""
        watching: list[asyncio.Task[None]] = []
        start_watching = self.loop.call_later(
            DISCONNECT_POLL_S,
            lambda: watching.append(asyncio.ensure_future(_cancel_when_client_leaves(request, items, on_client_gone))),
        )
        try:
            async with asyncio.timeout(timeout_s):
                outcomes = await self.future
        except TimeoutError as error:
            raise RequestTimeoutError(f"not answered within {timeout_s} s") from error
        finally:
            start_watching.cancel()
            for task in watching:
                task.cancel()
        answers: list[AnswerT] = []
        for outcome in outcomes:
            if isinstance(outcome, Dropped):
                for item in items:  # the request has failed: its other rows are not worth computing
                    item.cancel(outcome.fate)
                on_client_gone()
                raise _error_for(outcome, timeout_s)
            assert isinstance(outcome, self.answer_type)
            answers.append(outcome)
        return answers


def _set_once(future: asyncio.Future[list[RowOutcome]], outcomes: list[RowOutcome]) -> None:
    if not future.done():
        future.set_result(outcomes)


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
            item.cancel(RowFate.CLIENT_GONE)
        on_client_gone()
