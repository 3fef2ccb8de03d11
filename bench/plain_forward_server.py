"""The baseline outside our engine: the same fine-tuned weights run by a plain transformers forward (the encoder's
own `forward` at full depth, then the final exit head) behind a minimal FastAPI endpoint, one request at a time.

    python -m bench.plain_forward_server --bundle model_store/minilm-rt-sentiment --port 8100

It answers `POST /v1/classify` with the subset of our response that `beem loadtest` reads, so the same load
generator drives both servers. The handler runs the model inline on the event loop, as a minimal server would:
requests are served strictly one at a time, with no batching.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from beem.bundle.bundle_reader import load_bundle
from service.settings import DEFAULT_BUNDLE


class PlainRequest(BaseModel):
    inputs: str
    policy: dict[str, Any] | None = None  # accepted and ignored: this server always runs every layer


def create_plain_app(bundle_dir: Path) -> FastAPI:
    bundle = load_bundle(bundle_dir)
    encoder, heads, tokenizer = bundle.model.backbone.model, bundle.model.heads, bundle.tokenizer
    last_exit = bundle.num_layers - 1
    app = FastAPI(title="plain transformers forward (baseline)")

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/classify")
    async def classify(body: PlainRequest) -> dict[str, Any]:
        encoded = tokenizer(body.inputs, truncation=True, max_length=bundle.max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = encoder(**encoded).last_hidden_state  # (1, T, H)
            probabilities = torch.softmax(heads(last_exit, hidden, encoded["attention_mask"]), dim=-1)[0]
        label = int(probabilities.argmax())
        return {"results": [{
            "label": bundle.labels[label], "score": float(probabilities[label]),
            "exit_layer": bundle.num_layers, "num_layers": bundle.num_layers, "policy": "plain-forward",
        }]}  # fmt: skip

    return app


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--host", default="127.0.0.1")
    arguments.add_argument("--port", type=int, default=8100)
    args = arguments.parse_args()
    uvicorn.run(create_plain_app(Path(args.bundle)), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
