"""Wire schemas: what clients send and receive (DESIGN 5.5: separate from internal types and the manifest)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictStr,
    StringConstraints,
    Tag,
    TypeAdapter,
    create_model,
)

from beem.policies.policy_table import POLICY_TABLE, PolicyDefinition


def _unicode_text(text: str) -> str:
    """JSON can carry a lone UTF-16 surrogate ("\\ud800"), which is no Unicode character: no tokenizer can read
    it and no UTF-8 response can echo it. Such text is refused (422, where in the text), as TEI's JSON parser
    refuses it, rather than silently changed into U+FFFD: a client is told its text was not what it meant."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"character {error.start} is U+{ord(text[error.start]):04X}, a lone UTF-16 surrogate, which is not "
            "Unicode text"
        ) from None
    return text


# Every text a client sends: a JSON string that is Unicode text.
Text = Annotated[StrictStr, AfterValidator(_unicode_text)]

# `inputs` takes several shapes. Each is tagged by what the value looks like, so a bad one is reported against
# the shape it was meant as ("inputs.1: ...") rather than once per shape it is not; errors.py leaves the tags out
# of locations.
INPUT_SHAPE_TAGS = ("text", "texts", "batch")


def _inputs_shape(value: Any) -> str | None:
    if isinstance(value, str):
        return "text"
    if isinstance(value, list | tuple):
        return "batch" if value and all(isinstance(item, list | tuple) for item in value) else "texts"
    return None


def _inputs(description: str, **shapes: Any) -> Any:
    """A union over `shapes` (tag -> type), each chosen by `_inputs_shape`; a value of no listed shape is one
    error that says which shapes `inputs` takes."""

    def shape(value: Any) -> str | None:
        tag = _inputs_shape(value)
        return tag if tag in shapes else None

    members = tuple(Annotated[kind, Tag(tag)] for tag, kind in shapes.items())
    return Annotated[
        Union[members],  # noqa: UP007
        Discriminator(shape, custom_error_type="inputs_shape", custom_error_message=description),
    ]


CLASSIFY_INPUTS_SHAPE = "a text, a list of texts, or a list of [text, text_pair] pairs"
PREDICT_INPUTS_SHAPE = "a text, a [text, pair] list, or a batch of [text] / [text, pair] lists"
TOKENIZE_INPUTS_SHAPE = "a text or a list of texts"
if TYPE_CHECKING:
    ClassifyInputs = str | list[str] | list[tuple[str, str]]
    PredictInputs = str | list[str] | list[list[str]]
    TokenizeInputs = str | list[str]
else:
    ClassifyInputs = _inputs(CLASSIFY_INPUTS_SHAPE, text=Text, texts=list[Text], batch=list[tuple[Text, Text]])
    PredictInputs = _inputs(PREDICT_INPUTS_SHAPE, text=Text, texts=list[Text], batch=list[list[Text]])
    TokenizeInputs = _inputs(TOKENIZE_INPUTS_SHAPE, text=Text, texts=list[Text])


class PolicyRequest(BaseModel):
    """Which exit rule a request uses. Omitted parameters take the bundle's calibrated values."""

    model_config = ConfigDict(extra="forbid")

    name: str

    def overrides(self) -> dict[str, object]:
        """The parameters this request sets, by their names in the policy table."""
        return self.model_dump(exclude={"name"}, exclude_none=True)


def _request_model(definition: PolicyDefinition) -> type[PolicyRequest]:
    """One wire model per policy of the table: its name as the tag, its per-request parameters with their
    ranges (a bound that depends on the model, such as static's layer, is checked against the loaded bundle)."""
    fields: dict[str, Any] = {"name": (Literal[definition.name], Field(description=definition.summary))}
    for parameter in definition.request_parameters:
        low = parameter.low if math.isfinite(parameter.low) else None
        high = parameter.high if math.isfinite(parameter.high) else None
        kind = {"whole": int, "flag": bool}.get(parameter.kind, float)
        fields[parameter.name] = (kind | None, Field(None, description=parameter.description, ge=low, le=high))
    title = "".join(part.capitalize() for part in definition.name.split("-")) + "Policy"
    return create_model(title, __base__=PolicyRequest, **fields)


POLICY_REQUEST_MODELS = tuple(_request_model(definition) for definition in POLICY_TABLE.values())
if TYPE_CHECKING:
    PolicySpec = PolicyRequest
else:
    PolicySpec = Annotated[Union[POLICY_REQUEST_MODELS], Field(discriminator="name")]  # noqa: UP007
POLICY_SPEC = TypeAdapter(PolicySpec)


