"""The server on Ray Serve: the same FastAPI app, one copy per replica, replicas autoscaled on ongoing requests.

Each replica builds its own app from `create_app(ServerSettings(...))` at start (`serve.ingress()` with no app,
late-bound through `__serve_build_asgi_app__`): an app carries its engine, whose queue holds a lock and cannot be
pickled, and each replica must load its own model anyway. Serve runs the app's lifespan in the replica, and the
replica only joins routing once the bundle is warm, so Serve's readiness means what /readyz means.

    serve run service.ray_serve_app:app_builder bundle=model_store/minilm-rt-sentiment max_replicas=4
    serve run deploy/ray/serve_config.yaml

Builder arguments are ServerSettings fields (what `BEEM_*` variables would set) plus the scaling knobs of
`ScalingArgs`. This is the only module that imports ray.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve import Application, Deployment
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.app import create_app
from service.model_versions.model_registry import ModelRegistry
from service.settings import ServerSettings

DEPLOYMENT_NAME = "beem"
REPLICA_HEADER = "x-beem-replica"
WARM_POLL_S = 0.05


class ScalingArgs(BaseModel):
    """How many replicas, and when to add one: Serve keeps ongoing requests per replica near the target."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    # Requests in flight per replica (queued in the engine or running). The engine batches, so a replica wants
    # several at once; above the target on average, Serve adds replicas.
    target_ongoing_requests: float = Field(default=16, gt=0)
    max_ongoing_requests: int = Field(default=64, ge=1, description="per replica; beyond it requests wait in the proxy")
    upscale_delay_s: float = Field(default=5.0, ge=0)
    downscale_delay_s: float = Field(default=60.0, ge=0)
    replica_cpus: float = Field(default=1.0, gt=0, description="Ray sets OMP_NUM_THREADS (torch's threads) from this")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ScalingArgs:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        if self.max_ongoing_requests < self.target_ongoing_requests:
            raise ValueError("max_ongoing_requests must be at least target_ongoing_requests")
        return self

    def autoscaling_config(self) -> dict[str, Any]:
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
        }


DEFAULT_SCALING = ScalingArgs()


class BeemReplica:
    """One replica: the settings overrides it was bound with, on top of the replica's `BEEM_*` environment."""

    def __init__(self, settings_overrides: dict[str, Any] | None = None) -> None:
        self.settings_overrides = dict(settings_overrides or {})

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_app(ServerSettings(**self.settings_overrides))
        app.add_middleware(ReplicaHeaderMiddleware, replica=replica_name())
        # Added last = outermost: it sees the lifespan before anything else does.
        app.add_middleware(WarmBeforeStartupMiddleware, models=app.state.models)
        return app


# The decorators applied as calls, not with @: mypy keeps a decorated class's own type, hiding `.options`/`.bind`.
BeemDeployment: Deployment = serve.deployment(
    name=DEPLOYMENT_NAME,
    autoscaling_config=DEFAULT_SCALING.autoscaling_config(),
    max_ongoing_requests=DEFAULT_SCALING.max_ongoing_requests,
    ray_actor_options={"num_cpus": DEFAULT_SCALING.replica_cpus},
)(serve.ingress()(BeemReplica))


def replica_name() -> str:
    """Serve's replica id where there is one, and always host and pid (two replicas never share both)."""
    where = f"{socket.gethostname()}:{os.getpid()}"
    try:
        return f"{serve.get_replica_context().replica_tag}@{where}"
    except RuntimeError:  # not inside a replica (the app built by hand, in a test)
        return where


class ReplicaHeaderMiddleware:
    """Every HTTP response says which replica answered it, so spreading across replicas can be seen."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode("latin-1", "replace"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def add_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, add_header)


class WarmBeforeStartupMiddleware:
    """Holds the lifespan's startup.complete until the bundle is warm, or turns it into startup.failed.

    The app's lifespan loads the model in the background so a lone server answers /healthz at once; under Serve
    a replica takes traffic as soon as startup completes, so a cold replica would answer 503s. Waiting here keeps
    a cold replica out of routing, and a bundle that fails to load fails the replica (Serve retries it).
    """

    def __init__(self, app: ASGIApp, models: ModelRegistry) -> None:
        self.app = app
        self.models = models

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def after_warm(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                error = await self._wait_warm()
                if error is not None:
                    message = {"type": "lifespan.startup.failed", "message": f"the bundle did not load: {error}"}
            await send(message)

        await self.app(scope, receive, after_warm)

    async def _wait_warm(self) -> str | None:
        while True:
            if self.models.all_ready():
                return None
            for model in self.models.models.values():
                version, health = model.active, model.active.engine.health()
                if version.error is not None or health.error is not None or health.closed:
                    return f"{model.name}: {version.error or health.error or 'the engine closed while loading'}"
            await asyncio.sleep(WARM_POLL_S)


def app_builder(args: dict[str, Any]) -> Application:
    """`serve run service.ray_serve_app:app_builder key=value ...`, or `import_path` in a Serve config file.

    Keys of `ScalingArgs` shape the deployment; every other key is a ServerSettings field, validated here so a
    bad bundle path or a typo fails the deploy rather than every replica. Deployment options in a Serve config
    file's `deployments:` section override what this sets.
    """
    scaling_keys = ScalingArgs.model_fields.keys() & args.keys()
    scaling = ScalingArgs(**{key: args[key] for key in scaling_keys})
    overrides = {key: value for key, value in args.items() if key not in scaling_keys}
    ServerSettings(**overrides)
    deployment = BeemDeployment.options(
        autoscaling_config=scaling.autoscaling_config(),
        max_ongoing_requests=scaling.max_ongoing_requests,
        ray_actor_options={"num_cpus": scaling.replica_cpus},
    )
    return deployment.bind(overrides)
