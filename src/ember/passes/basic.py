"""Level-1 passes: shape inference, constant folding, and removal of nodes that pass data through.

Folding evaluates nodes with ember's own reference ops (ember.ops), so a folded value is exactly
what the node would have computed at run time. These passes work on the main graph only; subgraphs
(If, Loop, Scan bodies) are left as they are.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx_ir as ir

from ember.ir.load import infer_shapes
from ember.ir.verify import topological_order
from ember.ops import registry
from ember.passes.rewrite import attr_value, constant_array, is_constant
from ember.runtime.plan import attribute_value

#: Outputs with more elements than this are not folded: folding must never bloat the model.
FOLD_SIZE_LIMIT = 1 << 20

# A different value each run: never folded.
_RANDOM_OPS = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
    }
)
# A dequantized weight is 4x its int8 form, and the int8 kernels (passes/fuse_quant.py) read the
# int8 form: DequantizeLinear of a constant stays a node.
_KEEP_QUANTIZED = frozenset({"DequantizeLinear"})
# Ops whose output size comes from an input's values, not its size: folded only when shape inference
# has said how big the output is, so that a (100000, 100000) ConstantOfShape is never allocated.
_SHAPE_FROM_VALUES = frozenset(
    "ConstantOfShape Expand Tile Range Resize Upsample Pad OneHot EyeLike CenterCropPad".split()
)


class InferShapesPass(ir.passes.InPlacePass):
    """Record types and shapes on every value (ONNX shape inference with data propagation).

    Only annotations change, never the graph, so it reports no modification: in a pass loop it
    feeds the folding that follows without keeping the loop alive by itself.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # The model's signature is the caller's: inference must not rename its symbolic dims.
        signature = [(v, v.type, v.shape) for v in (*model.graph.inputs, *model.graph.outputs)]
        infer_shapes(model)
        for v, type_, shape in signature:
            v.type, v.shape = type_, shape
        return ir.passes.PassResult(model, modified=False)


class FoldConstantsPass(ir.passes.InPlacePass):
    """Replace every node whose inputs are all constants by initializers holding its outputs.

    Also folds Shape and Size of values whose shape is static (all dims known ints), so that shape
    arithmetic folds away when shapes are static. Safe because the folded value is computed by the
    same reference op the node would run; nodes with subgraphs, random ops, ops ember does not
    implement, and outputs over `size_limit` elements are left alone.
    """

    def __init__(self, size_limit: int = FOLD_SIZE_LIMIT) -> None:
        super().__init__()
        self.size_limit = size_limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        count = 0
        for node in topological_order(graph):
            outputs = self._evaluate(node, model.opset_imports)
            if outputs is None:
                continue
            _replace_by_initializers(graph, node, outputs)
            count += 1
        return ir.passes.PassResult(model, modified=count > 0)

    def _evaluate(self, node: ir.Node, opsets: dict[str, int]) -> list[np.ndarray] | None:
        """The node's outputs when it can be folded, else None."""
        if node.domain == "" and (node.op_type in _RANDOM_OPS or node.op_type in _KEEP_QUANTIZED):
            return None
        if not any(v.uses() or v.is_graph_output() for v in node.outputs):
            return None  # dead: dead code removal takes it
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in _attrs(node)):
            return None
        args = _constant_inputs(node)
        if args is None:
            return None
        sizes = [_static_size(v) for v in node.outputs]
        if any(s is not None and s > self.size_limit for s in sizes):
            return None
        if node.op_type in _SHAPE_FROM_VALUES and any(s is None for s in sizes):
            return None
        opset = opsets.get(node.domain, 0)
        record = registry.find(node.op_type, node.domain, opset)
        if record is None:
            return None
        kwargs: dict[str, Any] = {}
        for name, attr in node.attributes.items():
            if name not in record.attributes and not record.accepts_any_attribute:
                return None
            kwargs[name] = attribute_value(attr)
        if record.wants_ctx:
            kwargs["ctx"] = registry.OpContext(n_outputs=len(node.outputs), opset=opset)
        try:
            result = record.fn(*args, **kwargs)
        except Exception:  # noqa: BLE001  (a node that fails now fails at run time, with context)
            return None
        results = list(result) if isinstance(result, tuple) else [result]
        if len(results) < len(node.outputs):
            return None
        arrays = []
        for value, r in zip(node.outputs, results, strict=False):
            if not isinstance(r, np.ndarray | np.generic):
                return None  # a sequence or optional value: no initializer can hold it
            a = np.asarray(r)
            if a.dtype.kind in "OSU" or a.size > self.size_limit:
                return None
            if value.dtype is not None and value.dtype != ir.DataType.from_numpy(a.dtype):
                return None  # the reference disagrees with the declared type: leave it to run
            arrays.append(a)
        return arrays


