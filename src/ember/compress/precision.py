"""fp16 / bf16 conversion: weights and compute in the low precision, with float32 islands where
precision matters (LayerNormalization and its decomposed form, Softmax, reductions, residual Adds)
and Casts only at the borders. Graph inputs and outputs stay float32, so callers see no change.

Knows nothing about integer quantization (qdq.py).
"""

from __future__ import annotations

from collections.abc import Collection

import ml_dtypes
import numpy as np
import onnx_ir as ir

from ember.compress import _graph as g
from ember.compress.config import QuantConfig
from ember.ir import verify
from ember.passes.rewrite import add_initializer

#: ops that always compute in float32: normalizations, softmax and reductions accumulate or
#: divide by sums where fp16's 10-bit mantissa (or bf16's 7) loses visibly
FP32_OPS = frozenset(
    "LayerNormalization SimplifiedLayerNormalization InstanceNormalization GroupNormalization "
    "BatchNormalization Softmax LogSoftmax ReduceMean ReduceSum ReduceSumSquare ReduceL1 ReduceL2 "
    "ReduceLogSum ReduceLogSumExp ReduceProd ReduceMax ReduceMin Pow Sqrt Reciprocal Exp Log "
    "CumSum Range".split()
)
#: ops left as they are (not float compute, or with a dtype of their own): borders cast around them
UNTOUCHED_OPS = frozenset(
    "Cast CastLike ConstantOfShape Constant EyeLike RandomNormal RandomUniform RandomNormalLike "
    "RandomUniformLike Multinomial Shape Size If Loop Scan SequenceConstruct QuantizeLinear "
    "DequantizeLinear DynamicQuantizeLinear".split()
)
#: float inputs that keep float32 whatever T is (scales and ratios typed T1/T2 apart from T)
_FLOAT32_INPUTS = {"Resize": {1, 2}, "Upsample": {1}, "Dropout": {1}}

_LOW = {
    "fp16": (np.dtype(np.float16), ir.DataType.FLOAT16),
    "bf16": (np.dtype(ml_dtypes.bfloat16), ir.DataType.BFLOAT16),
}


def convert_precision(
    model: ir.Model, config: QuantConfig, *, keep_fp32: Collection[str] = ()
) -> ir.Model:
    """A new model computing in config.mode's precision ("fp16" or "bf16") outside fp32 islands.

    >>> import numpy as np, ember
    >>> from ember.ir import load_model
    >>> from ember.zoo import model_path
    >>> m = convert_precision(load_model(model_path("mnist_mlp")), QuantConfig(mode="fp16"))
    >>> m.graph.inputs[0].dtype, m.graph.initializers["0.weight_fp16"].dtype
    (FLOAT, FLOAT16)
    >>> ember.Model(m).run({"input": np.zeros((1, 784), np.float32)})["logits"].dtype
    dtype('float32')
    """
    np_low, ir_low = _LOW[config.mode]
    work = g.working_copy(model)
    # Cast to bfloat16 needs 13; ONNX types Conv and the pools for bfloat16 only from 22.
    g.raise_opset(work, 22 if config.mode == "bf16" else 13)
    graph = work.graph
    low = set(_low_nodes(work, {*keep_fp32, *config.exclude}))
    low_consts: dict[ir.Value, ir.Value] = {}
    to_low: dict[ir.Value, ir.Value] = {}
    to_fp32: dict[ir.Value, ir.Value] = {}
    suffix = config.mode

    def low_constant(v: ir.Value, arr: np.ndarray) -> ir.Value:
        if v not in low_consts:
            low_consts[v] = add_initializer(graph, f"{v.name}_{suffix}", arr.astype(np_low))
        return low_consts[v]

    created: set[ir.Node] = set()  # the border Casts this function inserts

    def cast(v: ir.Value, to: ir.DataType, cache: dict[ir.Value, ir.Value]) -> ir.Value:
        if v not in cache:
            tag = "fp32" if to == ir.DataType.FLOAT else suffix
            out = g.new_value(graph, f"{v.name}_{tag}", v, to)
            node = g.make_node(
                graph, "Cast", [v], [out], name=f"{v.name}_Cast_{tag}", attributes={"to": int(to)}
            )
            g.insert_after_producer(graph, v, [node])
            created.add(node)
            cache[v] = out
        return cache[v]

    produced_low: list[ir.Value] = []
    for node in list(graph):
        if node not in low:
            continue
        keep32 = _FLOAT32_INPUTS.get(node.op_type, set())
        for i, v in enumerate(node.inputs):
            if v is None or v.dtype != ir.DataType.FLOAT or i in keep32:
                continue
            arr = g.constant_of(v)
            if arr is not None:
                node.replace_input_with(i, low_constant(v, arr))
            else:  # produced by a float32 node, or a graph input: cast at the border
                node.replace_input_with(i, cast(v, ir_low, to_low))
        for v in node.outputs:
            if v is not None and v.dtype == ir.DataType.FLOAT:
                v.type = ir.TensorType(ir_low)
                produced_low.append(v)
    # Low values that float32 nodes read, or the caller receives, go back to float32.
    for v in produced_low:
        for use in list(v.uses()):
            if use.node not in low and use.node not in created:
                use.node.replace_input_with(use.idx, cast(v, ir.DataType.FLOAT, to_fp32))
        if v.is_graph_output():
            back = cast(v, ir.DataType.FLOAT, to_fp32)
            g.redirect_uses(graph, v, back, skip=back.producer())
    g.drop_unused(work)
    verify(work)
    return work


