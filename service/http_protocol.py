"""The HTTP connection policy (issue 25): uvicorn's httptools protocol with the limits it does not have, and a
drain on shutdown that answers what arrives on open connections instead of dropping it.

uvicorn closes an idle keep-alive connection only after a response (`timeout_keep_alive`), so a connection that
never finishes its headers (a byte a second; or nothing at all) stays open for ever, and httptools accepts a header
block of any size. Here, per connection:
- `header_timeout_s`: from the connection's start, or from the first byte of each next request, its request line
  and headers must be complete within this; otherwise 408 and the connection is closed.
- `max_header_bytes`: the request line and headers together; beyond it 431 and the connection is closed.
- `timeout_keep_alive` (uvicorn's, `keep_alive_timeout_s`) closes a connection idle between requests, and
  `limit_concurrency` (`max_connections`) answers 503 beyond that many connections or requests at once.

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


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    max_header_bytes: int
    drain_s: float
    on_drain: Callable[[], None]  # called once, when shutdown starts draining the connections


def _status_response(status: bytes, message: str) -> bytes:
    body = ('{"error":"' + message + '","error_type":"bad_request"}').encode()
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)  # fmt: skip


class GuardedHttpProtocol(HttpToolsProtocol):
    """httptools' protocol with a header deadline, a header size limit and a drain on shutdown."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._header_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0  # of the request line and headers parsed so far (exact, from the parser)
        self._in_headers = False
        self._awaiting_headers = True  # between requests, or in one whose headers have not all arrived
        self._bytes_awaiting_headers = 0  # received in that state: a header block arriving in chunks is cut
        # after the first chunk over the limit, not parsed to its end (httptools reports a header only when whole)
        self._draining = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    # -- the header deadline and size limit ---------------------------------------------------------------

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.limits.header_timeout_s, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        if self._in_headers:  # a request has begun: say why it is cut (a silent connection just closes)
            self.transport.write(_status_response(b"408 Request Timeout", "request headers too slow"))
        self.transport.close()

    def _refuse_large_headers(self) -> None:
        self._disarm_header_deadline()
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
        self._header_bytes, self._in_headers = 0, True
        self._arm_header_deadline()  # a keep-alive connection's next request: its own deadline

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
        self._disarm_header_deadline()
        self._in_headers = self._awaiting_headers = False
        self._bytes_awaiting_headers = 0
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered, then closed: `Connection: close`

    def on_message_complete(self) -> None:
        super().on_message_complete()
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


def guarded_protocol(limits: ConnectionLimits) -> Callable[..., GuardedHttpProtocol]:
    """What uvicorn's `http` setting takes: a protocol class, here with its limits bound."""
    return partial(GuardedHttpProtocol, limits=limits)
