"""How a request waits for the engine thread's answers without blocking the event loop: futures resolved from
the engine thread, a watcher that flags the rows when the client leaves, and the request's deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from fastapi import Request

from service.errors import ClientGoneError, RequestTimeoutError

DISCONNECT_POLL_S = 0.05
OutcomeT = TypeVar("OutcomeT")


class Cancellable(Protocol):
    cancelled: bool


class Dropped(Protocol):
    @property
    def dropped(self) -> str | None: ...


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
    futures: list[asyncio.Future[OutcomeT]],
    timeout_s: float,
) -> list[OutcomeT]:
    """Every row's outcome; 499 when the client left, 504 past the deadline (the rows are flagged either way, so
    the engine spends nothing more on them)."""
    watcher = asyncio.create_task(_cancel_when_client_leaves(request, items))
    try:
        outcomes = await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
    except TimeoutError as error:
        for item in items:
            item.cancelled = True
        raise RequestTimeoutError(f"not answered within {timeout_s} s") from error
    finally:
        watcher.cancel()
    dropped = next((o.dropped for o in outcomes if o.dropped), None)  # type: ignore[attr-defined]
    if dropped == "client_gone":
        raise ClientGoneError("the client closed the connection")
    if dropped == "timeout":
        raise RequestTimeoutError(f"not answered within {timeout_s} s")
    if dropped is not None:
        raise RuntimeError(f"engine could not answer: {dropped}")
    return list(outcomes)


async def _cancel_when_client_leaves(request: Request, items: Sequence[Cancellable]) -> None:
    """Poll for a disconnect while rows are in flight; the engine then drops them before its next step."""
    with contextlib.suppress(asyncio.CancelledError):
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        for item in items:
            item.cancelled = True