def _low_nodes(model: ir.Model, keep_fp32: Collection[str]) -> list[ir.Node]:
    """Nodes that compute in the low precision: float nodes outside the fp32 islands."""
    islands = _fp32_islands(model)
    out = []
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or node.op_type in UNTOUCHED_OPS:
            continue
        if node.op_type in FP32_OPS or node in islands or node.name in keep_fp32:
            continue
        if any(
            a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            for a in node.attributes.values()
        ):
            continue
        values = [v for v in (*node.inputs, *node.outputs) if v is not None]
        if any(v.dtype == ir.DataType.FLOAT for v in values):
            out.append(node)
    return out


def _fp32_islands(model: ir.Model) -> set[ir.Node]:
    """Nodes kept float32 beyond FP32_OPS: residual Adds (two computed operands) and the
    Sub/Div/Mul/Add of decomposed LayerNorms (x - mean(x), / sqrt(var + eps), * gamma + beta)."""
    keep: set[ir.Node] = set()
    for node in model.graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        ins = [v for v in node.inputs if v is not None]
        computed = len(ins) == 2 and all(g.constant_of(v) is None for v in ins)
        in_layernorm = any(_producer_type(v) in ("Sqrt", "ReduceMean", "Pow") for v in ins)
        if node.op_type == "Add" and computed and not in_layernorm:
            keep.add(node)  # residual (x + f(x)): the stream the network accumulates into
        if node.op_type == "Sub" and any(_producer_type(v) == "ReduceMean" for v in ins):
            keep.add(node)
        if node.op_type == "Div" and len(ins) == 2 and _producer_type(ins[1]) == "Sqrt":
            keep.add(node)
            keep.update(_affine_after(node))
        if node.op_type == "Add" and any(_producer_type(v) == "ReduceMean" for v in ins):
            keep.add(node)  # var + eps
    return keep


def _producer_type(v: ir.Value) -> str | None:
    p = v.producer()
    return p.op_type if p is not None else None


def _affine_after(div: ir.Node) -> list[ir.Node]:
    """The `* gamma + beta` after a decomposed LayerNorm's division (constant operands only)."""
    out: list[ir.Node] = []
    v = div.outputs[0]
    for op_type in ("Mul", "Add"):
        uses = list(v.uses())
        if len(uses) != 1:
            break
        nxt = uses[0].node
        other = nxt.inputs[1 - uses[0].idx] if len(nxt.inputs) == 2 else None
        if nxt.op_type != op_type or g.constant_of(other) is None:
            break
        out.append(nxt)
        v = nxt.outputs[0]
    return out


def low_precision_nodes(model: ir.Model, config: QuantConfig) -> list[str]:
    """Names of the compute nodes (config.op_types) that would run in the low precision."""
    return [n.name or "" for n in _low_nodes(model, config.exclude) if n.op_type in config.op_types]