MODEL_REFERENCE = 'the model to run, "name" or "name:version" (default: the server\'s default model of this task)'
# A model name as the builder writes it, optionally with the version that must be serving.
ModelReference = Annotated[
    str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(:[0-9]{1,9})?$")
]


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: ClassifyInputs = Field(description=CLASSIFY_INPUTS_SHAPE)
    model: ModelReference | None = Field(None, description=MODEL_REFERENCE)
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


class InferenceParameters(BaseModel):
    """The Hugging Face Inference API's text-classification parameters (what huggingface_hub's
    `InferenceClient.text_classification` sends); TEI itself has none."""

    top_k: int | None = Field(None, ge=1, description="only the k best labels")
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
        None, description="scores from the logits: softmax (default), sigmoid, or none (the logits)"
    )


class PredictRequest(BaseModel):
    """text-embeddings-inference's classification request (router/src/http/types.rs `PredictRequest`): `inputs`
    is a text, a [text, pair] pair, or a batch of [text] / [text, pair] lists; unknown keys are ignored, as TEI
    ignores them. Served with the bundle's calibrated default policy."""

    inputs: PredictInputs = Field(description=PREDICT_INPUTS_SHAPE)
    truncate: StrictBool | None = False
    truncation_direction: Literal["left", "right", "Left", "Right"] = "right"
    raw_scores: StrictBool = False
    parameters: InferenceParameters | None = Field(
        None, description="the Inference API's form (routes/predict.py): top_k, function_to_apply, nested answer"
    )


class TokenizeRequest(BaseModel):
    """TEI's /tokenize request (types.rs `TokenizeRequest`)."""

    inputs: TokenizeInputs = Field(description=TOKENIZE_INPUTS_SHAPE)
    add_special_tokens: StrictBool = True
    prompt_name: Text | None = Field(None, description="TEI's prompts; this server has none (422 if set)")


class SimpleToken(BaseModel):
    """TEI's token (types.rs `SimpleToken`): start and stop are UTF-8 byte offsets, null for special tokens."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class ClassifierModel(BaseModel):
    id2label: dict[str, str]
    label2id: dict[str, int]


class ModelType(BaseModel):
    classifier: ClassifierModel


class PolicyGuarantee(BaseModel):
    """A threshold certified by Learn then Test (beem/calibration/learn_then_test.py): with probability at least
    1 - delta over the calibration draw, the policy's risk on new inputs from the same distribution is at most
    epsilon."""

    risk: str = Field(description="'disagreement' with full depth, or 'excess-error': wrong where full depth is right")
    epsilon: float
    delta: float
    n: int = Field(description="calibration samples")
    losses: int = Field(description="of those, how many had a loss at the certified threshold")
    observed_risk: float
    p_value: float | None = Field(description="the binomial tail at the certified threshold; null: none certified")
    certified: bool = Field(description="false: nothing that exits early was certified, so it never does")
    statement: str


class EarlyExitInfo(BaseModel):
    """What TEI's Info does not have: the early-exit model behind the classifier."""

    bundle: str = Field(description="bundle name:version")
    num_layers: int
    default_policy: str
    policies: list[str]
    backbone: str
    engine_path: str = Field(description="'device', 'host' or 'compiled' (service/engine/classify/layer_paths.py)")
    engine_path_detail: str | None = Field(
        None, description="the compiled path: its warm-up compilation time, or why it fell back to eager"
    )
    guarantees: dict[str, PolicyGuarantee] | None = Field(
        None, description="by policy, the certified risk of those calibrated by Learn then Test; null: none were"
    )


class InfoResponse(BaseModel):
    """TEI's GET /info (router/src/lib.rs `Info`), with `early_exit` added."""

    model_id: str
    model_sha: str | None
    model_dtype: str
    served_model_name: str
    model_type: ModelType
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None
    docker_label: str | None
    early_exit: EarlyExitInfo


class ErrorBody(BaseModel):
    error: str
    error_type: str


class CaptionRequest(BaseModel):
    """The JSON form of /v1/caption (multipart uploads carry the same fields as form parts)."""

    model_config = ConfigDict(extra="forbid")

    image: StrictStr = Field(description="the PNG or JPEG file, base64-encoded (a data: URL prefix is allowed)")
    model: ModelReference | None = Field(None, description=MODEL_REFERENCE)
    policy: PolicySpec | None = Field(None, description="default: the bundle's calibrated beem-a")


class CaptionResponse(BaseModel):
    model: str = Field(description="bundle name:version")
    caption: str
    tokens: list[str] = Field(description="every generated token, the end token included when it was produced")
    token_exit_layers: list[int] = Field(description="the decoder layer each token exited at (1-based)")
    mean_exit_layer: float
    num_layers: int
    policy: str
