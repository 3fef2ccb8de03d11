"""What each task's model reads and writes over the Open Inference Protocol: its metadata tensors, and how a
decoded request becomes a call of the task's service and its answers become output tensors.

Classification: input `text` (BYTES, one UTF-8 text per element, any shape), optionally `text_pair` (as many);
outputs `label` (BYTES), `score` (FP32, the answering exit's probability of it), `exit_layer` (INT32), each
[N], and `probabilities` (FP32, [N, K], labels in the model's order) when a request asks for it by name.
Captioning: input `image` (BYTES, one PNG or JPEG file per element; base64 text when sent as JSON, since JSON
strings cannot hold raw bytes); outputs `text_output` (BYTES, the caption: the name Triton's text generation
models give their text), `num_tokens` (INT32), `mean_exit_layer` (FP32).

Request parameters (the protocol's $parameters, scalars only): `policy` names the exit policy (default: the
bundle's), any other name sets a parameter of that policy (`alpha`, `threshold`, `vote_above_chance`, ... as in
/v1/classify's policy object); `max_layers` and `truncate` as in /v1/classify. `binary_data_output` and Triton's
reserved names (`sequence_id`, `priority`, `timeout`, ...) are the protocol's, not the policy's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import Request
from pydantic import ValidationError

from service.captioning import ReadyCaptioner
from service.classification import ClassifyCall, ReadyClassifier, TextRow
from service.errors import PayloadTooLargeError, ProtocolError
from service.image_input import decode_base64
from service.open_inference.tensors import InferenceRequest, InputTensor, OutputTensor, Parameter
from service.policy_choice import ChosenPolicy
from service.schemas import POLICY_SPEC, PolicySpec

PROTOCOL_PARAMETERS = frozenset({"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority",
                                 "timeout", "headers"})  # fmt: skip
CALL_PARAMETERS = frozenset({"policy", "max_layers", "truncate"})


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size

    def metadata(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


CLASSIFY_INPUTS: tuple[TensorSpec, ...] = (TensorSpec("text", "BYTES", (-1,)), TensorSpec("text_pair", "BYTES", (-1,)))
CAPTION_INPUTS: tuple[TensorSpec, ...] = (TensorSpec("image", "BYTES", (-1,)),)


def classify_outputs(num_labels: int) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("label", "BYTES", (-1,)),
        TensorSpec("score", "FP32", (-1,)),
        TensorSpec("exit_layer", "INT32", (-1,)),
        TensorSpec("probabilities", "FP32", (-1, num_labels)),
    )


CAPTION_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("text_output", "BYTES", (-1,)),  # Triton's name for generated text
    TensorSpec("num_tokens", "INT32", (-1,)),
    TensorSpec("mean_exit_layer", "FP32", (-1,)),
)
ASKED_ONLY = frozenset({"probabilities"})  # returned when a request names it, not by default


def chosen_outputs(request: InferenceRequest, specs: Sequence[TensorSpec]) -> list[tuple[str, bool]]:
    """(output name, as binary) for each output the request gets: those it names, or every default one."""
    known = {spec.name for spec in specs}
    if request.outputs is None:
        return [(spec.name, request.binary_output(None)) for spec in specs if spec.name not in ASKED_ONLY]
    for output in request.outputs:
        if output.name not in known:
            raise ProtocolError(f"output {output.name!r}: this model has {', '.join(sorted(known))}")
    return [(output.name, request.binary_output(output)) for output in request.outputs]


def policy_spec(parameters: dict[str, Parameter], default_policy: str) -> PolicySpec | None:
    """The request's policy: `policy` and every parameter that is neither the protocol's nor the call's."""
    overrides = {k: v for k, v in parameters.items() if k not in PROTOCOL_PARAMETERS | CALL_PARAMETERS}
    name = parameters.get("policy")
    if name is None and not overrides:
        return None
    if name is not None and not isinstance(name, str):
        raise ProtocolError("parameter policy must be a policy's name")
    try:
        return POLICY_SPEC.validate_python({"name": name or default_policy, **overrides})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'policy'}: {e['msg']}"
                             for e in error.errors()[:5])  # fmt: skip
        raise ProtocolError(f"parameters: {problems}") from error


