"""Level-3 pass: run convolutional regions of the graph in channels-last (NHWC) layout.

A region is a connected set of nodes that either are 2-D convolutions or do not care about the
layout (elementwise ops, pools, channel Concat); a region without a conv is left alone. Transposes
go only on the region's edges. The pass knows layouts of rank-4 tensors only.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from ember.ops.registry import EMBER_DOMAIN
from ember.passes.rewrite import (
    FUSED_KEY,
    LAYOUT_KEY,
    add_initializer,
    attr_value,
    constant_array,
    fused_label,
    rank,
    replace_chain,
    unique_name,
    use_ember_domain,
)

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)

# One data input, same layout out as in; any other inputs (Clip's bounds) are scalars.
_UNARY = frozenset(
    """Relu LeakyRelu Sigmoid Tanh HardSigmoid HardSwish Elu Selu Celu Gelu Clip Softplus
    Softsign ThresholdedRelu Mish Abs Neg Exp Log Sqrt Reciprocal Floor Ceil Round Erf Sign Sin Cos
    Cast Identity""".split()
)
# Broadcasting binary ops: NHWC on both sides broadcasts exactly like NCHW on both sides.
_BINARY = frozenset("Add Sub Mul Div Max Min Pow".split())
_POOLS = frozenset("MaxPool AveragePool GlobalAveragePool".split())


@dataclasses.dataclass(frozen=True)
class _Role:
    """How a node takes part in a region: `data` are the inputs that carry the 4-D tensor (NHWC
    inside the region), `consts` the constant operands to rewrite into NHWC broadcast shape."""

    anchor: bool  # a conv: the reason to convert a region at all
    data: tuple[int, ...]
    consts: tuple[int, ...] = ()


class ChannelsLastPass(ir.passes.InPlacePass):
    """Convert maximal regions of 2-D Conv/FusedConv (and the layout-agnostic ops around them) to
    NHWC: convs become FusedConv(channels_last=1), pools the ai.ember pools with channels_last=1,
    Concat on channels goes to axis 3, and constant operands of binary ops are rewritten from
    (C, 1, 1) / (1, C, 1, 1) to (1, 1, 1, C). Transpose(0, 2, 3, 1) goes where a tensor enters a
    region, Transpose(0, 3, 1, 2) where one leaves it (to a graph output or an op needing NCHW).

    Safe because every op inside computes the same numbers on the transposed tensor, and each value
    that leaves is transposed back; graph inputs and outputs keep their names and layouts.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        roles = {n: r for n in graph if (r := _role(n)) is not None}
        parent = {n: n for n in roles}

        def find(n: ir.Node) -> ir.Node:
            while parent[n] is not n:
                parent[n] = parent[parent[n]]
                n = parent[n]
            return n

        for node, role in roles.items():
            for i in role.data:
                producer = node.inputs[i].producer()  # type: ignore[union-attr]
                if producer in roles:
                    parent[find(node)] = find(producer)  # type: ignore[index]
        regions: dict[ir.Node, list[ir.Node]] = {}
        for node in graph:
            if node in roles:
                regions.setdefault(find(node), []).append(node)
        count = 0
        for members in regions.values():
            if any(roles[n].anchor for n in members):
                _convert(graph, members, roles)
                count += 1
        if count:
            use_ember_domain(model)
            graph.sort()
        return ir.passes.PassResult(model, modified=count > 0)


def _role(node: ir.Node) -> _Role | None:
    """The node's role in a channels-last region, or None when it cannot join one."""
    if not node.outputs or rank(node.outputs[0]) != 4:
        return None
    if any(v.name and (v.uses() or v.is_graph_output()) for v in node.outputs[1:]):
        return None  # MaxPool's Indices and the like are laid out NCHW
    t = node.op_type
    if node.domain == "" and (t in _BINARY or t == "PRelu") and len(node.inputs) == 2:
        return _operand_roles(node, range(2))
    if node.domain == "" and t == "Concat" and attr_value(node, "axis") in (1, -3):
        return _operand_roles(node, range(len(node.inputs)))
    if not node.inputs or rank(node.inputs[0]) != 4:
        return None
    one = _Role(anchor=False, data=(0,))
    if node.domain == "":
        if t == "Conv":
            return _Role(anchor=True, data=(0,))
        return one if t in _POOLS or t in _UNARY else None
    if node.domain != EMBER_DOMAIN:
        return None
    if t == "Gelu":
        return one
    if attr_value(node, "channels_last", 0) != 0:
        return None
    if t == "FusedConv":
        z = len(node.inputs) > 3 and node.inputs[3] is not None
        return _Role(anchor=True, data=(0, 3) if z else (0,))
    return one if t in _POOLS else None


