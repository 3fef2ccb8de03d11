"""An in-process app over the tiny bundle, through the real factory, lifespan and engine thread."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ServerSettings


def ready_client(settings: ServerSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.05)
        yield client


@pytest.fixture(scope="module")
def client(tiny_bundle_dir: Path) -> Iterator[TestClient]:
    yield from ready_client(
        ServerSettings(bundle=tiny_bundle_dir, max_inputs_per_request=8, max_body_bytes=4096, max_input_tokens=16)
    )
