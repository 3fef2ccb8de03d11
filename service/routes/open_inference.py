"""The Open Inference Protocol's REST routes (KServe v2, Triton's HTTP API), so `tritonclient.http`, KServe's v2
clients and gateways talk to this server unchanged. Paths, payloads and error objects are the protocol's
(kserve/open-inference-protocol, specification/protocol/inference_rest.md; the table "API / Verb / Path"):

    GET  /v2/health/live                         {"live": true}
    GET  /v2/health/ready                        {"ready": bool}: 200 when every served model is ready, else 503
    GET  /v2                                     server metadata: name, version, extensions
    GET  /v2/models/{name}[/versions/{v}]        model metadata: name, versions, platform, inputs, outputs
    GET  /v2/models/{name}[/versions/{v}]/ready  {"name", "ready"}: 200 when ready, else 503
    POST /v2/models/{name}[/versions/{v}]/infer  an inference request -> its response

A version in the path must be the one serving (the versions a model's metadata lists); without one the serving
version answers. Errors are the protocol's error object, `{"error": "..."}` (with this server's `error_type`
beside it): 400 for a request the protocol or the model cannot take, 404 for a model not served, 503 while it
loads, 429 when overloaded. What each model reads and writes: `open_inference/model_signatures.py`; the tensors on
the wire, JSON or Triton's binary data: `open_inference/tensors.py`.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from service.errors import ModelNotFoundError, UnsupportedMediaError
from service.model_versions.model_registry import ModelRegistry, ServedModel
from service.open_inference import model_signatures
from service.open_inference.tensors import HEADER_LENGTH, decode_request, encode_response
from service.routes.dependencies import Models, require_api_key
from service.routes.tei_info import SERVER_VERSION
from service.tasks import CAPTION, CLASSIFICATION

health_router = APIRouter()
router = APIRouter(dependencies=[Depends(require_api_key)])
SERVER_NAME = "beem-serve"
EXTENSIONS = ["binary_tensor_data"]  # Triton's name for its binary data extension (Server Metadata)
PLATFORM = "pytorch_beem"  # the protocol's "<project>_<format>": PyTorch, this project's bundle format


@health_router.get("/v2/health/live")
async def server_live() -> dict[str, bool]:
    """The protocol's Server Live: the process answers HTTP."""
    return {"live": True}


@health_router.get("/v2/health/ready")
async def server_ready(request: Request, models: Models) -> JSONResponse:
    """The protocol's Server Ready: every served model loaded and warm, and not shutting down."""
    ready = models.all_ready() and not request.app.state.shutting_down
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@health_router.get("/v2")
async def server_metadata() -> dict[str, object]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}


def _model(models: ModelRegistry, name: str, version: str | None) -> ServedModel:
    model = models.models.get(name)
    if model is None:
        raise ModelNotFoundError(f"model {name!r} is not served; this server has {', '.join(sorted(models.models))}")
    if version is not None and version != model.active.version:
        raise ModelNotFoundError(f"version {version} of {name!r} does not take requests; version "
                                 f"{model.active.version} does")  # fmt: skip
    return model


async def model_metadata(models: Models, name: str, version: str | None = None) -> dict[str, object]:
    model = _model(models, name, version)
    manifest = model.active.manifest
    if model.task == CLASSIFICATION.name:
        inputs, outputs = model_signatures.CLASSIFY_INPUTS, model_signatures.classify_outputs(len(manifest.labels))
    else:
        inputs, outputs = model_signatures.CAPTION_INPUTS, model_signatures.CAPTION_OUTPUTS
    return {
        "name": name,
        "versions": [model.active.version],
        "platform": PLATFORM,
        "inputs": [spec.metadata() for spec in inputs],
        "outputs": [spec.metadata() for spec in outputs],
    }


async def model_ready(models: Models, name: str, version: str | None = None) -> JSONResponse:
    ready = _model(models, name, version).active.ready
    return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)


async def infer(request: Request, models: Models, name: str, version: str | None = None) -> Response:
    """The protocol's Inference: the body as JSON, or JSON then binary tensors (Triton's extension)."""
    encoding = request.headers.get("content-encoding")
    if encoding not in (None, "identity"):
        raise UnsupportedMediaError(f"content-encoding {encoding}: send the inference request uncompressed")
    decoded = decode_request(await request.body(), request.headers.get(HEADER_LENGTH))
    task = _model(models, name, version).task
    reference = name if version is None else f"{name}:{version}"
    with models.lease(reference, task) as served:  # held until answered: a swap lets it finish
        request.state.model = served.name
        if task == CAPTION.name:
            specs = model_signatures.CAPTION_OUTPUTS
            chosen = model_signatures.chosen_outputs(decoded, specs)  # a wrong output name fails before the work
            _, tensors = await model_signatures.caption(served.captioner(), decoded, request)
        else:
            specs = model_signatures.classify_outputs(len(served.manifest.labels))
            chosen = model_signatures.chosen_outputs(decoded, specs)
            _, tensors = await model_signatures.classify(served.classifier(), decoded, request)
        head: dict[str, object] = {"model_name": name, "model_version": served.version}
    if decoded.id is not None:
        head["id"] = decoded.id
    body, headers = encode_response(head, [(tensors[output], binary) for output, binary in chosen])
    return Response(body, headers=headers)


for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
    router.add_api_route(prefix, model_metadata, methods=["GET"], name=f"model_metadata{prefix.count('/')}")
    router.add_api_route(f"{prefix}/ready", model_ready, methods=["GET"], name=f"model_ready{prefix.count('/')}")
    router.add_api_route(f"{prefix}/infer", infer, methods=["POST"], name=f"infer{prefix.count('/')}")
