"""A lean HTTP/1.1 client for load generation: keep-alive connections, one request at a time each, JSON bodies.

Why not httpx: on the 2-core machines this project is measured on, the load generator shares the cores with the
server it measures, and every millisecond of client CPU is taken from the server. httpx spends several
milliseconds of CPU per request there (README, "Load testing"); this spends a small fraction of that: the request
is a few bytes formatted once, the response is a status line, headers read up to the blank line, and a
Content-Length body (or a chunked one). Nothing else of HTTP is needed to drive our servers (and TEI-like ones).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    """The connection failed or the peer spoke something this client does not read."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[bytes, bytes]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    def __init__(self, host: str, port: int, headers: dict[str, str] | None) -> None:
        self.host, self.port = host, port
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._head_suffix = f"Host: {host}:{port}\r\nContent-Type: application/json\r\n{extra}".encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def post(self, path: str, body: bytes) -> HttpResponse:
        """POST `body`; reconnects once if the kept-alive connection was closed by the server."""
        for attempt in (0, 1):
            if self._writer is None:
                await self._connect()
            try:
                return await self._exchange(path, body)
            except (ConnectionError, asyncio.IncompleteReadError) as error:
                self.close()
                if attempt:
                    raise HttpError(str(error)) from error
        raise AssertionError("unreachable")

    async def _exchange(self, path: str, body: bytes) -> HttpResponse:
        assert self._reader is not None and self._writer is not None
        self._writer.write(
            f"POST {path} HTTP/1.1\r\n".encode() + self._head_suffix + b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"not an HTTP/1.x status line: {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            payload = await self._read_chunked()
        else:
            payload = await self._reader.readexactly(int(headers.get(b"content-length", b"0")))
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return HttpResponse(int(parts[1]), headers, payload)

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        chunks: list[bytes] = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await self._reader.readexactly(size + 2)
            if not size:
                return b"".join(chunks)
            chunks.append(chunk[:-2])


class ConnectionPool:
    """Connections to one server, lent one request at a time (a closed-loop client keeps its own; an open loop
    borrows whichever is free and opens more as load needs)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url}: the load generator speaks plain http://host:port only")
        self.host, self.port = parts.hostname, parts.port or 80
        self.headers = headers
        self._idle: list[Connection] = []
        self._all: list[Connection] = []

    async def post_json(self, path: str, payload: Any, timeout_s: float) -> HttpResponse:
        connection = self._idle.pop() if self._idle else self._new()
        try:
            async with asyncio.timeout(timeout_s):
                response = await connection.post(path, json.dumps(payload).encode())
        except BaseException:
            connection.close()  # a half-read response must not be reused
            raise
        self._idle.append(connection)
        return response

    def _new(self) -> Connection:
        connection = Connection(self.host, self.port, self.headers)
        self._all.append(connection)
        return connection

    async def __aenter__(self) -> ConnectionPool:
        return self

    async def __aexit__(self, *_: object) -> None:
        for connection in self._all:
            connection.close()
