"""Graph plumbing the quantizer and the precision converter share: a private working copy of the
model (BatchNorm folded into Conv, constants folded, every node named), raising the opset, and
adding initializers and nodes next to the values they transform.

Knows nothing about how tensors are quantized (_qmath) or which ones (qdq, precision).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from ember.errors import ModelError
from ember.ir import load_model
from ember.ir.verify import topological_order
from ember.passes.rewrite import constant_array, onnx_opset, unique_name

#: the lowest IR version that can hold each opset (onnx's table, for the opsets we raise to)
_IR_FOR_OPSET = {13: 7, 17: 8, 19: 9, 21: 10, 22: 10}


def working_copy(model: ir.Model) -> ir.Model:
    """A deep copy of `model` prepared for quantization; `model` itself is never touched.

    Conv+BatchNormalization are folded (the quantized conv sees the folded weights, as every
    quantizer does), constants are folded, and unnamed nodes get stable names, so that node names
    from `quantizable_nodes` mean the same nodes in `quantize_graph`.
    """
    from ember.passes import optimize
    from ember.passes.fuse_conv import FuseConvBatchNormPass

    work = load_model(ir.to_proto(model))
    optimize(work, 1)
    FuseConvBatchNormPass()(work)
    optimize(work, 1)
    name_nodes(work.graph)
    return work


def name_nodes(graph: ir.Graph) -> None:
    taken = {n.name for n in graph if n.name}
    for i, node in enumerate(graph):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def raise_opset(model: ir.Model, target: int) -> None:
    """Make the model's default-domain opset at least `target`.

    When no op in the graph changes meaning between the two opsets (same schema version at both),
    the import is rewritten; otherwise onnx's version converter adapts the ops.
    """
    current = onnx_opset(model)
    if current >= target:
        return
    ops = {n.op_type for n in model.graph.all_nodes() if n.domain in ("", "ai.onnx")}
    if all(_schema_version(op, current) == _schema_version(op, target) for op in ops):
        model.opset_imports[""] = target
    else:
        try:
            proto = onnx.version_converter.convert_version(ir.to_proto(model), target)
        except Exception as e:  # the converter raises bare RuntimeErrors per missing adapter
            raise ModelError(
                f"cannot raise the model's opset from {current} to {target} (needed for the "
                f"quantized ops): onnx's version converter failed: {e}"
            ) from e
        converted = load_model(proto)
        _replace_contents(model, converted)
    model.ir_version = max(model.ir_version or 0, _IR_FOR_OPSET.get(target, 10))


def _schema_version(op_type: str, opset: int) -> int | None:
    try:
        return int(onnx.defs.get_schema(op_type, opset, "").since_version)
    except onnx.defs.SchemaError:
        return None


def _replace_contents(model: ir.Model, other: ir.Model) -> None:
    # NOTE: a Model's opset_imports are its graph's: taking the graph takes them.
    model.graph = other.graph
    model.ir_version = other.ir_version


def new_value(graph: ir.Graph, base: str, like: ir.Value | None, dtype: ir.DataType) -> ir.Value:
    """An output value for a new node: named after `base`, with `like`'s shape and `dtype`."""
    shape = like.shape if like is not None and like.shape is not None else None
    return ir.Value(name=unique_name(graph, base), type=ir.TensorType(dtype), shape=shape)


def make_node(
    graph: ir.Graph,
    op_type: str,
    inputs: list[ir.Value | None],
    outputs: list[ir.Value],
    *,
    name: str,
    attributes: dict[str, Any] | None = None,
) -> ir.Node:
    taken = {n.name for n in graph}
    node_name = name
    i = 0
    while node_name in taken:
        i += 1
        node_name = f"{name}_{i}"
    attrs = [ir.convenience.convert_attribute(k, v) for k, v in (attributes or {}).items()]
    return ir.Node("", op_type, inputs, attrs, outputs=outputs, name=node_name)


def insert_after_producer(graph: ir.Graph, value: ir.Value, nodes: list[ir.Node]) -> None:
    """Insert `nodes` right after `value`'s producer (at the top for graph inputs/constants)."""
    producer = value.producer()
    if producer is not None and producer.graph is graph:
        graph.insert_after(producer, nodes)
    else:
        first = next(iter(graph), None)
        if first is None:
            graph.extend(nodes)
        else:
            graph.insert_before(first, nodes)


def redirect_uses(
    graph: ir.Graph, old: ir.Value, new: ir.Value, *, skip: ir.Node | None = None
) -> None:
    """Every reader of `old` (except `skip`) reads `new`; a graph output `old` becomes `new` under
    `old`'s name, so the model's signature keeps its names."""
    for use in list(old.uses()):
        if use.node is not skip:
            use.node.replace_input_with(use.idx, new)
    if old.is_graph_output():
        outputs = graph.outputs
        name = old.name
        old.name = unique_name(graph, f"{name}_float")
        new.name = name
        for i, v in enumerate(outputs):
            if v is old:
                outputs[i] = new
        new.type, new.shape = new.type or old.type, new.shape or old.shape


def constant_of(value: ir.Value | None) -> np.ndarray | None:
    """The array of a constant input (initializer not overridable, or Constant node), else None."""
    return constant_array(value)


def is_float_value(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == ir.DataType.FLOAT


def graph_order(graph: ir.Graph) -> list[ir.Node]:
    return topological_order(graph)


def drop_unused(model: ir.Model) -> None:
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    RemoveUnusedNodesPass()(model)
