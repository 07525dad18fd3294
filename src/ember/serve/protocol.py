"""The Open Inference Protocol (KServe v2) tensor codec: JSON tensors and binary tensors.

Pure functions from request bytes to NumPy arrays and back. Nothing here is ever unpickled or
evaluated: JSON is parsed with `json`, binary tensors are copied from raw little-endian buffers. It
knows nothing about HTTP, batching or models.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: KServe v2 datatype <-> NumPy dtype. BYTES is a length-prefixed string tensor (object array).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_BY_DTYPE = {v: k for k, v in DATATYPES.items()}


class ProtocolError(ValueError):
    """A request that does not follow the protocol (answered 400)."""


@dataclasses.dataclass(frozen=True)
class InferRequest:
    """A decoded inference request: input arrays and which outputs to return, and how."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # None: all of the model's outputs
    binary_outputs: frozenset[str]  # outputs to send with the binary extension
    binary_default: bool  # request-level `binary_data_output`


def datatype_of(dtype: np.dtype[Any] | None) -> str:
    """The KServe datatype name of a NumPy dtype (strings map to BYTES)."""
    if dtype is None:
        return "BYTES"
    if dtype.kind in "OUS":
        return "BYTES"
    try:
        return _BY_DTYPE[np.dtype(dtype)]
    except KeyError:
        raise ProtocolError(f"dtype {dtype} has no KServe v2 datatype") from None


def dtype_of(datatype: Any) -> np.dtype[Any]:
    """The NumPy dtype of a KServe datatype name; ProtocolError names the valid ones."""
    try:
        return DATATYPES[datatype]
    except (KeyError, TypeError):
        raise ProtocolError(
            f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        ) from None


def tensor_to_bytes(array: np.ndarray) -> bytes:
    """Raw little-endian bytes of a tensor; BYTES tensors as 4-byte-length-prefixed elements."""
    if array.dtype.kind in "OUS":
        parts = []
        for item in array.reshape(-1):
            b = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def tensor_from_bytes(
    buf: bytes | memoryview, dtype: np.dtype[Any], shape: Sequence[int], name: str
) -> np.ndarray:
    """The tensor in `buf` (a copy); ProtocolError when the size does not match the shape."""
    count = int(np.prod(shape, dtype=np.int64))
    if dtype.kind == "O":
        items: list[bytes] = []
        view = memoryview(buf)
        pos = 0
        while pos < len(view):
            if pos + 4 > len(view):
                raise ProtocolError(f"input {name!r}: truncated BYTES element length")
            (n,) = struct.unpack_from("<I", view, pos)
            pos += 4
            if pos + n > len(view):
                raise ProtocolError(f"input {name!r}: BYTES element runs past the end of its data")
            items.append(bytes(view[pos : pos + n]))
            pos += n
        if len(items) != count:
            raise ProtocolError(
                f"input {name!r}: shape {list(shape)} needs {count} elements, got {len(items)}"
            )
        out = np.empty(count, dtype=object)
        out[:] = items
        return out.reshape(shape)
    want = count * dtype.itemsize
    if len(buf) != want:
        raise ProtocolError(
            f"input {name!r}: shape {list(shape)} of {datatype_of(dtype)} needs {want} bytes, "
            f"got {len(buf)}"
        )
    return np.frombuffer(buf, dtype=dtype.newbyteorder("<")).astype(dtype, copy=True).reshape(shape)


def _check_shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(
            f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}"
        )
    return shape


def _tensor_from_json(name: str, data: Any, dtype: np.dtype[Any], shape: list[int]) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    if dtype.kind == "O":
        flat = np.array(list(_flatten(data)), dtype=object)
        flat = np.array([s.encode() if isinstance(s, str) else s for s in flat], dtype=object)
    else:
        try:
            flat = np.asarray(data).reshape(-1)
        except (ValueError, TypeError) as e:
            raise ProtocolError(
                f"input {name!r}: 'data' is not a (nested) list of numbers: {e}"
            ) from None
        if flat.dtype.kind not in "biuf":
            raise ProtocolError(
                f"input {name!r}: 'data' must hold numbers for datatype {datatype_of(dtype)}, "
                f"got {(flat.dtype.kind == 'U' and 'strings') or flat.dtype}"
            )
        if dtype.kind in "iu" and flat.dtype.kind == "f":
            raise ProtocolError(
                f"input {name!r}: datatype {datatype_of(dtype)} needs integers, got floats"
            )
        if dtype.kind == "b" and flat.dtype.kind != "b":
            raise ProtocolError(f"input {name!r}: datatype BOOL needs true/false values")
        if dtype.kind in "iu" and flat.size:
            info = np.iinfo(dtype)
            low, high = flat.min(), flat.max()
            if low < info.min or high > info.max:
                bad = low if low < info.min else high
                raise ProtocolError(
                    f"input {name!r}: value {bad} does not fit {datatype_of(dtype)} "
                    f"({info.min}..{info.max})"
                )
        flat = flat.astype(dtype)
    if flat.size != count:
        raise ProtocolError(
            f"input {name!r}: shape {shape} needs {count} elements, 'data' has {flat.size}"
        )
    return flat.reshape(shape)


