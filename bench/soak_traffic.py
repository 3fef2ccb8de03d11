"""The soak's request mix (`bench/soak.py`): what each kind of request sends, and how one is sent and recorded.

Kinds, by route: `classify` (/v1/classify, one text or a batch of four, either classifier by name), `predict`
(TEI's /predict, the default classifier), `v2_infer` (/v2/models/{name}/infer, a BYTES tensor of one or two texts),
`caption` (/v1/caption, a base64 image), `bad` (one of several malformed requests, each of which must get a 4xx),
and `disconnect` (a classifier batch or a caption whose client closes the socket a few milliseconds after sending,
without reading: the server must count the row and keep serving). Every other request must get exactly one answer.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loadtest.http_connection import Connection, HttpError

DEFAULT_MIX = {"classify": 30, "predict": 15, "v2_infer": 15, "caption": 8, "bad": 10, "disconnect": 5}
ROUTES = ("classify", "predict", "v2_infer", "caption")  # the kinds whose latency is watched per minute
DISCONNECT_AFTER_S = (0.002, 0.04)  # a disconnecting client closes this long after sending (uniform)


@dataclass(frozen=True)
class SoakRequest:
    kind: str
    path: str
    body: bytes
    rows: int  # rows the server is asked to run (0 for a bad request: none should be admitted)
    model: str | None  # the model named (None: the route's default)


@dataclass(frozen=True)
class SoakAnswer:
    kind: str
    sent_s: float  # seconds after the soak's start
    latency_s: float
    status: int | None  # None: no answer (a transport error or the client's timeout; by design for `disconnect`)
    rows: int
    detail: str = ""  # a non-200 answer's body start, or the transport error


@dataclass(frozen=True)
class SoakCorpus:
    texts: Sequence[str]
    images: Sequence[str]  # base64 PNG / JPEG
    classifiers: Sequence[str]  # model names
    captioner: str


def _json(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def _bad_requests(corpus: SoakCorpus) -> list[tuple[str, bytes]]:
    """Malformed requests a real client sends by mistake; each must be refused with a 4xx and a JSON body."""
    classifier = corpus.classifiers[0]
    wrong_tensor = {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    return [
        ("/v1/classify", b'{"inputs": "an unfinished'),  # malformed JSON
        ("/v1/classify", _json({"inputs": []})),  # nothing to classify
        ("/v1/classify", _json({"inputs": "fine", "model": "no-such-model"})),  # a model not served
        ("/v1/classify", _json({"inputs": "fine", "policy": {"name": "no-such-policy"}})),
        ("/v1/caption", _json({"image": "this is not base64 !!", "model": corpus.captioner})),
        (f"/v2/models/{classifier}/infer", _json(wrong_tensor)),  # texts sent as numbers
        ("/predict", _json({"inputs": [["a", "b", "c"]]})),  # a pair of three
    ]


def build_request(kind: str, index: int, corpus: SoakCorpus) -> SoakRequest:
    """The `index`-th request of `kind`: texts, images and models taken in turn."""
    texts, classifier = corpus.texts, corpus.classifiers[index % len(corpus.classifiers)]
    text = texts[index % len(texts)]
    if kind == "classify":
        batch = [texts[(index + k) % len(texts)] for k in range(4)] if index % 5 == 0 else text
        rows = 4 if isinstance(batch, list) else 1
        return SoakRequest(kind, "/v1/classify", _json({"inputs": batch, "model": classifier, "truncate": True}),
                           rows, classifier)  # fmt: skip
    if kind == "predict":
        return SoakRequest(kind, "/predict", _json({"inputs": text, "truncate": True}), 1, None)
    if kind == "v2_infer":
        data = [text] if index % 3 else [text, texts[(index + 1) % len(texts)]]
        tensor = {"name": "text", "shape": [len(data)], "datatype": "BYTES", "data": data}
        body = _json({"inputs": [tensor], "parameters": {"truncate": True}})
        return SoakRequest(kind, f"/v2/models/{classifier}/infer", body, len(data), classifier)
    if kind == "caption":
        image = corpus.images[index % len(corpus.images)]
        return SoakRequest(kind, "/v1/caption", _json({"image": image, "model": corpus.captioner}), 1, corpus.captioner)
    if kind == "bad":
        bad = _bad_requests(corpus)
        path, body = bad[index % len(bad)]
        return SoakRequest(kind, path, body, 0, None)
    if kind == "disconnect":
        if index % 2:
            image = corpus.images[index % len(corpus.images)]
            return SoakRequest(
                kind, "/v1/caption", _json({"image": image, "model": corpus.captioner}), 1, corpus.captioner
            )
        batch = [texts[(index + k) % len(texts)] for k in range(8)]
        return SoakRequest(kind, "/v1/classify", _json({"inputs": batch, "model": classifier, "truncate": True}),
                           8, classifier)  # fmt: skip
    raise ValueError(f"unknown request kind {kind!r}")


class ConnectionShelf:
    """Idle keep-alive connections to one server, lent one request at a time (more are opened as load needs)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[Connection] = []

    async def send(self, request: SoakRequest, t0: float, timeout_s: float) -> SoakAnswer:
        if request.kind == "disconnect":
            return await self._send_and_hang_up(request, t0)
        connection = self._idle.pop() if self._idle else Connection(self.host, self.port, None)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                response = await connection.post(request.path, request.body)
        except (HttpError, OSError, TimeoutError) as error:
            connection.close()  # a half-read answer must not be reused
            return SoakAnswer(request.kind, started - t0, time.perf_counter() - started, None, request.rows,
                              f"{type(error).__name__}: {error}")  # fmt: skip
        self._idle.append(connection)
        detail = "" if response.status == 200 else response.body[:200].decode(errors="replace")
        return SoakAnswer(request.kind, started - t0, time.perf_counter() - started, response.status, request.rows,
                          detail)  # fmt: skip

    async def _send_and_hang_up(self, request: SoakRequest, t0: float) -> SoakAnswer:
        started = time.perf_counter()
        try:
            _, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as error:
            return SoakAnswer(request.kind, started - t0, 0.0, None, request.rows, f"connect: {error}")
        head = (f"POST {request.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(request.body)}\r\n\r\n").encode()  # fmt: skip
        writer.write(head + request.body)
        await asyncio.sleep(random.uniform(*DISCONNECT_AFTER_S))
        writer.close()
        return SoakAnswer(request.kind, started - t0, time.perf_counter() - started, None, request.rows, "hung up")

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


def kinds_in_order(mix: dict[str, int], seed: int) -> list[str]:
    """One cycle of the mix (each kind as often as its weight), shuffled once: requests take kinds in this order."""
    cycle = [kind for kind, weight in mix.items() for _ in range(weight)]
    random.Random(seed).shuffle(cycle)
    return cycle