def _operand_roles(node: ir.Node, indices: range) -> _Role | None:
    """Operands of a broadcasting op or Concat: 4-D tensors, or constants of rank <= 4."""
    data, consts = [], []
    for i in indices:
        v = node.inputs[i]
        c = constant_array(v)
        if c is not None and c.ndim <= 4 and (node.op_type != "Concat" or c.ndim == 4):
            consts.append(i)
        elif v is not None and rank(v) == 4 and c is None:
            data.append(i)
        else:
            return None
    return _Role(anchor=False, data=tuple(data), consts=tuple(consts))


def _nhwc_shape(shape: ir.Shape | None) -> ir.Shape | None:
    if shape is None:
        return None
    d = list(shape)
    return ir.Shape([d[0], d[2], d[3], d[1]])


def _transpose(x: ir.Value, perm: tuple[int, ...], name: str, shape: ir.Shape | None) -> ir.Node:
    out = ir.Value(name=name, type=x.type, shape=shape)
    return ir.Node("", "Transpose", [x], [ir.AttrInt64s("perm", list(perm))], outputs=[out])


def _convert(graph: ir.Graph, members: list[ir.Node], roles: dict[ir.Node, _Role]) -> None:
    region: dict[ir.Node, _Role] = {}
    for node in members:
        region[_to_channels_last(graph, node)] = roles[node]
    inside = {n.outputs[0] for n in region}

    # Tensors entering the region: one Transpose to NHWC per tensor, constants rewritten.
    entries: dict[ir.Value, ir.Value] = {}
    consts: dict[ir.Value, ir.Value] = {}
    for node, role in region.items():
        for i in role.data:
            v = node.inputs[i]
            assert v is not None
            if v in inside:
                continue
            if v not in entries:
                t = _transpose(
                    v, TO_NHWC, unique_name(graph, f"{v.name}_nhwc"), _nhwc_shape(v.shape)
                )
                graph.insert_before(node, t)
                entries[v] = t.outputs[0]
            node.replace_input_with(i, entries[v])
        for i in role.consts:
            v = node.inputs[i]
            assert v is not None
            c = constant_array(v)
            assert c is not None
            if c.size == 1:
                continue  # a scalar broadcasts the same in any layout
            if v not in consts:
                c4 = c.reshape((1,) * (4 - c.ndim) + c.shape)  # ONNX broadcasting aligns right
                consts[v] = add_initializer(graph, f"{v.name}_nhwc", c4.transpose(TO_NHWC).copy())
            node.replace_input_with(i, consts[v])

    # Tensors leaving the region (to other ops or graph outputs): one Transpose back to NCHW.
    for node in region:
        v = node.outputs[0]
        outside = [
            (u.node, u.idx)
            for u in v.uses()
            if u.node not in region or u.idx not in region[u.node].data
        ]
        if outside or v.is_graph_output():
            t = _transpose(v, TO_NCHW, "", v.shape)
            graph.insert_after(node, t)
            back = t.outputs[0]
            for consumer, i in outside:
                consumer.replace_input_with(i, back)
            if v.is_graph_output():
                name = v.name
                v.name = unique_name(graph, f"{name}_nhwc")
                back.name = name
                for k, out in enumerate(graph.outputs):
                    if out is v:
                        graph.outputs[k] = back
            else:
                back.name = unique_name(graph, f"{v.name}_nchw")
        v.shape = _nhwc_shape(v.shape)


def _to_channels_last(graph: ir.Graph, node: ir.Node) -> ir.Node:
    """`node` in its channels-last form (a new node, or `node` with changed attributes)."""
    node.metadata_props[LAYOUT_KEY] = "NHWC"
    t = node.op_type
    if node.domain == "" and t in ("Conv", *_POOLS):
        attrs = [*node.attributes.values(), ir.AttrInt64("channels_last", 1)]
        inputs = list(node.inputs)
        meta = {LAYOUT_KEY: "NHWC"}
        if t == "Conv":
            meta[FUSED_KEY] = fused_label([node])
        new = ir.Node(
            EMBER_DOMAIN,
            "FusedConv" if t == "Conv" else t,
            inputs,
            attrs,
            name=node.name,
            outputs=[ir.Value()],
            metadata_props=meta,
        )
        replace_chain(graph, [node], new)
        return new
    if node.domain == EMBER_DOMAIN and (t == "FusedConv" or t in _POOLS):
        node.attributes["channels_last"] = ir.AttrInt64("channels_last", 1)
    elif t == "Concat":
        node.attributes["axis"] = ir.AttrInt64("axis", 3)
    return node
