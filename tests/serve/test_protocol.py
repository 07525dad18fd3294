"""The KServe v2 codec: JSON and binary tensors in and out, and every refusal."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from ember.serve.protocol import (
    InferRequest,
    ProtocolError,
    decode_request,
    encode_response,
    tensor_from_bytes,
    tensor_to_bytes,
)


def _doc(**inp):
    return json.dumps(
        {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", **inp}]}
    ).encode()


@pytest.mark.parametrize(
    "datatype, dtype",
    [
        ("FP32", np.float32),
        ("INT64", np.int64),
        ("UINT8", np.uint8),
        ("FP16", np.float16),
        ("BOOL", np.bool_),
        ("FP64", np.float64),
    ],
)
def test_json_and_binary_inputs_agree(datatype, dtype):
    x = (np.arange(6).reshape(2, 3) % 2).astype(dtype)
    data = x.tolist()
    js = decode_request(
        json.dumps(
            {"inputs": [{"name": "x", "shape": [2, 3], "datatype": datatype, "data": data}]}
        ).encode()
    )
    blob = tensor_to_bytes(x)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 3],
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    bi = decode_request(head + blob, len(head))
    for r in (js, bi):
        assert r.inputs["x"].dtype == dtype and r.inputs["x"].shape == (2, 3)
        np.testing.assert_array_equal(r.inputs["x"], x)


def test_bytes_tensors_round_trip():
    x = np.array([b"ab", b"", b"\xff\x00"], dtype=object)
    blob = tensor_to_bytes(x)
    assert blob[:4] == struct.pack("<I", 2)
    np.testing.assert_array_equal(tensor_from_bytes(blob, np.dtype(object), [3], "s"), x)


@pytest.mark.parametrize(
    "body, words",
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"inputs": []}', "non-empty 'inputs'"),
        (_doc(data=[1, 2, 3]), "needs 4 elements, 'data' has 3"),
        (_doc(data=["a", "b", "c", "d"]), "must hold numbers"),
        (
            json.dumps(
                {"inputs": [{"name": "x", "shape": [2], "datatype": "FLOAT", "data": [1, 2]}]}
            ).encode(),
            "unknown datatype 'FLOAT'",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", "data": [1.5, 2]}]}
            ).encode(),
            "needs integers",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "x", "shape": [2], "datatype": "UINT8", "data": [1, 300]}]}
            ).encode(),
            "does not fit UINT8",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}
            ).encode(),
            "non-negative integers",
        ),
        (_doc(), "neither 'data' nor"),
        (
            json.dumps(
                {
                    "inputs": [
                        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
                        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
                    ]
                }
            ).encode(),
            "given twice",
        ),
    ],
)
def test_bad_requests_say_what_is_wrong(body, words):
    with pytest.raises(ProtocolError, match=words):
        decode_request(body)


def test_binary_sizes_must_add_up():
    head = _doc(parameters={"binary_data_size": 16})
    with pytest.raises(ProtocolError, match="runs past"):
        decode_request(head + b"\0" * 8, len(head))
    with pytest.raises(ProtocolError, match="binary bytes after"):
        decode_request(head + b"\0" * 20, len(head))
    with pytest.raises(ProtocolError, match="Inference-Header-Content-Length"):
        decode_request(head, len(head) + 5)
    bad = _doc(parameters={"binary_data_size": 12})
    with pytest.raises(ProtocolError, match="needs 16 bytes, got 12"):
        decode_request(bad + b"\0" * 12, len(bad))


def test_binary_outputs_on_request():
    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    req = InferRequest(
        id="7", inputs={}, outputs=["y"], binary_outputs=frozenset({"y"}), binary_default=False
    )
    enc = encode_response("m", "1", req, {"y": y})
    head = json.loads(enc.body[: enc.header_length])
    assert head["id"] == "7" and head["outputs"][0]["parameters"]["binary_data_size"] == 24
    np.testing.assert_array_equal(
        np.frombuffer(enc.body[enc.header_length :], np.float32).reshape(2, 3), y
    )
    plain = encode_response("m", "1", InferRequest(None, {}, None, frozenset(), False), {"y": y})
    assert plain.header_length is None
    assert json.loads(plain.body)["outputs"][0]["data"] == y.ravel().tolist()
