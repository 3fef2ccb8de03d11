"""One full-depth peer (`peer_models.PEERS`) behind a minimal FastAPI endpoint, one request at a time.

    python -m bench.runtime_peers.peer_server --peer onnx-int8 [--bundle DIR] [--work-dir runs/runtime_peers] --port P

It answers `POST /v1/classify` with the subset of our response that `beem loadtest` reads, so the same load
generator drives every server. The handler runs the peer inline on the event loop, as a minimal server would:
requests are served strictly one at a time, with no batching. `/readyz` answers once the peer is built and warm.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from beem.bundle.bundle_reader import LoadedBundle, load_bundle
from beem.bundle.manifest import resolve_bundle_dir
from bench.runtime_peers.peer_models import PEERS, Peer, build_peer
from service.settings import DEFAULT_BUNDLE

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WORK_DIR = REPO_ROOT / "runs" / "runtime_peers"


class PeerRequest(BaseModel):
    inputs: str
    policy: dict[str, Any] | None = None  # accepted and ignored: a peer always runs every layer
    truncate: bool = True  # likewise: a peer truncates to the bundle's maximum length


def create_peer_app(bundle: LoadedBundle, peer: Peer) -> FastAPI:
    app = FastAPI(title=f"{peer.name}: full depth (baseline)")

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/classify")
    async def classify(body: PeerRequest) -> dict[str, Any]:
        probabilities = torch.softmax(peer.logits([body.inputs]), dim=-1)[0]  # (C,)
        label = int(probabilities.argmax())
        return {"results": [{
            "label": bundle.labels[label], "score": float(probabilities[label]),
            "exit_layer": bundle.num_layers, "num_layers": bundle.num_layers, "policy": peer.name,
        }]}  # fmt: skip

    return app


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--peer", choices=PEERS, required=True)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR), help="where the ONNX files are (or go)")
    arguments.add_argument("--host", default="127.0.0.1")
    arguments.add_argument("--port", type=int, default=8100)
    args = arguments.parse_args()
    bundle = load_bundle(resolve_bundle_dir(Path(args.bundle)))
    peer = build_peer(args.peer, bundle, Path(args.work_dir), torch.get_num_threads())
    uvicorn.run(create_peer_app(bundle, peer), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
