"""Wire schemas: what clients send and receive (DESIGN 5.5: separate from internal types and the manifest)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from beem.policies.policy_registry import POLICY_NAMES

PolicyName = Literal["beem-a", "beem-c", "max-prob", "entropy", "patience", "static", "full"]
assert set(PolicyName.__args__) == set(POLICY_NAMES)  # type: ignore[attr-defined]


class PolicySpec(BaseModel):
    """Which exit rule a request uses. Omitted parameters take the bundle's calibrated values."""

    model_config = ConfigDict(extra="forbid")

    name: PolicyName
    alpha: float | None = Field(None, ge=0, description="beem-a / beem-c: exit once the score reaches alpha")
    threshold: float | None = Field(
        None, ge=0, description="max-prob: minimum max probability (<= 1); entropy: maximum entropy in nats"
    )
    patience: int | None = Field(None, ge=0, le=1024, description="patience: agreeing exits in a row")
    layer: int | None = Field(None, ge=1, description="static: the layer every sample exits at")


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: StrictStr | list[StrictStr] | list[tuple[StrictStr, StrictStr]] = Field(
        description="a text, a list of texts, or a list of [text, text_pair] pairs"
    )
    policy: PolicySpec | None = Field(None, description="default: the bundle's calibrated beem-a")
    max_layers: int | None = Field(None, ge=1, description="no sample runs deeper than this layer")
    return_exits: StrictBool = Field(False, description="list every computed exit's label and confidence")
    truncate: StrictBool = Field(False, description="cut inputs longer than the model's limit instead of 422")


class ExitInfo(BaseModel):
    layer: int
    label: str
    confidence: float


class ClassifyResult(BaseModel):
    label: str
    score: float = Field(description="probability of `label` at the exit that answered")
    exit_layer: int
    num_layers: int
    policy: str
    exits: list[ExitInfo] | None = None


class ClassifyResponse(BaseModel):
    model: str = Field(description="bundle name:version")
    results: list[ClassifyResult]
    mean_exit_layer: float


class Prediction(BaseModel):
    """One label's score, as text-embeddings-inference's /predict returns it."""

    label: str
    score: float


class PredictRequest(BaseModel):
    """text-embeddings-inference's classification request: `inputs` is a text, a [text, pair] pair, or a batch
    of [text] / [text, pair] lists. Served with the bundle's calibrated BEEM-A."""

    inputs: StrictStr | list[StrictStr] | list[list[StrictStr]]
    truncate: StrictBool | None = False
    truncation_direction: Literal["left", "right", "Left", "Right"] = "right"
    raw_scores: StrictBool = False


class ErrorBody(BaseModel):
    error: str
    error_type: str


class CaptionRequest(BaseModel):
    """The JSON form of /v1/caption (multipart uploads carry the same fields as form parts)."""

    model_config = ConfigDict(extra="forbid")

    image: StrictStr = Field(description="the PNG or JPEG file, base64-encoded (a data: URL prefix is allowed)")
    policy: PolicySpec | None = Field(None, description="default: the bundle's calibrated beem-a")


class CaptionResponse(BaseModel):
    model: str = Field(description="bundle name:version")
    caption: str
    tokens: list[str] = Field(description="every generated token, the end token included when it was produced")
    token_exit_layers: list[int] = Field(description="the decoder layer each token exited at (1-based)")
    mean_exit_layer: float
    num_layers: int
    policy: str
