"""Loading and saving ONNX models as onnx_ir Models, with errors a user can act on.

Accepts a path (external data next to it is found and read lazily), the bytes of a model, or an
onnx.ModelProto. Model-local functions are inlined so that the rest of ember sees one flat graph.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError
from onnx_ir.passes.common import InlinePass, ShapeInferencePass

from ember.errors import ModelError
from ember.ir.verify import verify

ModelSource = str | os.PathLike[str] | bytes | onnx.ModelProto | ir.Model


def load_model(source: ModelSource, *, check: bool = True) -> ir.Model:
    """Load `source` into an onnx_ir Model, inline local functions and (by default) verify it.

    >>> from ember.zoo import model_path
    >>> load_model(model_path("mnist_mlp")).graph.inputs[0].name
    'input'
    """
    if isinstance(source, ir.Model):
        # A copy (tensors are shared, not copied): optimizing it must not change the caller's.
        model = source.clone()
    elif isinstance(source, onnx.ModelProto):
        model = _from_proto(source, "<ModelProto>")
    elif isinstance(source, bytes | bytearray | memoryview):
        model = _from_proto(_parse(bytes(source), "<bytes>"), "<bytes>")
    elif isinstance(source, str | os.PathLike):
        model = _from_path(Path(source))
    else:
        raise ModelError(
            f"cannot load a model from {type(source).__name__}: pass a path, bytes, "
            "an onnx.ModelProto or an onnx_ir.Model"
        )
    if model.functions:
        InlinePass()(model)
    if check:
        verify(model)
    return model


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError as e:
        raise ModelError(
            f"{where}: not a valid ONNX file ({e}); the file may be truncated or corrupt"
        ) from None
    if not proto.HasField("graph"):
        raise ModelError(f"{where}: not an ONNX model (no graph in it); is this the right file?")
    return proto


def _attributes(graph: onnx.GraphProto) -> list[onnx.AttributeProto]:
    """Every node attribute in `graph` and its subgraphs."""
    out = []
    for node in graph.node:
        for attr in node.attribute:
            out.append(attr)
            for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                out.extend(_attributes(g))
    return out


def _densify_sparse_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Constant(sparse_value=...) rewritten as a dense `value` (onnx_ir cannot read sparse
    attributes), on a copy: the caller's proto is never modified."""
    if not any(a.type == onnx.AttributeProto.SPARSE_TENSOR for a in _attributes(proto.graph)):
        return proto
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    for attr in _attributes(proto.graph):
        if attr.type != onnx.AttributeProto.SPARSE_TENSOR:
            continue
        sparse = attr.sparse_tensor
        values = onnx.numpy_helper.to_array(sparse.values)
        indices = onnx.numpy_helper.to_array(sparse.indices)
        dims = tuple(sparse.dims)
        dense = np.zeros(int(np.prod(dims)), dtype=values.dtype)
        # Indices are either flat (nnz,) or coordinates (nnz, rank).
        flat = indices if indices.ndim == 1 else np.ravel_multi_index(indices.T, dims)
        dense[flat] = values
        name = "value" if attr.name == "sparse_value" else attr.name
        attr.CopyFrom(
            onnx.helper.make_attribute(name, onnx.numpy_helper.from_array(dense.reshape(dims)))
        )
    return proto


def _from_proto(proto: onnx.ModelProto, where: str) -> ir.Model:
    try:
        model = ir.serde.deserialize_model(_densify_sparse_constants(proto))
        _detach_from_proto(model)
        return model
    except Exception as e:
        root: BaseException = e
        while root.__cause__ is not None:  # onnx_ir wraps the useful message in SerdeErrors
            root = root.__cause__
        raise ModelError(f"{where}: the ONNX model is malformed: {root}") from e


def _from_path(path: Path) -> ir.Model:
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, not an ONNX file")
    proto = _parse(path.read_bytes(), str(path))
    model = _from_proto(proto, str(path))
    # External tensors stay lazy (read on first use) and are resolved relative to the file.
    base = str(path.parent)
    for tensor in _initializer_tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            tensor.base_dir = base
            if not Path(tensor.path).exists():
                raise ModelError(
                    f"{path}: initializer {tensor.name!r} lives in external file "
                    f"{tensor.location!r}, which is missing from {base}"
                )
    return model


def _detach_from_proto(model: ir.Model) -> None:
    """Give every initializer its own NumPy array, so the parsed ModelProto can be freed.

    A tensor deserialized by onnx_ir reads the proto's raw_data, and protobuf hands out a new copy
    of those bytes on every read: each `.numpy()` would copy the weights again, and the proto
    (all weights once more) would live as long as any one tensor points into it.
    """
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.serde.TensorProtoTensor):
                value.const_value = ir.Tensor(tensor.numpy(), name=tensor.name)


def _initializer_tensors(model: ir.Model) -> list[Any]:
    tensors: list[Any] = []
    for graph in model.graphs():
        tensors.extend(v.const_value for v in graph.initializers.values() if v.const_value)
    return tensors


def save_model(
    model: ir.Model, path: str | os.PathLike[str], *, external_data: bool | None = None
) -> None:
    """Save `model` to `path` atomically (never a half-written file).

    Large models (over 1.8 GiB of weights, below protobuf's 2 GiB limit) store weights in
    `<name>.data` beside the file unless `external_data` says otherwise.
    """
    path = Path(path)
    if external_data is None:
        size = sum(t.nbytes for t in _initializer_tensors(model))
        external_data = size > int(1.8 * 2**30)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if external_data:
            ir.save(model, tmp, external_data=f"{path.name}.data")
        else:
            ir.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def infer_shapes(model: ir.Model) -> ir.Model:
    """Fill in types and shapes of every value, keeping symbolic dims (`batch`, `seq`) by name.

    Uses ONNX's shape inference with data propagation; values it cannot infer keep what they had.
    """
    ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    return model
