"""The HTTP connection policy (issue 25): uvicorn's httptools protocol with the limits it does not have, and a
drain on shutdown that answers what arrives on open connections instead of dropping it.

uvicorn closes an idle keep-alive connection only after a response (`timeout_keep_alive`), so a connection that
never finishes its headers (a byte a second; or nothing at all) stays open for ever, a body may trickle in for
ever, and httptools accepts a header block of any size. Here, per connection:
- `header_timeout_s`: from the connection's start, or from the first byte of each next request, its request line
  and headers must be complete within this; otherwise 408 and the connection is closed (a connection that has
  sent nothing is just closed).
- `body_timeout_s`: from the end of the headers, the whole body must arrive within this; otherwise 408.
- `max_header_bytes`: the request line and headers together; beyond it 431 and the connection is closed.
- `timeout_keep_alive` (uvicorn's, `keep_alive_timeout_s`) closes a connection idle between requests, and
  `limit_concurrency` (`max_connections`) answers 503 beyond that many connections or requests at once.
A deadline is a number each connection keeps (set and cleared as its request moves on, no timer per request),
checked for every connection by one sweep every `SWEEP_INTERVAL_S`: a deadline is enforced within that much of its
time. (A first version armed and cancelled two timers per request: `bench/request_overhead.py` measured short
requests 1.05-1.06x the tree before it in one run; this one 1.00x.)

On SIGTERM uvicorn stops accepting connections and closes every idle one at once: a client that sent a request on
a keep-alive connection a moment before gets a reset, not an answer (3 of 237 requests in the held-back probe).
Here an idle connection stays open for `drain_s`: a request that arrives on it is answered, with `Connection:
close`, and the connection closes after it (or at the end of the drain if nothing came). New connections are
refused from the signal on, and the readiness probes say not ready (`on_drain`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

SWEEP_INTERVAL_S = 0.25


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int
    drain_s: float
    on_drain: Callable[[], None]  # called when shutdown starts draining the connections


def _status_response(status: bytes, message: str) -> bytes:
    body = ('{"error":"' + message + '","error_type":"timeout"}').encode()
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)  # fmt: skip


class GuardedHttpProtocol(HttpToolsProtocol):
    """httptools' protocol with header and body deadlines, a header size limit and a drain on shutdown."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._deadline: float | None = None  # loop time by which the current stage must be done; None: no limit
        self._deadline_says = ""  # what the 408 says when it passes ("" closes silently)
        self._header_bytes = 0  # of the request line and headers parsed so far (exact, from the parser)
        self._awaiting_headers = True  # between requests, or in one whose headers have not all arrived
        self._bytes_awaiting_headers = 0  # received in that state: a header block arriving in chunks is cut
        # after the first chunk over the limit, not parsed to its end (httptools reports a header only when whole)
        self._draining = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._set_deadline(self.limits.header_timeout_s, "")
        _start_sweeping(self.loop, self.connections)

    # -- deadlines ----------------------------------------------------------------------------------------

    def _set_deadline(self, seconds: float, says: str) -> None:
        self._deadline, self._deadline_says = self.loop.time() + seconds, says

    def expire_if_late(self, now: float) -> None:
        """The sweep's check: past its deadline, the connection is answered 408 (or closed) and cut."""
        if self._deadline is None or now < self._deadline or self.transport.is_closing():
            return
        self._deadline = None
        responding = self.cycle is not None and self.cycle.response_started
        if self._deadline_says and not responding:
            self.transport.write(_status_response(b"408 Request Timeout", self._deadline_says))
        self.transport.close()

    # -- the header size limit and the stages of a request ------------------------------------------------

    def _refuse_large_headers(self) -> None:
        self._deadline = None
        message = f"request line and headers over {self.limits.max_header_bytes} bytes"
        self.transport.write(_status_response(b"431 Request Header Fields Too Large", message))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused or timed out: what still arrives is not parsed
        if self._awaiting_headers:
            self._bytes_awaiting_headers += len(data)
        super().data_received(data)
        too_much = self._bytes_awaiting_headers > self.limits.max_header_bytes
        if self._awaiting_headers and too_much and not self.transport.is_closing():
            self._refuse_large_headers()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._deadline is None or not self._deadline_says:  # a keep-alive connection's next request
            self._set_deadline(self.limits.header_timeout_s, "request headers too slow")

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse_large_headers()
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            if not self.transport.is_closing():
                self._refuse_large_headers()
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.transport.is_closing():
            return
        self._awaiting_headers = False
        self._bytes_awaiting_headers = 0
        self._set_deadline(self.limits.body_timeout_s, "request body not received in time")
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered, then closed: `Connection: close`

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._deadline = None  # the request is in; its answer takes what it takes (request_timeout_s bounds it)
        self._awaiting_headers = True  # the next request's

    # -- the drain on shutdown ----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """uvicorn's shutdown closes an idle connection at once; here it waits `drain_s` for a request first."""
        if not self._draining:
            self._draining = True
            self.limits.on_drain()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # busy: its response ends it
            return
        self.loop.call_later(self.limits.drain_s, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
        else:
            self.cycle.keep_alive = False


_sweeping: set[int] = set()  # ids of the connection sets (one per server) a sweep runs over


def _start_sweeping(loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
    """One sweep per server: every SWEEP_INTERVAL_S, each connection past its deadline is cut."""
    if id(connections) in _sweeping:
        return
    _sweeping.add(id(connections))

    def sweep() -> None:
        now = loop.time()
        for connection in list(connections):
            if isinstance(connection, GuardedHttpProtocol):
                connection.expire_if_late(now)
        loop.call_later(SWEEP_INTERVAL_S, sweep)

    loop.call_later(SWEEP_INTERVAL_S, sweep)


def guarded_protocol(limits: ConnectionLimits) -> Callable[..., GuardedHttpProtocol]:
    """What uvicorn's `http` setting takes: a protocol class, here with its limits bound."""
    return partial(GuardedHttpProtocol, limits=limits)