def _texts(tensor: InputTensor, name: str) -> list[str]:
    try:
        return [element.decode("utf-8") for element in tensor.elements]
    except UnicodeDecodeError as error:
        raise ProtocolError(f"input {name!r}: an element is not UTF-8 text ({error})") from error


def _single(inputs: dict[str, InputTensor], allowed: Sequence[TensorSpec], required: str) -> None:
    unknown = sorted(set(inputs) - {spec.name for spec in allowed})
    if unknown:
        raise ProtocolError(f"input {unknown[0]!r}: this model reads {', '.join(spec.name for spec in allowed)}")
    if required not in inputs:
        raise ProtocolError(f"input {required!r} is missing")
    if not inputs[required].elements:
        raise ProtocolError(f"input {required!r} is empty")


def _flag(parameters: dict[str, Parameter], name: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"parameter {name} must be true or false")
    return value


def _max_layers(parameters: dict[str, Parameter]) -> int | None:
    value = parameters.get("max_layers")
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ProtocolError("parameter max_layers must be a whole number of at least 1")
    return value


async def classify(
    classifier: ReadyClassifier, request: InferenceRequest, http_request: Request
) -> tuple[ChosenPolicy, dict[str, OutputTensor]]:
    _single(request.inputs, CLASSIFY_INPUTS, "text")
    texts = _texts(request.inputs["text"], "text")
    pairs = _texts(request.inputs["text_pair"], "text_pair") if "text_pair" in request.inputs else None
    if pairs is not None and len(pairs) != len(texts):
        raise ProtocolError(f"input 'text_pair' has {len(pairs)} elements, 'text' {len(texts)}")
    parameters = request.parameters
    chosen = classifier.policy(policy_spec(parameters, classifier.bundle.manifest.default_policy))
    http_request.state.policy = chosen.name
    wants_probabilities = request.outputs is not None and any(o.name == "probabilities" for o in request.outputs)
    call = ClassifyCall(rows=tuple(TextRow(text, pairs[i] if pairs else None) for i, text in enumerate(texts)),
                        policy=chosen, max_layers=_max_layers(parameters), truncate=_flag(parameters, "truncate"),
                        wants_distribution=wants_probabilities)  # fmt: skip
    answers = (await classifier.classify(call, http_request)).answers
    labels, count = classifier.bundle.labels, len(answers)
    tensors = {
        "label": OutputTensor("label", "BYTES", (count,), [labels[a.label] for a in answers]),
        "score": OutputTensor("score", "FP32", (count,), [a.score for a in answers]),
        "exit_layer": OutputTensor("exit_layer", "INT32", (count,), [a.exit_layer for a in answers]),
    }
    if wants_probabilities:
        flat = [p for a in answers for p in (a.probabilities or ())]
        tensors["probabilities"] = OutputTensor("probabilities", "FP32", (count, len(labels)), flat)
    return chosen, tensors


async def caption(
    captioner: ReadyCaptioner, request: InferenceRequest, http_request: Request
) -> tuple[ChosenPolicy, dict[str, OutputTensor]]:
    _single(request.inputs, CAPTION_INPUTS, "image")
    image, limit = request.inputs["image"], captioner.service.settings.max_inputs_per_request
    if len(image.elements) > limit:
        raise PayloadTooLargeError(f"{len(image.elements)} images in one request; the limit is {limit}")
    files = image.elements if image.binary else [decode_base64(e.decode("latin-1")) for e in image.elements]
    chosen = captioner.policy(policy_spec(request.parameters, captioner.bundle.manifest.default_policy))
    http_request.state.policy = chosen.name
    answers = await asyncio.gather(*(captioner.caption(http_request, data, chosen) for data in files))
    vocabulary, count = captioner.bundle.vocabulary, len(answers)
    return chosen, {
        "text_output": OutputTensor("text_output", "BYTES", (count,), [vocabulary.decode(a.tokens) for a in answers]),
        "num_tokens": OutputTensor("num_tokens", "INT32", (count,), [len(a.tokens) for a in answers]),
        "mean_exit_layer": OutputTensor("mean_exit_layer", "FP32", (count,),
                                        [sum(a.exit_layers) / max(len(a.exit_layers), 1) for a in answers]),
    }  # fmt: skip
