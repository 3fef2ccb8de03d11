"""The Open Inference Protocol's tensors on the wire (service/open_inference/tensors.py), table-driven: requests
as tritonclient builds them (binary and JSON) decode to the elements sent; malformed bodies are a ProtocolError
that says what was wrong; responses encode so that tritonclient's own parser reads back what was encoded."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.http._utils import _get_inference_request

from service.errors import ProtocolError
from service.open_inference.tensors import (
    InferenceRequest,
    OutputTensor,
    RequestedOutput,
    decode_request,
    encode_response,
)


def _client_body(values: list[bytes], binary: bool, shape: list[int] | None = None) -> tuple[bytes, str | None]:
    """The body and Inference-Header-Content-Length tritonclient sends for one BYTES input `text`."""
    tensor = triton.InferInput("text", shape or [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_).reshape(shape or [len(values)]), binary_data=binary)
    body, json_size = _get_inference_request([tensor], "7", None, 0, False, False, 0, None, {"policy": "full"})
    return body, None if json_size is None else str(json_size)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("values", [[b"one text"], [b"a", "caf\u00e9 na\u00efve".encode(), b""], [b"x"] * 5])
def test_what_tritonclient_sends_decodes_to_the_elements_sent(values: list[bytes], binary: bool) -> None:
    body, header_length = _client_body(values, binary)
    decoded = decode_request(body, header_length)
    assert decoded.id == "7" and decoded.parameters["policy"] == "full"
    assert decoded.parameters["binary_data_output"] is True  # no outputs named: all of them, binary
    assert decoded.inputs["text"].elements == values and decoded.inputs["text"].shape == (len(values),)
    assert decoded.inputs["text"].binary is binary


def test_nested_json_data_is_read_in_row_major_order() -> None:
    body, _ = _client_body([b"a", b"b", b"c", b"d"], binary=False, shape=[2, 2])
    assert json.loads(body)["inputs"][0]["data"] in (["a", "b", "c", "d"], [["a", "b"], ["c", "d"]])
    nested = json.dumps({"inputs": [{"name": "text", "shape": [2, 2], "datatype": "BYTES",
                                     "data": [["a", "b"], ["c", "d"]]}]}).encode()  # fmt: skip
    assert decode_request(nested, None).inputs["text"].elements == [b"a", b"b", b"c", b"d"]


def _json(inputs: object, **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


TEXT = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}
MALFORMED = [
    (b"not json", None, "not JSON"),
    (b"[1, 2]", None, "JSON object"),
    (_json([]), None, "non-empty list"),
    (_json([{"shape": [1]}]), None, "with a name"),
    (_json([{**TEXT, "datatype": "FP32", "data": [1.0]}]), None, "reads BYTES"),
    (_json([{**TEXT, "shape": [2]}]), None, "holds 2 elements, the data 1"),
    (_json([{**TEXT, "shape": [-1]}]), None, "non-negative"),
    (_json([{**TEXT, "data": [3]}]), None, "must be strings"),
    (_json([{"name": "text", "shape": [1], "datatype": "BYTES"}]), None, "neither data nor binary_data_size"),
    (_json([TEXT, TEXT]), None, "given twice"),
    (_json([TEXT], id=5), None, "id must be a string"),
    (_json([TEXT], parameters={"policy": ["a"]}), None, "string, number or boolean"),
    (_json([TEXT], outputs=[{"name": "label", "parameters": {"binary_data": "yes"}}]), None, "true or false"),
    (_json([TEXT]), "999", "not a length within"),
    (_json([TEXT]), "x", "not a length within"),
    (_json([TEXT]) + b"\x00", str(len(_json([TEXT]))), "1 bytes of binary data follow"),
    (_json([{**TEXT, "parameters": {"binary_data_size": 8}}]) + b"\x05\x00\x00\x00ab",
     str(len(_json([{**TEXT, "parameters": {"binary_data_size": 8}}]))), "does not fit"),
    (_json([{**TEXT, "parameters": {"binary_data_size": 6}}]) + b"\x05\x00\x00\x00ab",
     str(len(_json([{**TEXT, "parameters": {"binary_data_size": 6}}]))), "runs past"),
    (_json([{**TEXT, "parameters": {"binary_data_size": 2}}]) + b"\x05\x00",
     str(len(_json([{**TEXT, "parameters": {"binary_data_size": 2}}]))), "inside an element's length"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "header_length", "says"), MALFORMED)
def test_a_malformed_request_is_a_protocol_error_that_says_what(body: bytes, header_length: str | None,
                                                                 says: str) -> None:  # fmt: skip
    with pytest.raises(ProtocolError, match=says):
        decode_request(body, header_length)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_reads_back_what_is_encoded(binary: bool) -> None:
    outputs = [
        (OutputTensor("label", "BYTES", (3,), ["positive", "négatif", ""]), binary),
        (OutputTensor("score", "FP32", (3,), [0.5, 0.75, 1.0]), binary),
        (OutputTensor("exit_layer", "INT32", (3,), [1, 2, 3]), False),  # mixed: JSON beside binary
        (OutputTensor("probabilities", "FP32", (3, 2), [0.5, 0.5, 0.25, 0.75, 0.0, 1.0]), binary),
    ]
    body, headers = encode_response({"model_name": "m", "model_version": "1", "id": "7"}, outputs)
    assert ("inference-header-content-length" in headers) is binary
    result = triton.InferResult.from_response_body(body, header_length=headers.get("inference-header-content-length"))
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    assert labels == ["positive", "négatif", ""]
    assert result.as_numpy("score").tolist() == [0.5, 0.75, 1.0]
    assert result.as_numpy("exit_layer").tolist() == [1, 2, 3]
    assert result.as_numpy("probabilities").tolist() == [[0.5, 0.5], [0.25, 0.75], [0.0, 1.0]]
    assert result.get_response()["id"] == "7" and result.get_response()["model_version"] == "1"


@pytest.mark.parametrize(("default", "own", "binary"), [
    (None, None, False), (True, None, True), (True, False, False), (False, True, True), (None, True, True),
])  # fmt: skip
def test_an_outputs_binary_data_overrides_the_requests_binary_data_output(
    default: bool | None, own: bool | None, binary: bool
) -> None:
    parameters = {} if default is None else {"binary_data_output": default}
    request = InferenceRequest(None, parameters, {}, (RequestedOutput("label", own),))
    assert request.binary_output(request.outputs[0] if request.outputs else None) is binary


def test_binary_bytes_elements_are_length_prefixed_little_endian() -> None:
    body, headers = encode_response({"model_name": "m"}, [(OutputTensor("label", "BYTES", (2,), ["ab", "c"]), True)])
    header_length = int(headers["inference-header-content-length"])
    assert body[header_length:] == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
    assert json.loads(body[:header_length])["outputs"][0]["parameters"] == {"binary_data_size": 11}
