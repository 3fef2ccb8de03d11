"""The Open Inference Protocol's tensors on the wire: an inference request's body decoded into named inputs, and
named outputs encoded into a response body, as JSON or with Triton's binary tensor data extension.

The request and response objects are the protocol's (kserve/open-inference-protocol,
specification/protocol/inference_rest.md: "Inference Request JSON Object", "Inference Response JSON Object",
"Tensor Data"): tensors are `{name, shape, datatype, data}` with `data` in row-major order, flat or nested.
Binary data is Triton's extension (triton-inference-server/server, docs/protocol/extension_binary_data.md): the
JSON object comes first, `Inference-Header-Content-Length` gives its length, each binary tensor's bytes follow in
tensor order and its `parameters.binary_data_size` gives their count; a BYTES element is a 4-byte little-endian
length and the bytes; "binary_data" on a requested output, or "binary_data_output" on the request, asks for
binary outputs. `tritonclient.http` sends and asks for binary data by default.

Only what this server's models read and write is decoded: BYTES inputs (texts, images) and FP32 / INT32 / BYTES
outputs. Anything else is a `ProtocolError` (400) that says what was wrong.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import ProtocolError

Parameter = str | int | float | bool
HEADER_LENGTH = "inference-header-content-length"  # HTTP header names are case-insensitive
BINARY_SIZE = "binary_data_size"
NUMERIC_OUTPUTS = {"FP32": "<f4", "INT32": "<i4"}  # datatype -> numpy little-endian dtype


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None  # its "binary_data" parameter; None: the request's "binary_data_output" decides


@dataclass(frozen=True)
class InputTensor:
    shape: tuple[int, ...]
    elements: list[bytes]  # row-major
    binary: bool  # sent as binary data (else as JSON strings, UTF-8 encoded here)


@dataclass(frozen=True)
class InferenceRequest:
    """A decoded inference request: its BYTES inputs by name."""

    id: str | None
    parameters: dict[str, Parameter]
    inputs: dict[str, InputTensor]
    outputs: tuple[RequestedOutput, ...] | None  # None: every default output

    def binary_output(self, output: RequestedOutput | None) -> bool:
        default = self.parameters.get("binary_data_output") is True
        return default if output is None or output.binary is None else output.binary


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str  # FP32, INT32 or BYTES
    shape: tuple[int, ...]
    values: Sequence[Any]  # row-major: floats, ints, or str / bytes for BYTES


def decode_request(body: bytes, header_length: str | None) -> InferenceRequest:
    """The request body (and its Inference-Header-Content-Length, if any) as an `InferenceRequest`."""
    json_part, binary = body, b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {header_length!r}: not a length within the "
                                f"{len(body)}-byte body")  # fmt: skip
        json_part, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        request = json.loads(json_part)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProtocolError(f"the inference request is not JSON: {error}") from error
    if not isinstance(request, dict):
        raise ProtocolError("the inference request must be a JSON object")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("id must be a string")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("inputs must be a non-empty list of tensors")
    inputs: dict[str, InputTensor] = {}
    offset = 0
    for index, raw in enumerate(raw_inputs):
        name, tensor, offset = _decode_input(raw, index, binary, offset)
        if name in inputs:
            raise ProtocolError(f"input {name!r} is given twice")
        inputs[name] = tensor
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data follow the tensors that claim them")
    return InferenceRequest(request_id, _parameters(request.get("parameters"), "parameters"), inputs,
                            _requested_outputs(request.get("outputs")))  # fmt: skip


def _decode_input(raw: object, index: int, binary: bytes, offset: int) -> tuple[str, InputTensor, int]:
    """One $request_input: its name, the tensor, and where the next binary tensor starts."""
    where = f"inputs[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ProtocolError(f"{where} must be a tensor object with a name")
    name = raw["name"]
    where = f"input {name!r}"
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):  # fmt: skip
        raise ProtocolError(f"{where}: shape must be a list of non-negative integers")
    if raw.get("datatype") != "BYTES":
        raise ProtocolError(f"{where}: datatype {raw.get('datatype')!r}; this model reads BYTES (UTF-8 texts or "
                            "image files)")  # fmt: skip
    count = math.prod(shape)
    parameters = _parameters(raw.get("parameters"), f"{where} parameters")
    size = parameters.get(BINARY_SIZE)
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise ProtocolError(f"{where}: binary_data_size {size!r} does not fit the {len(binary) - offset} "
                                "binary bytes left")  # fmt: skip
        elements = _bytes_elements(binary[offset : offset + size], where)
        offset += size
    elif "data" in raw:
        elements = [_json_element(value, where) for value in _flattened(raw["data"], where)]
    else:
        raise ProtocolError(f"{where} has neither data nor binary_data_size")
    if len(elements) != count:
        raise ProtocolError(f"{where}: shape {shape} holds {count} elements, the data {len(elements)}")
    return name, InputTensor(tuple(shape), elements, binary=size is not None), offset


def _bytes_elements(data: bytes, where: str) -> list[bytes]:
    """Binary BYTES: each element a 4-byte little-endian length, then that many bytes."""
    elements, position = [], 0
    while position < len(data):
        if position + 4 > len(data):
            raise ProtocolError(f"{where}: binary BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", data, position)
        position += 4
        if position + length > len(data):
            raise ProtocolError(f"{where}: a binary BYTES element of {length} bytes runs past the tensor's data")
        elements.append(data[position : position + length])
        position += length
    return elements


def _flattened(data: object, where: str) -> list[object]:
    if not isinstance(data, list):
        raise ProtocolError(f"{where}: data must be a list")
    flat: list[object] = []
    pending: list[object] = [data]
    while pending:  # depth-first, left to right: row-major order
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def _json_element(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(f"{where}: BYTES data in JSON must be strings, got {type(value).__name__}")
    return value.encode("utf-8", errors="surrogatepass")


def _parameters(raw: object, where: str) -> dict[str, Parameter]:
    """The protocol's $parameters: names to a string, number or boolean."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str | int | float | bool) for v in raw.values()):
        raise ProtocolError(f"{where} must map names to a string, number or boolean")
    return dict(raw)


def _requested_outputs(raw: object) -> tuple[RequestedOutput, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw):
        raise ProtocolError("outputs must be a list of objects with a name")
    requested = []
    for output in raw:
        binary = _parameters(output.get("parameters"), f"output {output['name']!r} parameters").get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise ProtocolError(f"output {output['name']!r}: binary_data must be true or false")
        requested.append(RequestedOutput(output["name"], binary))
    return tuple(requested)


def encode_response(
    head: Mapping[str, object], outputs: Sequence[tuple[OutputTensor, bool]]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: `head` (model_name, model_version, id) and each output, in binary
    when its flag says so (then Inference-Header-Content-Length gives the JSON's length)."""
    described, chunks = [], []
    for tensor, binary in outputs:
        entry: dict[str, object] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if binary:
            chunk = _binary(tensor)
            entry["parameters"] = {BINARY_SIZE: len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = [v.decode() if isinstance(v, bytes) else v for v in tensor.values]
        described.append(entry)
    header = json.dumps({**head, "outputs": described}, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {"content-type": "application/octet-stream",
                                       "inference-header-content-length": str(len(header))}  # fmt: skip


def _binary(tensor: OutputTensor) -> bytes:
    if tensor.datatype == "BYTES":
        encoded = [v if isinstance(v, bytes) else str(v).encode() for v in tensor.values]
        return b"".join(struct.pack("<I", len(v)) + v for v in encoded)
    return np.asarray(tensor.values, dtype=NUMERIC_OUTPUTS[tensor.datatype]).tobytes()
