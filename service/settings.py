"""The server's one settings class: environment (`BEEM_` prefix) with CLI flags on top, validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.engine.classify.device.step_buckets import (
    DEFAULT_ROW_BUCKETS,
    DEFAULT_TOKEN_BUCKETS,
    StepBuckets,
    parse_buckets,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO_ROOT / "model_store" / "minilm-rt-sentiment"


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BEEM_", extra="forbid")

    bundle: Path = Field(DEFAULT_BUNDLE, description="bundle directory (a version, or a model for its latest)")
    more_bundles: list[Path] = Field(
        default_factory=list, description="more bundle directories served beside `bundle` (`--bundle` repeated)"
    )
    model_store: Path | None = Field(
        None, description="serve every model directory under this folder (`bundle` too only when set explicitly)"
    )
    default_model: str | None = Field(
        None, description="model answering requests that name none (default: `bundle`'s when served, else the "
        "first by name); the TEI routes use it (or the first classifier, when it is a captioner)",
    )  # fmt: skip
    poll_interval_s: float = Field(
        30.0, ge=0, description="look for new version directories of served models this often (0: only on "
        "POST /admin/reload or SIGHUP)",
    )  # fmt: skip
    shadow_fraction: float = Field(
        0.02, ge=0, le=1, description="share of early-exited rows re-run at full depth, at low priority, for the "
        "agreement monitor (0: off)",
    )  # fmt: skip
    shadow_max_rows_in_engine: int = Field(4, ge=1, description="shadow rows in flight at once, per model")
    shadow_window: int = Field(400, ge=10, description="recent shadow comparisons the agreement estimate uses")
    alpha_control: list[str] = Field(
        default_factory=list, description="models whose default policy's threshold (BEEM's alpha) is controlled "
        "online from the shadow samples; 'all' for every model",
    )  # fmt: skip
    alpha_control_target: float | None = Field(
        None, gt=0, le=1, description="agreement with full depth to hold (default: 1 - epsilon where the bundle's "
        "ltt rule certified the default policy's disagreement, else the calibration split's agreement)",
    )  # fmt: skip
    alpha_control_step: float = Field(
        0.05, gt=0, le=1, description="one change moves the threshold by this share of its calibrated value"
    )
    alpha_control_min_comparisons: int = Field(50, ge=1, description="shadow comparisons between two changes")
    alpha_control_lowest: float = Field(
        0.8, gt=0, le=1, description="the threshold never goes below this share of its calibrated value"
    )
    latency_slo_ms: float | None = Field(
        None, gt=0, description="latency-SLO mode: while p95 is over this, loosen the threshold within the budget"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_batch_size: int = Field(32, ge=1, le=1024, description="rows in the engine at once, at any depth")
    max_batch_wait_ms: float = Field(
        0.0, ge=0, le=1000,
        description="an idle engine's first row waits this long for others to start with it; 0 = start at once",
    )  # fmt: skip
    max_batch_tokens: int = Field(
        16384, ge=16, description="padded tokens in the engine at once (each group's rows x its longest row)"
    )
    max_queue: int = Field(512, ge=1, description="rows waiting to join the engine; beyond it 429")
    max_queue_wait_ms: float = Field(
        500.0, gt=0, description="expected wait of a new request (work ahead / measured drain rate); beyond it 429"
    )
    refusal_pace_ms: float = Field(
        100.0, ge=0, le=10_000, description="a request refused with 429 for load is answered after this long (no CPU "
        "spent waiting): clients that retry at once cannot turn refusals into a storm that starves the admitted",
    )  # fmt: skip
    group_selection: Literal["deepest", "shallowest", "oldest", "merging"] = Field(
        "oldest",
        description="which group of rows the engine advances next (service/engine/classify/group_selection.py)",
    )
    engine_path: Literal["auto", "host", "device", "compiled"] = Field(
        "auto", description="classification engine's layer path: 'device' keeps state and decisions on the device "
        "(CUDA graphs, one read back per step; service/engine/classify/device/), 'host' the CPU-tuned loop "
        "(service/engine/classify/host/), 'compiled' the host loop with torch.compile'd layers and exit heads "
        "(eager if compiling fails; service/engine/classify/compiled/); auto: device on CUDA, host otherwise",
    )  # fmt: skip
    cuda_graphs: bool = Field(True, description="device path on CUDA: capture each bucket's layer steps as graphs")
    step_row_buckets: str = Field(
        ",".join(map(str, DEFAULT_ROW_BUCKETS)), description="device path: the row counts groups are padded to"
    )
    step_token_buckets: str = Field(
        ",".join(map(str, DEFAULT_TOKEN_BUCKETS)), description="device path: the token widths groups are padded to"
    )
    compile_decisions: bool = Field(
        True, description="device path on CUDA: fuse the exit decision's kernels with torch.compile (eager if not)"
    )
    skip_unprofitable_exits: bool = Field(
        True, description="device path: a group whose exits are not expected to pay runs at full depth"
    )
    request_timeout_s: float = Field(30.0, gt=0, description="a request not answered by then gets 504")
    max_input_tokens: int | None = Field(None, ge=2, description="default: the bundle's max_length")
    max_inputs_per_request: int = Field(64, ge=1)
    max_body_bytes: int = Field(10_000_000, ge=1024, description="largest request body (an uploaded image included)")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="caption bundles: larger images (width x height) get 413 before decoding"
    )
    torch_threads: int | None = Field(None, ge=1)
    api_key: SecretStr | None = None
    # HTTP connections (service/http_protocol.py): what a slow, silent or oversized connection may hold.
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request's line and headers must arrive within this (from the connection's start "
        "or the request's first byte); else 408 and the connection is closed",
    )  # fmt: skip
    body_timeout_s: float = Field(30.0, gt=0, description="a request's whole body must arrive within this; else 408")
    max_header_bytes: int = Field(65536, ge=1024, description="request line and headers together; beyond it 431")
    keep_alive_timeout_s: int = Field(5, ge=1, description="an idle keep-alive connection is closed after this")
    max_connections: int = Field(
        4096, ge=1, description="connections (or requests) at once; a request beyond it gets 503 (uvicorn's "
        "limit_concurrency)",
    )  # fmt: skip
    shutdown_drain_s: float = Field(
        3.0, ge=0, description="after SIGTERM, requests arriving on open connections are still answered this long "
        "(with Connection: close); new connections are refused",
    )  # fmt: skip
    access_log: bool = Field(False, description="log every request (uvicorn's access log); metrics count them anyway")

    @model_validator(mode="after")
    def _bundle_exists(self) -> ServerSettings:
        for bundle in (self.bundle, *self.more_bundles):
            if not bundle.exists():
                raise ValueError(f"bundle {bundle} does not exist")
        if self.model_store is not None and not self.model_store.is_dir():
            raise ValueError(f"model store {self.model_store} is not a directory")
        return self

    def bundle_paths(self) -> list[Path]:
        """The bundle directories named one by one (`bundle` unless only a model store was given)."""
        named_bundle = self.model_store is None or "bundle" in self.model_fields_set
        return [self.bundle, *self.more_bundles] if named_bundle else list(self.more_bundles)

    @model_validator(mode="after")
    def _buckets_parse(self) -> ServerSettings:
        self.step_buckets()
        return self

    def step_buckets(self) -> StepBuckets:
        try:
            return StepBuckets(parse_buckets(self.step_row_buckets), parse_buckets(self.step_token_buckets))
        except ValueError as error:
            raise ValueError(f"step buckets: {error}") from error

    @model_validator(mode="after")
    def _a_full_request_fits_the_queue(self) -> ServerSettings:
        # A request with more rows than the queue holds would get 429 for ever: refuse the settings instead.
        if self.max_inputs_per_request > self.max_queue:
            raise ValueError(
                f"max_inputs_per_request ({self.max_inputs_per_request}) must not exceed max_queue ({self.max_queue})"
            )
        return self
