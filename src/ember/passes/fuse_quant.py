"""Level-2 pass: run quantized (QDQ and QOperator) graphs on int8 ops instead of float ones.

ONNX QDQ models compute in float between DequantizeLinear and QuantizeLinear nodes; this pass
rewrites each quantized island into one ai.ember int8 op (ops/fused.py) that reads and writes
int8 tensors, so no dequantize -> float32 -> quantize round trip stays on the hot path:

- DQ(x), DQ(W) [, DQ(b)] -> Conv / Gemm / MatMul [-> Add(bias)] [-> Add(DQ(z))] [-> act] -> Q
  becomes QConv / QMatMul on x's int8 tensor, W's int8 weights and a float32 bias; a residual
  whose conv output went through its own Q -> DQ pair is summed before that rounding.
- DQ -> MaxPool / Reshape / Flatten / Transpose / Squeeze / Unsqueeze -> Q with the same
  parameters runs the op on the int8 tensor (it only moves or selects values); Q(DQ(x)) with the
  same parameters is x.
- DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(x_scale * w_scale) [-> Add(bias)]
  (ONNX Runtime's quantize_dynamic) becomes DynamicQMatMul, float32 in and out.
- ONNX Runtime's QOperator QLinearConv and QLinearMatMul with constant weights become QConv and
  QMatMul.
- 2-D QConv regions then run channels-last (NHWC): the Q that enters a region and the DQs that
  leave it become the ai.ember QuantizeLinear / DequantizeLinear that also transpose.
- DequantizeLinear of a constant (embedding tables) is folded, whatever its size.

Every match needs constant per-tensor activation parameters, constant int8 symmetric weights, and
intermediate values nobody else reads. It knows nothing about how the int8 ops are computed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

from ember.ops import quant as quant_ops
from ember.ops.registry import EMBER_DOMAIN
from ember.passes.layout import TO_NCHW, TO_NHWC
from ember.passes.rewrite import (
    FUSED_KEY,
    LAYOUT_KEY,
    Activation,
    add_initializer,
    attr_value,
    constant_array,
    fused_label,
    match_activation,
    replace_chain,
    sole_consumer,
    unique_name,
    use_ember_domain,
)

_INT8 = (np.dtype(np.uint8), np.dtype(np.int8))
# Ops that only move or select values: on an int8 tensor they give the int8 of what they give
# on its dequantized float tensor, when both sides share one scale and zero point.
_MOVERS = frozenset("MaxPool Reshape Flatten Transpose Squeeze Unsqueeze".split())


def _is(node: ir.Node | None, op_type: str, domain: str = "") -> bool:
    return node is not None and node.op_type == op_type and node.domain == domain


def _producer(value: ir.Value | None) -> ir.Node | None:
    return None if value is None else value.producer()


def _input(node: ir.Node, i: int) -> ir.Value | None:
    v = node.inputs[i] if i < len(node.inputs) else None
    return v if v is not None and v.name else None


@dataclasses.dataclass(frozen=True)
class QParams:
    """A per-tensor scale and zero point, as the constant values a Q/DQ node reads."""

    scale: ir.Value
    zero_point: ir.Value | None
    scale_value: float
    zero_value: int
    dtype: np.dtype

    def same(self, other: QParams) -> bool:
        return (self.scale_value, self.zero_value, self.dtype) == (
            other.scale_value,
            other.zero_value,
            other.dtype,
        )


def _qparams(node: ir.Node, data_dtype: np.dtype | None = None) -> QParams | None:
    """The per-tensor parameters of a QuantizeLinear / DequantizeLinear node (default domain, or
    ember's), or None when they are not constant scalars of an 8-bit type."""
    if node.domain not in ("", EMBER_DOMAIN) or len(node.inputs) < 2:
        return None
    if attr_value(node, "block_size", 0) or attr_value(node, "output_dtype", 0):
        return None
    scale_v, zp_v = _input(node, 1), _input(node, 2)
    scale = constant_array(scale_v)
    if scale is None or scale.size != 1 or scale.dtype != np.float32 or not scale.item() > 0:
        return None
    zp = constant_array(zp_v)
    if zp_v is not None and (zp is None or zp.size != 1):
        return None
    dtype: np.dtype | None
    if zp is not None:
        dtype = zp.dtype
    elif node.op_type == "QuantizeLinear":
        dtype = np.dtype(np.uint8)
    else:
        dtype = data_dtype if data_dtype is not None else _value_dtype(node.inputs[0])
    if dtype is None or dtype not in _INT8:
        return None
    assert scale_v is not None
    return QParams(scale_v, zp_v, float(scale.item()), 0 if zp is None else int(zp.item()), dtype)


def _value_dtype(value: ir.Value | None) -> np.dtype | None:
    """The value's element type: recorded, or what its producer makes of int8 tensors (models
    often carry no types for intermediate values, and shape inference would reorder them)."""
    if value is None:
        return None
    if value.dtype is not None:
        try:
            return np.dtype(value.dtype.numpy())
        except (TypeError, ValueError):
            return None
    node = value.producer()
    if node is None or value is not node.outputs[0]:
        return None
    if node.op_type == "QuantizeLinear":
        zp = constant_array(_input(node, 2))
        return np.dtype(np.uint8) if zp is None else zp.dtype
    if node.domain == EMBER_DOMAIN and node.op_type in ("QConv", "QMatMul"):
        zp = constant_array(_input(node, 6))
        return None if zp is None else zp.dtype
    if node.op_type in _MOVERS:
        return _value_dtype(node.inputs[0])
    return None


def _dequantized(value: ir.Value | None) -> tuple[ir.Value, QParams] | None:
    """(int8 tensor, its parameters) when `value` is a per-tensor DequantizeLinear's output."""
    node = _producer(value)
    if not _is(node, "DequantizeLinear"):
        return None
    assert node is not None
    q = _input(node, 0)
    params = _qparams(node)
    if q is None or params is None:
        return None
    return q, params


@dataclasses.dataclass(frozen=True)
class _Weights:
    """Constant int8 weights read through a DequantizeLinear: the array and its scales."""

    q: np.ndarray  # int8
    scale: np.ndarray  # float32, 1 or one per output channel
    value: ir.Value  # the int8 initializer


def _weights(value: ir.Value | None, axis: int) -> _Weights | None:
    """Symmetric int8 weights, per tensor or per channel along `axis`."""
    node = _producer(value)
    if node is None or not _is(node, "DequantizeLinear") or attr_value(node, "block_size", 0):
        return None
    w_value = _input(node, 0)
    w, scale = constant_array(w_value), constant_array(_input(node, 1))
    zp = constant_array(_input(node, 2))
    if w is None or w.dtype != np.int8 or scale is None or scale.dtype != np.float32:
        return None
    if _input(node, 2) is not None and (zp is None or np.any(zp != 0)):
        return None  # asymmetric weights: no VNNI kernel takes a weight zero point
    if scale.size != 1:
        w_axis = int(attr_value(node, "axis", 1)) % w.ndim  # type: ignore[call-overload]
        if scale.ndim != 1 or w_axis != axis % w.ndim or scale.shape[0] != w.shape[w_axis]:
            return None
    assert w_value is not None
    return _Weights(w, scale.reshape(-1), w_value)


def _bias(value: ir.Value | None, n: int) -> np.ndarray | bool | None:
    """A constant bias of n values as float32 (DequantizeLinear of int32, or float), None when
    absent, False when it is not one."""
    if value is None:
        return None
    node = _producer(value)
    if _is(node, "DequantizeLinear"):
        assert node is not None
        b, scale = constant_array(_input(node, 0)), constant_array(_input(node, 1))
        zp = constant_array(_input(node, 2))
        if b is None or scale is None or (zp is not None and np.any(zp != 0)):
            return False
        if b.size != n or scale.size not in (1, n):
            return False
        return quant_ops.dequantize(
            b.reshape(-1), scale.reshape(-1).astype(np.float32), None, np.dtype(np.float32)
        )
    c = constant_array(value)
    if c is None or c.dtype != np.float32 or c.size != n:
        return False
    return c.reshape(-1)


@dataclasses.dataclass
class _Match:
    """A quantized island found from its output Q node, ready to become one int8 node."""

    op: ir.Node  # the Conv / Gemm / MatMul
    chain: list[ir.Node]  # op ... Q, producer to consumer, replaced by the new node
    y: QParams | None
    activation: Activation | None = None
    residual: tuple[ir.Value, QParams] | None = None
    bias_add: np.ndarray | None = None  # MatMul -> Add(constant bias)


def _match_island(q: ir.Node) -> _Match | None:
    """op [-> Add(bias)] [-> Q -> DQ] [-> Add(DQ(z))] [-> act] -> q, walking up from q."""
    y = _qparams(q)
    if y is None:
        return None
    chain: list[ir.Node] = [q]
    value = q.inputs[0]
    node = _producer(value)
    activation = None
    if node is not None and (act := match_activation(node)) is not None:
        if sole_consumer(value) is not chain[0] or node.inputs[0] is None:  # type: ignore[arg-type]
            return None
        activation = act
        chain.insert(0, node)
        value = node.inputs[0]
        node = _producer(value)
    residual = None
    if _is(node, "Add") and sole_consumer(value) is chain[0]:  # type: ignore[arg-type]
        assert node is not None
        for i in (0, 1):
            main, other = node.inputs[i], node.inputs[1 - i]
            z = _dequantized(other)
            inner = _residual_main(main)
            if z is None or inner is None or z[1].dtype != y.dtype:
                continue
            residual = z
            chain[:0] = [*inner, node]
            break
        if residual is None:
            found = _match_bias_add(node, chain, y, activation)
            return found
        op = chain[0]
    else:
        if node is None or sole_consumer(value) is not chain[0]:  # type: ignore[arg-type]
            return None
        op = node
        chain.insert(0, op)
    if not (_is(op, "Conv") or _is(op, "Gemm") or _is(op, "MatMul")):
        return None
    return _Match(op, chain, y, activation, residual)


def _residual_main(value: ir.Value | None) -> list[ir.Node] | None:
    """The nodes from a Conv to the Add that sums a residual into it: [Conv] when the conv feeds
    the Add directly, [Conv, Q, DQ] when its output is quantized on the way (the fused kernel
    repeats that rounding: QConv's `requantize`)."""
    node = _producer(value)
    if node is None or sole_consumer(value) is None:  # type: ignore[arg-type]
        return None
    if _is(node, "Conv"):
        return [node]
    if not _is(node, "DequantizeLinear"):
        return None
    q_value = node.inputs[0]
    q = _producer(q_value)
    if not _is(q, "QuantizeLinear") or sole_consumer(q_value) is not node:  # type: ignore[arg-type]
        return None
    assert q is not None
    dq_params, q_params = _qparams(node), _qparams(q)
    if dq_params is None or q_params is None or not dq_params.same(q_params):
        return None
    conv_out = q.inputs[0]
    conv = _producer(conv_out)
    if not _is(conv, "Conv") or sole_consumer(conv_out) is not q:  # type: ignore[arg-type]
        return None
    assert conv is not None
    return [conv, q, node]


def _match_bias_add(
    add: ir.Node, rest: list[ir.Node], y: QParams, activation: Activation | None
) -> _Match | None:
    """MatMul -> Add(constant 1-D bias) -> rest."""
    for i in (0, 1):
        mm_out, bias_v = add.inputs[i], add.inputs[1 - i]
        mm = _producer(mm_out)
        bias = constant_array(bias_v)
        if not _is(mm, "MatMul") or bias is None or bias.ndim != 1 or bias.dtype != np.float32:
            continue
        if sole_consumer(mm_out) is not add:  # type: ignore[arg-type]
            continue
        assert mm is not None
        return _Match(mm, [mm, add, *rest], y, activation, None, bias)
    return None


def _conv_node(graph: ir.Graph, m: _Match) -> ir.Node | None:
    conv = m.op
    x = _dequantized(_input(conv, 0))
    w = _weights(_input(conv, 1), axis=0)
    if x is None or w is None or w.q.ndim < 3:
        return None
    bias = _bias(_input(conv, 2), w.q.shape[0])
    if bias is False:
        return None
    attrs = [a for a in conv.attributes.values()]
    if m.activation is not None:
        attrs += m.activation.attributes()
    inputs = _common_inputs(graph, x, w.value, _scale_value(graph, conv, w), m.y)
    inputs.append(_bias_value(graph, conv, bias))  # type: ignore[arg-type]
    if m.residual is not None:
        z, zp = m.residual
        inputs += [z, zp.scale, _zero_point_value(graph, zp)]
        skipped = next((n for n in m.chain[1:] if _is(n, "QuantizeLinear")), None)
        if skipped is not None and skipped is not m.chain[-1]:
            # The conv output was quantized on its way to the Add: the kernel does the same.
            c = _qparams(skipped)
            assert c is not None
            info = np.iinfo(c.dtype)
            attrs.append(
                ir.AttrFloat32s(
                    "requantize",
                    [c.scale_value, float(c.zero_value), float(info.min), float(info.max)],
                )
            )
    return _new_node(conv, "QConv", inputs, attrs, m.chain)


def _matmul_node(graph: ir.Graph, m: _Match) -> ir.Node | None:
    op = m.op
    a = _dequantized(_input(op, 0))
    if a is None:
        return None
    bias: np.ndarray | bool | None = None
    if _is(op, "Gemm"):
        alpha, beta = attr_value(op, "alpha", 1.0), attr_value(op, "beta", 1.0)
        if attr_value(op, "transA", 0) or alpha != 1.0 or beta != 1.0:
            return None
        trans_b = bool(attr_value(op, "transB", 0))
        w = _weights(_input(op, 1), axis=0 if trans_b else 1)
        if w is None or w.q.ndim != 2:
            return None
        bias = _bias(_input(op, 2), w.q.shape[0 if trans_b else 1])
        if bias is False:
            return None
        if trans_b:  # QMatMul takes B as (K, N)
            w_value = add_initializer(graph, f"{w.value.name}_kn", np.ascontiguousarray(w.q.T))
            w = _Weights(w.q.T, w.scale, w_value)
    else:
        w = _weights(_input(op, 1), axis=1)
        if w is None or w.q.ndim != 2:
            return None
        bias = m.bias_add
        if bias is not None and bias.shape != (w.q.shape[1],):
            return None
    attrs = [] if m.activation is None else m.activation.attributes()
    inputs = _common_inputs(graph, a, w.value, _scale_value(graph, op, w), m.y)
    inputs.append(_bias_value(graph, op, bias))  # type: ignore[arg-type]
    return _new_node(op, "QMatMul", inputs, attrs, m.chain)


def _common_inputs(
    graph: ir.Graph,
    x: tuple[ir.Value, QParams],
    w: ir.Value,
    w_scale: ir.Value,
    y: QParams | None,
) -> list[ir.Value | None]:
    xq, xp = x
    inputs: list[ir.Value | None] = [xq, xp.scale, _zero_point_value(graph, xp), w, w_scale]
    if y is None:
        return [*inputs, None, None]
    return [*inputs, y.scale, _zero_point_value(graph, y)]


def _zero_point_value(graph: ir.Graph, p: QParams) -> ir.Value:
    if p.zero_point is not None:
        return p.zero_point
    return add_initializer(graph, "zero_point", np.zeros((), p.dtype))


def _scale_value(graph: ir.Graph, op: ir.Node, w: _Weights) -> ir.Value:
    return add_initializer(graph, f"{op.name or 'w'}_w_scale", w.scale.astype(np.float32))


def _bias_value(graph: ir.Graph, op: ir.Node, bias: np.ndarray | None) -> ir.Value | None:
    if bias is None:
        return None
    return add_initializer(graph, f"{op.name or 'op'}_bias_f32", bias.astype(np.float32))


def _new_node(
    op: ir.Node, op_type: str, inputs: list[ir.Value | None], attrs: list[ir.Attr], chain: list
) -> ir.Node:
    while inputs and inputs[-1] is None:
        inputs = inputs[:-1]
    return ir.Node(
        EMBER_DOMAIN,
        op_type,
        inputs,
        attrs,
        name=op.name,
        outputs=[ir.Value()],
        metadata_props={FUSED_KEY: fused_label(chain)},
    )


# ------------------------------------------------------------------------------------------------
# The rules, each a function (graph, node) -> whether it rewrote something
# ------------------------------------------------------------------------------------------------


def _fuse_island(graph: ir.Graph, q: ir.Node) -> bool:
    if not _is(q, "QuantizeLinear"):
        return False
    m = _match_island(q)
    if m is None:
        return False
    new = _conv_node(graph, m) if _is(m.op, "Conv") else _matmul_node(graph, m)
    if new is None:
        return False
    replace_chain(graph, m.chain, new)
    return True


def _move_int8(graph: ir.Graph, q: ir.Node) -> bool:
    """DQ -> mover -> Q (same parameters) becomes the mover on the int8 tensor."""
    if not _is(q, "QuantizeLinear"):
        return False
    value = q.inputs[0]
    mover = _producer(value)
    if mover is None or mover.op_type not in _MOVERS or mover.domain != "":
        return False
    if sole_consumer(value) is not q:  # type: ignore[arg-type]
        return False
    if any(o.name and (o.uses() or o.is_graph_output()) for o in mover.outputs[1:]):
        return False  # MaxPool's indices
    x = _dequantized(mover.inputs[0])
    y = _qparams(q)
    if x is None or y is None or not x[1].same(y):
        return False
    new = ir.Node(
        "",
        mover.op_type,
        [x[0], *mover.inputs[1:]],
        list(mover.attributes.values()),
        name=mover.name,
        outputs=[ir.Value()],
    )
    replace_chain(graph, [mover, q], new)
    return True


def _cancel_pair(graph: ir.Graph, q: ir.Node) -> bool:
    """Q(DQ(x)) with the same parameters is x."""
    if not _is(q, "QuantizeLinear") or q.outputs[0].is_graph_output():
        return False
    x = _dequantized(q.inputs[0])
    y = _qparams(q)
    if x is None or y is None or not x[1].same(y) or _value_dtype(x[0]) != y.dtype:
        return False
    ir.convenience.replace_all_uses_with(q.outputs[0], x[0])
    graph.remove(q, safe=True)
    return True


def _fuse_dynamic(graph: ir.Graph, mmi: ir.Node) -> bool:
    """DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(a_scale * b_scale) [-> Add(bias)]."""
    if not _is(mmi, "MatMulInteger"):
        return False
    dql = _producer(mmi.inputs[0])
    if not _is(dql, "DynamicQuantizeLinear") or _input(mmi, 2) is not dql.outputs[2]:  # type: ignore[union-attr]
        return False
    assert dql is not None
    b = constant_array(_input(mmi, 1))
    b_zp = constant_array(_input(mmi, 3))
    if b is None or b.dtype != np.int8 or b.ndim != 2:
        return False
    if _input(mmi, 3) is not None and (b_zp is None or np.any(b_zp != 0)):
        return False
    cast = sole_consumer(mmi.outputs[0])
    if cast is None or not _is(cast, "Cast") or attr_value(cast, "to") != ir.DataType.FLOAT:
        return False
    mul = sole_consumer(cast.outputs[0])
    if not _is(mul, "Mul"):
        return False
    assert mul is not None
    scales = mul.inputs[1] if mul.inputs[0] is cast.outputs[0] else mul.inputs[0]
    scale_mul = _producer(scales)
    if not _is(scale_mul, "Mul"):
        return False
    assert scale_mul is not None
    a_scale = dql.outputs[1]
    b_scale_v = scale_mul.inputs[1] if scale_mul.inputs[0] is a_scale else scale_mul.inputs[0]
    b_scale = constant_array(b_scale_v)
    if a_scale not in scale_mul.inputs or b_scale is None or b_scale.dtype != np.float32:
        return False
    N = b.shape[1]
    if b_scale.size not in (1, N):
        return False
    chain = [mmi, cast, mul]
    bias = None
    add = sole_consumer(mul.outputs[0])
    if _is(add, "Add"):
        assert add is not None
        other = add.inputs[1] if add.inputs[0] is mul.outputs[0] else add.inputs[0]
        c = constant_array(other)
        if c is not None and c.dtype == np.float32 and c.shape == (N,):
            bias = c
            chain.append(add)
    inputs: list[ir.Value | None] = [
        dql.inputs[0],
        mmi.inputs[1],
        add_initializer(graph, f"{mmi.name or 'mm'}_b_scale", b_scale.reshape(-1)),
    ]
    if bias is not None:
        inputs.append(add_initializer(graph, f"{mmi.name or 'mm'}_bias_f32", bias))
    new = ir.Node(
        EMBER_DOMAIN,
        "DynamicQMatMul",
        inputs,
        name=mmi.name,
        outputs=[ir.Value()],
        metadata_props={FUSED_KEY: fused_label([dql, *chain])},
    )
    replace_chain(graph, chain, new)
    return True


def _qoperator(graph: ir.Graph, node: ir.Node) -> bool:
    """ONNX Runtime's QLinearConv / QLinearMatMul with constant int8 symmetric weights."""
    if not (_is(node, "QLinearConv") or _is(node, "QLinearMatMul")):
        return False
    conv = node.op_type == "QLinearConv"
    ins = [_input(node, i) for i in range(len(node.inputs))]
    w, w_scale, w_zp = (constant_array(v) for v in ins[3:6])
    if w is None or w.dtype != np.int8 or w_scale is None or w_zp is None or np.any(w_zp != 0):
        return False
    params = [constant_array(ins[i]) for i in (1, 2, 6, 7)]
    if any(p is None or p.size != 1 for p in params):
        return False
    x_scale = params[0]
    assert x_scale is not None
    n = w.shape[0] if conv else w.shape[-1]
    if (not conv and w.ndim != 2) or w_scale.size not in (1, n):
        return False
    inputs: list[ir.Value | None] = [
        ins[0],
        ins[1],
        ins[2],
        ins[3],
        add_initializer(graph, f"{node.name or 'w'}_w_scale", w_scale.reshape(-1)),
        ins[6],
        ins[7],
    ]
    if conv and len(ins) > 8 and ins[8] is not None:
        b = constant_array(ins[8])
        if b is None or b.size != n:
            return False
        bias = (
            b.reshape(-1).astype(np.float64)
            * x_scale.astype(np.float64).reshape(())
            * np.broadcast_to(w_scale.astype(np.float64).reshape(-1), (n,))
        )
        inputs.append(
            add_initializer(graph, f"{node.name or 'conv'}_bias_f32", bias.astype(np.float32))
        )
    attrs = list(node.attributes.values()) if conv else []
    new = _new_node(node, "QConv" if conv else "QMatMul", inputs, attrs, [node])
    replace_chain(graph, [node], new)
    return True


_RULES = (_fuse_island, _fuse_dynamic, _qoperator, _move_int8, _cancel_pair)


def _fold_constant_dequantize(graph: ir.Graph) -> int:
    """DequantizeLinear of constants becomes a float initializer (an embedding table would
    otherwise be dequantized on every run; level 1 folds only small tensors)."""
    count = 0
    for node in list(graph):
        if not _is(node, "DequantizeLinear") or not node.outputs[0].uses():
            continue
        args = [constant_array(v) for v in node.inputs]
        if any(a is None for a, v in zip(args, node.inputs, strict=True) if v is not None):
            continue
        x, scale, zp = [*args, None][:3]
        axis = int(attr_value(node, "axis", 1))  # type: ignore[call-overload]
        try:
            y = quant_ops.DequantizeLinear_13(x, scale, zp, axis=axis)
        except ValueError:
            continue
        out = node.outputs[0]
        new = ir.Value(
            name=out.name,
            type=out.type,
            shape=ir.Shape(y.shape),
            const_value=ir.tensor(y, name=out.name),
        )
        if out.is_graph_output():
            continue
        ir.convenience.replace_all_uses_with(out, new)
        graph.remove(node, safe=True)
        graph.register_initializer(new)
        count += 1
    return count


class FuseQuantPass(ir.passes.InPlacePass):
    """Rewrite quantized islands into ai.ember int8 ops (see the module docstring), then lay
    convolutional int8 regions out channels-last. Run before the float fusions and before
    constant folding dequantizes the weights."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        if not any(n.op_type in _QUANT_OPS and n.domain == "" for n in graph):
            return ir.passes.PassResult(model, modified=False)
        count = 0
        changed = True
        while changed:
            changed = False
            for rule in _RULES:
                # Last island first: a residual's conv is still a Conv when its Add is matched.
                for node in reversed(list(graph)):
                    if node.graph is graph and rule(graph, node):
                        count += 1
                        changed = True
        if count:
            common.RemoveUnusedNodesPass()(model)
            use_ember_domain(model)
            count += _channels_last(graph)
            graph.sort()
        count += _fold_constant_dequantize(graph)
        return ir.passes.PassResult(model, modified=count > 0)


_QUANT_OPS = frozenset(
    "QuantizeLinear DequantizeLinear DynamicQuantizeLinear QLinearConv QLinearMatMul".split()
)


# ------------------------------------------------------------------------------------------------
# Channels-last int8 regions
# ------------------------------------------------------------------------------------------------


def _region_role(node: ir.Node) -> tuple[int, ...] | None:
    """The data inputs (NHWC inside a region) of a node that can join an int8 conv region."""
    if node.domain == EMBER_DOMAIN and node.op_type == "QConv":
        w = constant_array(_input(node, 3))
        if w is None or w.ndim != 4 or attr_value(node, "channels_last", 0):
            return None
        return (0, 8) if _input(node, 8) is not None else (0,)
    if _is(node, "MaxPool") and _value_dtype(node.inputs[0]) in _INT8:
        if len(attr_value(node, "kernel_shape", ()) or ()) != 2:  # type: ignore[arg-type]
            return None
        if any(o.name and (o.uses() or o.is_graph_output()) for o in node.outputs[1:]):
            return None
        return (0,)
    return None


def _channels_last(graph: ir.Graph) -> int:
    roles = {n: r for n in graph if (r := _region_role(n)) is not None}
    parent = {n: n for n in roles}

    def find(n: ir.Node) -> ir.Node:
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for node, data in roles.items():
        for i in data:
            p = _producer(node.inputs[i])
            if p in roles:
                parent[find(node)] = find(p)  # type: ignore[index]
    regions: dict[ir.Node, list[ir.Node]] = {}
    for node in graph:
        if node in roles:
            regions.setdefault(find(node), []).append(node)
    count = 0
    for members in regions.values():
        if any(n.op_type == "QConv" for n in members):
            _convert_region(graph, members, roles)
            count += 1
    return count


def _nhwc(shape: ir.Shape | None) -> ir.Shape | None:
    if shape is None or len(shape) != 4:
        return None
    d = list(shape)
    return ir.Shape([d[0], d[2], d[3], d[1]])


def _convert_region(
    graph: ir.Graph, members: list[ir.Node], roles: dict[ir.Node, tuple[int, ...]]
) -> None:
    region: dict[ir.Node, tuple[int, ...]] = {}
    for node in members:
        data = roles[node]
        node.metadata_props[LAYOUT_KEY] = "NHWC"
        if node.op_type == "MaxPool":
            new = ir.Node(
                EMBER_DOMAIN,
                "MaxPool",
                [node.inputs[0]],
                [*node.attributes.values(), ir.AttrInt64("channels_last", 1)],
                name=node.name,
                outputs=[ir.Value()],
                metadata_props={LAYOUT_KEY: "NHWC"},
            )
            replace_chain(graph, [node], new)
            node = new
        else:
            node.attributes["channels_last"] = ir.AttrInt64("channels_last", 1)
        region[node] = data
    inside = {n.outputs[0] for n in region}

    # Entering: a Q read only by the region quantizes straight into NHWC; else a Transpose.
    entries: dict[ir.Value, ir.Value] = {}
    for node, data in region.items():
        for i in data:
            v = node.inputs[i]
            assert v is not None
            if v in inside or v in entries.values():  # NHWC already (a Q made NHWC)
                continue
            if v not in entries:
                entries[v] = _enter(graph, v, region)
            node.replace_input_with(i, entries[v])

    # Leaving: DQs read NHWC and give NCHW; anything else reads a Transpose back.
    for node in region:
        v = node.outputs[0]
        outside = [
            (u.node, u.idx) for u in v.uses() if u.node not in region or u.idx not in region[u.node]
        ]
        back: ir.Value | None = None
        for consumer, i in outside:
            if _is(consumer, "DequantizeLinear") and i == 0 and _qparams(consumer) is not None:
                _to_ember(graph, consumer, "DequantizeLinear")
                continue
            if back is None:
                t = ir.Node(
                    "",
                    "Transpose",
                    [v],
                    [ir.AttrInt64s("perm", list(TO_NCHW))],
                    outputs=[ir.Value(name=unique_name(graph, f"{v.name}_nchw"), type=v.type)],
                )
                graph.insert_after(node, t)
                back = t.outputs[0]
                back.shape = v.shape
            consumer.replace_input_with(i, back)
        if v.is_graph_output():
            t = ir.Node(
                "",
                "Transpose",
                [v],
                [ir.AttrInt64s("perm", list(TO_NCHW))],
                outputs=[ir.Value(type=v.type, shape=v.shape)],
            )
            graph.insert_after(node, t)
            name = v.name
            v.name = unique_name(graph, f"{name}_nhwc")
            t.outputs[0].name = name
            for k, out in enumerate(graph.outputs):
                if out is v:
                    graph.outputs[k] = t.outputs[0]
        v.shape = _nhwc(v.shape)


def _enter(graph: ir.Graph, v: ir.Value, region: dict[ir.Node, tuple[int, ...]]) -> ir.Value:
    """v (NCHW int8) as the NHWC tensor the region reads."""
    q = _producer(v)
    only_region = all(u.node in region and u.idx in region[u.node] for u in v.uses())
    if (
        _is(q, "QuantizeLinear")
        and only_region
        and not v.is_graph_output()
        and _qparams(q) is not None  # type: ignore[arg-type]
    ):
        assert q is not None
        new = _to_ember(graph, q, "QuantizeLinear")
        new.outputs[0].shape = _nhwc(new.outputs[0].shape)
        return new.outputs[0]
    t = ir.Node(
        "",
        "Transpose",
        [v],
        [ir.AttrInt64s("perm", list(TO_NHWC))],
        outputs=[
            ir.Value(name=unique_name(graph, f"{v.name}_nhwc"), type=v.type, shape=_nhwc(v.shape))
        ],
    )
    graph.insert_after(q, t) if q is not None and q.graph is graph else graph.insert_before(
        next(iter(graph)), t
    )
    return t.outputs[0]


def _to_ember(graph: ir.Graph, node: ir.Node, op_type: str) -> ir.Node:
    """node (a per-tensor ONNX Q or DQ) as ember's op of that name with channels_last=1."""
    new = ir.Node(
        EMBER_DOMAIN,
        op_type,
        list(node.inputs),
        [ir.AttrInt64("channels_last", 1)],
        name=node.name,
        outputs=[ir.Value()],
        metadata_props={LAYOUT_KEY: "NHWC"},
    )
    replace_chain(graph, [node], new)
    return new
