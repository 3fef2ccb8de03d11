"""The baseline outside our engine: the same fine-tuned weights run by a plain transformers forward (the encoder's
own `forward` at full depth, then the final exit head) behind a minimal FastAPI endpoint, one request at a time.

    python -m bench.plain_forward_server --bundle model_store/minilm-rt-sentiment --port 8100

The `plain` peer of bench/runtime_peers (`peer_server.py` with `--peer plain`), kept under this name for
bench.standard_comparison.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI

from beem.bundle.bundle_reader import load_bundle
from beem.bundle.manifest import resolve_bundle_dir
from bench.runtime_peers.peer_models import build_peer
from bench.runtime_peers.peer_server import DEFAULT_WORK_DIR, create_peer_app
from service.settings import DEFAULT_BUNDLE

PLAIN_POLICY_NAME = "plain-forward"


def create_plain_app(bundle_dir: Path) -> FastAPI:
    bundle = load_bundle(resolve_bundle_dir(bundle_dir))
    peer = build_peer("plain", bundle, DEFAULT_WORK_DIR, torch.get_num_threads())
    peer.name = PLAIN_POLICY_NAME
    return create_peer_app(bundle, peer)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--host", default="127.0.0.1")
    arguments.add_argument("--port", type=int, default=8100)
    args = arguments.parse_args()
    uvicorn.run(create_plain_app(Path(args.bundle)), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