def _flatten(data: Any) -> Any:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode an infer request body: JSON, optionally followed by binary tensors.

    `header_length` is the `Inference-Header-Content-Length` header (None: the whole body is JSON).

    >>> body = b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}'
    >>> r = decode_request(body)
    >>> r.inputs["x"].dtype, r.inputs["x"].shape
    (dtype('float32'), (1, 2))
    """
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise ProtocolError(
                f"Inference-Header-Content-Length is {header_length} but the body has "
                f"{len(body)} bytes"
            )
        head, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        head, binary = body, memoryview(b"")
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"malformed JSON in the request: {e}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("the request needs a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in raw_inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(
                "each input must be an object with a 'name', 'shape', 'datatype' and 'data'"
            )
        name = item["name"]
        if name in inputs:
            raise ProtocolError(f"input {name!r} is given twice")
        shape = _check_shape(name, item.get("shape"))
        dtype = dtype_of(item.get("datatype"))
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(f"input {name!r}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ProtocolError(
                    f"input {name!r}: binary_data_size {size!r} runs past the {len(binary)} "
                    "binary bytes sent"
                )
            inputs[name] = tensor_from_bytes(binary[offset : offset + size], dtype, shape, name)
            offset += size
        elif "data" in item:
            inputs[name] = _tensor_from_json(name, item["data"], dtype, shape)
        else:
            raise ProtocolError(
                f"input {name!r} has neither 'data' nor parameters.binary_data_size"
            )
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} binary bytes after the last binary input")
    req_params = doc.get("parameters") or {}
    if not isinstance(req_params, dict):
        raise ProtocolError("'parameters' must be an object")
    binary_default = bool(req_params.get("binary_data_output", False))
    outputs: list[str] | None = None
    binary_outputs: set[str] = set()
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise ProtocolError("'outputs' must be a list of {'name': ...} objects")
        outputs = []
        for item in raw_outputs:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ProtocolError("each requested output must be an object with a 'name'")
            outputs.append(item["name"])
            p = item.get("parameters") or {}
            if isinstance(p, dict) and p.get("binary_data", binary_default):
                binary_outputs.add(item["name"])
        if not outputs:
            outputs = None
    request_id = doc.get("id")
    return InferRequest(
        id=str(request_id) if request_id is not None else None,
        inputs=inputs,
        outputs=outputs,
        binary_outputs=frozenset(binary_outputs),
        binary_default=binary_default,
    )


@dataclasses.dataclass(frozen=True)
class EncodedResponse:
    """A response body and, when binary tensors follow the JSON, the JSON header's length."""

    body: bytes
    header_length: int | None


def encode_response(
    model: str, version: str, request: InferRequest, outputs: Mapping[str, np.ndarray]
) -> EncodedResponse:
    """The v2 response: JSON tensors, or the binary extension for outputs that asked for it."""
    items = []
    blobs = []
    for name, array in outputs.items():
        item: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array.dtype),
            "shape": list(array.shape),
        }
        if name in request.binary_outputs or (request.outputs is None and request.binary_default):
            blob = tensor_to_bytes(array)
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif array.dtype.kind in "OUS":
            item["data"] = [
                x.decode(errors="replace") if isinstance(x, bytes) else str(x)
                for x in array.reshape(-1)
            ]
        else:
            item["data"] = array.reshape(-1).tolist()
        items.append(item)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": items}
    if request.id is not None:
        doc["id"] = request.id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return EncodedResponse(head, None)
    return EncodedResponse(b"".join([head, *blobs]), len(head))
