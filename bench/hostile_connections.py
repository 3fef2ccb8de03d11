"""A good request's latency while hostile connections run against the same `beem serve` (issue 25, deliverable 4):
headers a byte a second, oversized header blocks, many idle keep-alive connections, clients that never read
their responses, bodies that trickle in. The server runs with its default connection limits (service/settings.py).

    python -m bench.hostile_connections [--bundle DIR] [--requests 40] [--idle 1000] [--out bench/results]

For each attack: the median and p95 of `--requests` sequential good requests (one text, the bundle's default
policy, from one keep-alive client) with the attack running, against the same measured just before it with nothing
else running, and their ratio. Writes `hostile_connections_cpu.json` and `.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from beem.bundle.manifest import resolve_bundle_dir
from bench.result_files import write_results
from bench.server_process import ServerProcess
from service.settings import DEFAULT_BUNDLE

GOOD = {"inputs": "a gorgeous, moving film"}
Attack = Callable[[int, threading.Event], None]  # (port, stop) -> runs until stop is set


def _open(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def slow_headers(port: int, stop: threading.Event, connections: int = 50) -> None:
    """Slowloris: many connections each sending its request line a byte a second (reconnecting when cut)."""
    request = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    sockets = [(_open(port), 0) for _ in range(connections)]
    while not stop.is_set():
        for index, (connection, sent) in enumerate(sockets):
            try:
                connection.sendall(request[sent % len(request) : sent % len(request) + 1])
                sockets[index] = (connection, sent + 1)
            except OSError:
                connection.close()
                sockets[index] = (_open(port), 0)
        stop.wait(1.0)
    for connection, _ in sockets:
        connection.close()


def large_headers(port: int, stop: threading.Event) -> None:
    """Header blocks over the limit, one after another as fast as they are refused."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200_000 + b"\r\n\r\n"
    while not stop.is_set():
        with contextlib.suppress(OSError), _open(port) as connection:
            connection.sendall(request)
            connection.recv(4096)


def idle_keep_alive(port: int, stop: threading.Event, connections: int = 1000) -> None:
    """Many connections that make one request and then sit idle, reopened as the server closes them."""
    while not stop.is_set():
        opened = []
        for _ in range(connections):
            with contextlib.suppress(OSError):
                connection = _open(port)
                connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                opened.append(connection)
        stop.wait(4.0)
        for connection in opened:
            connection.close()


def never_read(port: int, stop: threading.Event, connections: int = 20) -> None:
    """Clients that pipeline requests for /openapi.json (large, and cheap to serve: built once) and never read an
    answer, so the server's writes to them back up."""
    hoarders = []
    for _ in range(connections):
        connection = _open(port)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        connection.setblocking(False)
        hoarders.append(connection)
    request = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 50
    while not stop.is_set():
        for connection in hoarders:
            with contextlib.suppress(OSError):
                connection.send(request)
        stop.wait(0.5)
    for connection in hoarders:
        connection.close()


def slow_body(port: int, stop: threading.Event, connections: int = 50) -> None:
    """Bodies announced at 1 kB that arrive a byte a second (reconnecting when cut)."""
    head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    sockets = []
    for _ in range(connections):
        connection = _open(port)
        connection.sendall(head)
        sockets.append(connection)
    while not stop.is_set():
        for index, connection in enumerate(sockets):
            try:
                connection.sendall(b" ")
            except OSError:
                connection.close()
                sockets[index] = _open(port)
                sockets[index].sendall(head)
        stop.wait(1.0)
    for connection in sockets:
        connection.close()


ATTACKS: dict[str, Attack] = {"slow headers": slow_headers, "oversized headers": large_headers,
                              "idle keep-alive": idle_keep_alive, "never reads": never_read,
                              "slow body": slow_body}  # fmt: skip


def good_latencies(url: str, count: int) -> list[float]:
    """`count` requests one after another from one keep-alive client, as a well-behaved client sends them."""
    seconds = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = client.post("/v1/classify", json=GOOD)
            seconds.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return seconds


@contextlib.contextmanager
def running(attack: Attack, port: int) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=attack, args=(port, stop), daemon=True)
    thread.start()
    time.sleep(2.0)  # let it build up
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def summary(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": statistics.median(seconds) * 1000, "p95_ms": statistics.quantiles(seconds, n=20)[-1] * 1000}


def run(bundle_dir: Path, requests: int) -> dict[str, Any]:
    server = ServerProcess([sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle_dir)])
    results: dict[str, Any] = {}
    try:
        good_latencies(server.url, 10)  # warm
        for name, attack in ATTACKS.items():
            print(name, file=sys.stderr)
            alone = summary(good_latencies(server.url, requests))
            with running(attack, server.port):
                attacked = summary(good_latencies(server.url, requests))
            results[name] = {"alone": alone, "under attack": attacked,
                             "p50_ratio": attacked["p50_ms"] / alone["p50_ms"],
                             "p95_ratio": attacked["p95_ms"] / alone["p95_ms"]}  # fmt: skip
    finally:
        server.stop()
    return {"bundle": str(bundle_dir), "date": time.strftime("%Y-%m-%d"), "requests": requests, "attacks": results}


def table(results: dict[str, Any]) -> str:
    lines = ["| attack | good request p50 alone / attacked (ms) | p50 ratio | p95 alone / attacked (ms) | p95 ratio |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, row in results["attacks"].items():
        alone, attacked = row["alone"], row["under attack"]
        lines.append(f"| {name} | {alone['p50_ms']:.1f} / {attacked['p50_ms']:.1f} | {row['p50_ratio']:.2f}x | "
                     f"{alone['p95_ms']:.1f} / {attacked['p95_ms']:.1f} | {row['p95_ratio']:.2f}x |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--requests", type=int, default=40)
    arguments.add_argument("--out", type=Path, default=Path("bench/results"))
    args = arguments.parse_args()
    results = run(resolve_bundle_dir(Path(args.bundle)), args.requests)
    write_results(args.out, "hostile_connections_cpu", results, table(results))


if __name__ == "__main__":
    main()