def _attrs(node: ir.Node) -> list[ir.Attr]:
    return list(node.attributes.values())


def _constant_inputs(node: ir.Node) -> list[np.ndarray | None] | None:
    """The node's inputs as arrays when all are known now (None = an omitted input), else None.

    The data input of Shape and Size is known when its shape is static: a zero-strided stand-in
    of that shape is enough, as only its shape is read.
    """
    shape_of = node.op_type in ("Shape", "Size") and node.domain == ""
    if not all(v is None or not v.name or is_constant(v) for v in node.inputs[shape_of:]):
        return None  # before reading any weight
    args: list[np.ndarray | None] = []
    for i, v in enumerate(node.inputs):
        if v is None or not v.name:
            args.append(None)
            continue
        a = constant_array(v)
        if a is None and i == 0 and shape_of:
            dims = _static_dims(v)
            if dims is not None:
                a = np.broadcast_to(np.zeros((), np.float32), dims)
        if a is None:
            return None
        args.append(a)
    return args


def _static_dims(value: ir.Value) -> tuple[int, ...] | None:
    if value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return tuple(int(d) for d in value.shape)  # type: ignore[arg-type]


def _static_size(value: ir.Value) -> int | None:
    dims = _static_dims(value)
    return None if dims is None else math.prod(dims)


def _replace_by_initializers(graph: ir.Graph, node: ir.Node, arrays: list[np.ndarray]) -> None:
    """Swap `node` for initializers holding `arrays`; they keep its outputs' names and types."""
    news = []
    for value, a in zip(node.outputs, arrays, strict=False):
        if not value.name:
            continue  # an optional output the node does not produce
        name = value.name
        new = ir.Value(
            name=name,
            type=value.type or ir.TensorType(ir.DataType.from_numpy(a.dtype)),
            # A graph output keeps the shape the model declares for it.
            shape=value.shape if value.is_graph_output() else ir.Shape(a.shape),
            const_value=ir.tensor(a, name=name),
        )
        ir.convenience.replace_all_uses_with(value, new, replace_graph_outputs=True)
        news.append(new)
    graph.remove(node, safe=True)
    for new in news:
        graph.register_initializer(new)


class EliminatePassthroughPass(ir.passes.InPlacePass):
    """Remove Identity, and Dropout in inference mode whose mask output nobody reads.

    Both return their input unchanged. Dropout is kept when its training_mode input is not a
    constant false (or is_test=0 in opsets before 7): training dropout changes the data. When the
    output is a graph output, the input value takes its name, unless the input is itself a graph
    input, graph output or initializer, whose name must not change; then the node stays.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        count = 0
        for node in list(graph):
            if not _is_passthrough(node):
                continue
            x, y = node.inputs[0], node.outputs[0]
            if x is None:
                continue
            if y.is_graph_output() and (
                x.is_graph_input() or x.is_graph_output() or x.is_initializer()
            ):
                continue
            name, y_is_output = y.name, y.is_graph_output()
            ir.convenience.replace_all_uses_with(y, x, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            if y_is_output:  # x becomes the graph output, as the model declares it
                x.name = name
                x.type = y.type or x.type
                x.shape = y.shape
            count += 1
        return ir.passes.PassResult(model, modified=count > 0)


def _is_passthrough(node: ir.Node) -> bool:
    if node.domain != "" or not node.inputs:
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type != "Dropout":
        return False
    if any(v.name and (v.uses() or v.is_graph_output()) for v in node.outputs[1:]):
        return False  # the mask is read
    if attr_value(node, "is_test", 1) == 0:
        return False
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        training = constant_array(node.inputs[2])
        if training is None or bool(training.reshape(-1)[0]):
            return False
    return True
