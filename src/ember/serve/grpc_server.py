"""The KServe v2 protocol over gRPC (`inference.GRPCInferenceService`) on grpcio's asyncio server.

The messages come from `grpc_predict_v2.proto` in this package, compiled by grpcio-tools' protoc
into a descriptor set (cached under ~/.cache/ember/grpc) and loaded into a private descriptor pool,
so they never clash with another copy of the `inference` package (tritonclient's) in one process.
Handlers are registered by hand; no generated `_pb2_grpc` module is needed.
"""

from __future__ import annotations

import hashlib
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ember.errors import ConfigError
from ember.serve.protocol import (
    ProtocolError,
    datatype_of,
    dtype_of,
    tensor_from_bytes,
    tensor_to_bytes,
)

SERVICE = "inference.GRPCInferenceService"
_PROTO = Path(__file__).with_name("grpc_predict_v2.proto")
_METHODS = {  # rpc -> (request, response)
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
}
_UNAUTHENTICATED_OK = {"ServerLive", "ServerReady"}
# Where each datatype lives in InferTensorContents when a client sends typed fields, not raw bytes.
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _descriptor_set() -> bytes:
    text = _PROTO.read_bytes()
    digest = hashlib.sha256(text).hexdigest()[:16]
    cached = Path.home() / ".cache" / "ember" / "grpc" / f"predict_v2-{digest}.pb"
    if cached.exists():
        return cached.read_bytes()
    try:
        from grpc_tools import protoc
    except ImportError:
        raise ConfigError(
            "the gRPC server needs grpcio-tools: pip install 'ember[serve]'"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "predict_v2.pb"
        rc = protoc.main(
            ["protoc", f"-I{_PROTO.parent}", f"--descriptor_set_out={out}", _PROTO.name]
        )
        if rc != 0:
            raise ConfigError(f"protoc could not compile {_PROTO} (exit {rc})")
        data = out.read_bytes()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = cached.with_suffix(f".{digest}.tmp")
        tmp_path.write_bytes(data)
        tmp_path.replace(cached)  # atomic: concurrent servers never read half a file
    except OSError:
        pass  # a read-only home: compile again next time
    return data


@cache
def messages() -> dict[str, Any]:
    """Message classes by name, from a private descriptor pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fds = descriptor_pb2.FileDescriptorSet.FromString(_descriptor_set())
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    file = pool.FindFileByName(_PROTO.name)
    return {
        name: message_factory.GetMessageClass(d) for name, d in file.message_types_by_name.items()
    }


_GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    413: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    500: "INTERNAL",
}


def decode_infer(req: Any) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """Inputs and requested outputs of a ModelInferRequest (raw contents or typed fields)."""
    if req.raw_input_contents and len(req.raw_input_contents) != len(req.inputs):
        raise ProtocolError(
            f"{len(req.inputs)} inputs but {len(req.raw_input_contents)} raw_input_contents; "
            "send all inputs raw or none"
        )
    inputs = {}
    for i, t in enumerate(req.inputs):
        if t.name in inputs:
            raise ProtocolError(f"input {t.name!r} is given twice")
        dtype = dtype_of(t.datatype)
        shape = list(t.shape)
        if any(d < 0 for d in shape):
            raise ProtocolError(f"input {t.name!r}: shape {shape} has a negative dim")
        if req.raw_input_contents:
            inputs[t.name] = tensor_from_bytes(req.raw_input_contents[i], dtype, shape, t.name)
            continue
        field = _CONTENTS.get(t.datatype)
        if field is None:
            raise ProtocolError(
                f"input {t.name!r}: {t.datatype} must be sent in raw_input_contents"
            )
        values = list(getattr(t.contents, field))
        count = int(np.prod(shape, dtype=np.int64))
        if len(values) != count:
            raise ProtocolError(
                f"input {t.name!r}: shape {shape} needs {count} elements, got {len(values)}"
            )
        array = np.empty(count, dtype=object) if dtype.kind == "O" else None
        if array is not None:
            array[:] = values
        else:
            array = np.asarray(values).astype(dtype)
        inputs[t.name] = array.reshape(shape)
    outputs = [o.name for o in req.outputs] or None
    return inputs, outputs


async def start_grpc(server: Any, host: str, port: int) -> tuple[Any, int]:
    """Start the gRPC front end of an EmberServer on its loop; returns (grpc server, port)."""
    import grpc

    from ember.serve.server import ServeError, status_of

    msgs = messages()
    cap = server.config.max_request_bytes

    def check_auth(rpc: str, context: Any) -> None:
        if rpc in _UNAUTHENTICATED_OK or not server.config.api_keys:
            return
        md = dict(context.invocation_metadata() or ())
        token = md.get("authorization")
        if token is not None:
            scheme, _, value = token.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        else:
            token = md.get("x-api-key")
        if not server.authorized(token.encode() if token is not None else None):
            raise ServeError(
                401, "missing or wrong API key; send metadata 'authorization: Bearer KEY'"
            )

    async def server_live(req: Any, context: Any) -> Any:
        return msgs["ServerLiveResponse"](live=True)

    async def server_ready(req: Any, context: Any) -> Any:
        return msgs["ServerReadyResponse"](ready=server.ready())

    async def model_ready(req: Any, context: Any) -> Any:
        e = server.endpoint(req.name, req.version or None)
        return msgs["ModelReadyResponse"](ready=e.ready() and not server.draining)

    async def server_metadata(req: Any, context: Any) -> Any:
        return msgs["ServerMetadataResponse"](**server.server_metadata())

    async def model_metadata(req: Any, context: Any) -> Any:
        e = server.endpoint(req.name, req.version or None)
        return msgs["ModelMetadataResponse"](**e.metadata())

    async def model_infer(req: Any, context: Any) -> Any:
        e = server.endpoint(req.model_name, req.model_version or None)
        inputs, outputs = decode_infer(req)
        result = await server.infer(e, "grpc", lambda: e.infer(inputs, outputs))
        resp = msgs["ModelInferResponse"](model_name=e.name, model_version=e.version, id=req.id)
        for name, array in result.items():
            resp.outputs.add(name=name, datatype=datatype_of(array.dtype), shape=list(array.shape))
            resp.raw_output_contents.append(tensor_to_bytes(array))
        return resp

    def wrap(rpc: str, fn: Any) -> Any:
        async def handler(req: Any, context: Any) -> Any:
            try:
                check_auth(rpc, context)
                return await fn(req, context)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status code + message
                err = status_of(exc)
                await context.abort(
                    getattr(grpc.StatusCode, _GRPC_CODES.get(err.status, "INTERNAL")), str(err)
                )

        req_cls, resp_cls = (msgs[n] for n in _METHODS[rpc])
        return grpc.unary_unary_rpc_method_handler(
            handler,
            request_deserializer=req_cls.FromString,
            response_serializer=resp_cls.SerializeToString,
        )

    impls = {
        "ServerLive": server_live,
        "ServerReady": server_ready,
        "ModelReady": model_ready,
        "ServerMetadata": server_metadata,
        "ModelMetadata": model_metadata,
        "ModelInfer": model_infer,
    }
    handlers = {rpc: wrap(rpc, fn) for rpc, fn in impls.items()}
    grpc_server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", cap),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    grpc_server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = grpc_server.add_insecure_port(address)
    if bound == 0:
        raise ConfigError(f"gRPC: cannot listen on {address}")
    await grpc_server.start()
    return grpc_server, bound
