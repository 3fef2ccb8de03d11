"""Slow, oversized and idle connections against a real `beem serve` process (service/http_protocol.py), and the
drain on SIGTERM: each attack is cut or held off by its limit while a good request beside it is answered; a
request sent on an open keep-alive connection at the moment of the signal is answered, with Connection: close.

The limits are set small here so the tests take seconds (the defaults are in service/settings.py). How much a
good request slows during each attack is measured by `python -m bench.hostile_connections`, not asserted."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_real_server import ServerProcess

LIMITS = ("--header-timeout-s", "1", "--max-header-bytes", "8192", "--keep-alive-timeout-s", "1",
          "--body-timeout-s", "1", "--shutdown-drain-s", "2")  # fmt: skip
GOOD = {"inputs": "a gorgeous, moving film", "policy": {"name": "full"}}
GOOD_REQUEST_BOUND_S = 5.0  # answered, not held behind an attack (timing is the bench's)


@pytest.fixture(scope="module")
def server(tiny_bundle_dir: Path) -> Iterator[ServerProcess]:
    running = ServerProcess(tiny_bundle_dir, *LIMITS)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def _connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _read_all(connection: socket.socket) -> bytes:
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def _good_request_answered(server: ServerProcess) -> None:
    started = time.monotonic()
    response = httpx.post(f"{server.url}/v1/classify", json=GOOD, timeout=GOOD_REQUEST_BOUND_S)
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < GOOD_REQUEST_BOUND_S


def test_headers_sent_a_byte_at_a_time_get_408_and_are_cut(server: ServerProcess) -> None:
    slow = _connect(server)
    request = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    started = time.monotonic()
    for byte in request[:6]:  # a byte every 0.1 s: within the 1 s deadline only the first 10 could arrive
        slow.sendall(bytes([byte]))
        time.sleep(0.1)
    _good_request_answered(server)  # beside it
    answer = _read_all(slow)  # the server closes it once the 1 s deadline passes
    assert answer.startswith(b"HTTP/1.1 408") and b"request headers too slow" in answer
    assert time.monotonic() - started < 5


def test_a_connection_that_sends_nothing_is_closed(server: ServerProcess) -> None:
    silent = _connect(server)
    started = time.monotonic()
    assert _read_all(silent) == b""  # closed without a word
    assert 0.5 < time.monotonic() - started < 5


def test_an_oversized_header_block_gets_431(server: ServerProcess) -> None:
    big = _connect(server)
    big.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 20_000 + b"\r\n\r\n")
    answer = _read_all(big)
    assert answer.startswith(b"HTTP/1.1 431") and b"over 8192 bytes" in answer
    _good_request_answered(server)


def test_a_large_body_is_not_taken_for_a_large_header_block(server: ServerProcess) -> None:
    """The header limit counts what arrives before the headers end: a body of 300 kB after them is the body's."""
    body = b'{"inputs": "fine", "padding": "' + b"a" * 300_000 + b'"}'
    response = httpx.post(f"{server.url}/v1/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "padding" in response.text  # read and judged as a body


def test_a_body_sent_too_slowly_gets_408(server: ServerProcess) -> None:
    slow = _connect(server)
    slow.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"inputs\"")  # fmt: skip
    _good_request_answered(server)
    answer = _read_all(slow)
    assert answer.startswith(b"HTTP/1.1 408") and b"body" in answer


def test_many_idle_keep_alive_connections_are_closed_and_do_not_block_a_good_request(server: ServerProcess) -> None:
    idle = []
    for _ in range(300):
        connection = _connect(server)
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        idle.append(connection)
    _good_request_answered(server)
    time.sleep(2.5)  # past the 1 s keep-alive timeout
    closed = 0
    for connection in idle:
        connection.settimeout(2)
        with contextlib.suppress(TimeoutError):  # still open: not counted
            answer = _read_all(connection)  # the answer to its request, then the server's close
            closed += answer.startswith(b"HTTP/1.1 200")
        connection.close()
    assert closed == len(idle)


def test_a_client_that_never_reads_its_responses_does_not_hold_up_others(server: ServerProcess) -> None:
    hoarder = _connect(server)
    hoarder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(200):  # pipelined, never read: the server's writes back up
        try:
            hoarder.sendall(request)
        except OSError:
            break
    _good_request_answered(server)
    hoarder.close()


def _refuses_new_connections(server: ServerProcess) -> bool:
    try:
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        return False
    except OSError:
        return True


def test_after_sigterm_an_open_keep_alive_connection_is_still_answered_with_connection_close(
    tiny_bundle_dir: Path,
) -> None:
    running = ServerProcess(tiny_bundle_dir, *LIMITS)
    try:
        running.wait_ready()
        with httpx.Client(base_url=running.url, timeout=30) as client:  # one keep-alive connection
            assert client.post("/v1/classify", json=GOOD).status_code == 200
            running.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while not _refuses_new_connections(running):  # shutdown has begun: no new connections
                assert time.monotonic() < deadline, "the server should stop accepting connections"
                time.sleep(0.05)
            answered = client.post("/v1/classify", json=GOOD)  # on the connection opened before the signal
            assert answered.status_code == 200, answered.text
            assert answered.headers["connection"] == "close"
        assert running.process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    finally:
        running.stop()


def test_keep_alive_clients_sending_through_sigterm_lose_no_request_sent_before_it(tiny_bundle_dir: Path) -> None:
    """16 plain keep-alive clients send back to back while the signal lands: every request begun before the
    signal is answered (after it, a client whose connection was closed may find new connections refused). The
    signal waits until every client has had an answer, so each has its connection open: a client still starting
    (16 threads each building an httpx client take over a second on two busy cores) would open a new connection
    after the signal, which the drain refuses by design."""
    running = ServerProcess(tiny_bundle_dir, *LIMITS)
    outcomes: list[tuple[float, str]] = []  # (when the request was begun, "200" or what it got instead)
    stop = threading.Event()
    connected = threading.Semaphore(0)  # released once per client, at its first answer

    def client_loop() -> None:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            first = True
            while not stop.is_set():
                begun = time.monotonic()
                try:
                    got = str(client.post("/v1/classify", json=GOOD).status_code)
                except httpx.TransportError as error:
                    got = type(error).__name__
                outcomes.append((begun, got))
                if got != "200":
                    return
                if first:
                    connected.release()
                    first = False

    try:
        running.wait_ready()
        clients = [threading.Thread(target=client_loop) for _ in range(16)]
        for thread in clients:
            thread.start()
        for _ in clients:
            assert connected.acquire(timeout=60), "a client got no first answer"
        time.sleep(0.5)  # back to back on open connections
        signalled_at = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        time.sleep(3.0)  # through the drain
        stop.set()
        for thread in clients:
            thread.join(30)
        before = [got for begun, got in outcomes if begun < signalled_at]
        unanswered = [got for got in before if got != "200"]
        assert len(before) > 20 and not unanswered, f"{len(unanswered)} of {len(before)} unanswered: {unanswered}"
        assert running.process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    finally:
        stop.set()
        running.stop()
