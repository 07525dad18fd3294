"""Channel groups for structured pruning: which tensors must shrink together when a layer loses
output channels, and the edits that shrink them.

A group starts at a producer (Conv with group=1, Gemm, MatMul with a constant weight) and spreads
through the graph: forward to its readers and backward to the producers of anything joined with
it (a residual Add joins two producers into one group). Each value in the group records a `Span`:
where the group's channels lie along one of its axes. The walk collects `Cut`s (positions deleted
from constant inputs: weights, biases, BatchNorm parameters), `Resize`s (Reshape shape entries
that shrink) and `AttrResize`s (a depthwise Conv's `group`). Anything the walk does not know to be
safe raises `UnprunableError` with the reason, and the caller leaves that group whole.

Knows nothing about importance scores or how many channels to remove (prune.py does).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from ember.passes.rewrite import add_initializer, attr_value, constant_array, onnx_opset


class UnprunableError(Exception):
    """The group cannot be pruned safely; the message says why and where."""


class _NeedsCoarserUnitError(Exception):
    """A Reshape splits the channel axis finer than the group's channels (attention heads)."""

    def __init__(self, factor: int, node: ir.Node) -> None:
        super().__init__(f"{node.op_type} {node.name!r} splits channels into blocks of {factor}")
        self.factor = factor
        self.node = node


@dataclasses.dataclass(frozen=True)
class Span:
    """Where a group's channels lie along one axis: channel c covers positions
    offset + c*unit ... offset + (c+1)*unit - 1 of an axis of size `extent`."""

    axis: int  # negative (from the last axis), so that broadcasting operands share it
    offset: int
    unit: int
    extent: int

    def positions(self, channels: np.ndarray) -> np.ndarray:
        rows = self.offset + channels[:, None] * self.unit + np.arange(self.unit)  # (n, unit)
        return rows.ravel()

    def moved(self, axis: int) -> Span:
        return dataclasses.replace(self, axis=axis)


@dataclasses.dataclass(frozen=True)
class Cut:
    """Delete the group's positions (`span`) along `axis` of constant input `index` of `node`."""

    node: ir.Node
    index: int
    axis: int  # non-negative, of the constant
    span: Span


@dataclasses.dataclass(frozen=True)
class Resize:
    """Entry `position` of the constant shape vector at input `index` of `node` shrinks by `per`
    for every removed channel."""

    node: ir.Node
    index: int
    position: int
    per: int


@dataclasses.dataclass(frozen=True)
class AttrResize:
    node: ir.Node
    name: str
    per: int


@dataclasses.dataclass(frozen=True)
class WeightRef:
    """A producer's weight: rows `span` along `axis` belong to the group's channels."""

    node: ir.Node
    index: int
    axis: int
    span: Span


@dataclasses.dataclass
class ChannelGroup:
    channels: int  # channels the group can lose (heads, when unit > 1 at the root)
    unit: int  # columns per channel at the first producer (1, or the head size)
    producers: list[ir.Node] = dataclasses.field(default_factory=list)
    weights: list[WeightRef] = dataclasses.field(default_factory=list)
    cuts: list[Cut] = dataclasses.field(default_factory=list)
    resizes: list[Resize] = dataclasses.field(default_factory=list)
    attrs: list[AttrResize] = dataclasses.field(default_factory=list)
    values: dict[ir.Value, Span] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return "+".join(n.name or n.op_type for n in self.producers)


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A producer left whole, and why."""

    node: str
    reason: str


@dataclasses.dataclass(frozen=True)
class GroupSearch:
    groups: list[ChannelGroup]
    skipped: list[Skipped]


@dataclasses.dataclass(frozen=True)
class _Root:
    weight: int  # input index of the constant weight
    out_axis: int  # weight axis of output channels
    in_axis: int  # weight axis of input channels
    channels: int  # output channels
    value_axis: int  # negative axis of the output's channels


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    return int(attr_value(node, name, default))  # type: ignore[call-overload]


def _ints_attr(node: ir.Node, name: str) -> list[int]:
    return [int(a) for a in attr_value(node, name, None) or []]  # type: ignore[attr-defined]


def root_spec(node: ir.Node) -> _Root | None:
    """How `node` maps channels when it is a prunable layer with a constant weight, else None."""
    if node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    w = constant_array(node.inputs[1])
    if w is None or w.dtype.kind != "f":
        return None
    if node.op_type == "Conv" and w.ndim >= 3 and attr_value(node, "group", 1) == 1:
        return _Root(1, 0, 1, w.shape[0], -(w.ndim - 1))
    if node.op_type == "Gemm" and w.ndim == 2 and not attr_value(node, "transA", 0):
        trans_b = bool(attr_value(node, "transB", 0))
        return _Root(1, 0 if trans_b else 1, 1 if trans_b else 0, w.shape[0 if trans_b else 1], -1)
    if node.op_type == "MatMul" and w.ndim == 2:
        return _Root(1, 1, 0, w.shape[1], -1)
    return None


def _is_depthwise(node: ir.Node) -> bool:
    if node.op_type != "Conv":
        return False
    w = constant_array(node.inputs[1])
    group = _int_attr(node, "group", 1)
    return w is not None and w.ndim >= 3 and w.shape[1] == 1 and group == w.shape[0] and group > 1


_UNARY = frozenset(
    "Relu LeakyRelu Sigmoid HardSigmoid HardSwish Tanh Gelu Elu Selu Celu Softplus Softsign Mish "
    "Erf Abs Neg Sqrt Exp Log Reciprocal Identity Dropout Cast Clip IsNaN IsInf Not Floor Ceil "
    "Round Sign Sin Cos ThresholdedRelu".split()
)
_ELEMENTWISE = frozenset(
    "Add Sub Mul Div Pow Max Min Sum Mean Where PRelu Equal Greater Less And Or".split()
)
_POOLS = frozenset(
    "MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool GlobalLpPool".split()
)
_NORMS = frozenset(["BatchNormalization", "InstanceNormalization"])
_REDUCES = frozenset(
    "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceSumSquare "
    "ReduceLogSum ReduceLogSumExp".split()
)


Dim = int | str | None  # a size, a symbolic name (equal names: equal sizes), or unknown


def inferred_shape(v: ir.Value) -> list[Dim] | None:
    """The shape recorded on `v` (by shape inference), symbolic dims by name."""
    if v.shape is None:
        return None
    return [d if isinstance(d, int) else (d.value or None) for d in v.shape]


def _same_dim(a: Dim, b: Dim) -> bool:
    return a is not None and a == b


class _Walk:
    """One group's walk over the graph from its first producer (see the module docstring)."""

    def __init__(
        self,
        model: ir.Model,
        root: ir.Node,
        unit: int,
        allowed: Collection[ir.Node],
        shapes: Mapping[ir.Value, list[Dim]],
    ):
        spec = root_spec(root)
        assert spec is not None
        if spec.channels % unit:
            raise UnprunableError(
                f"{root.name!r}: {spec.channels} outputs are not blocks of {unit}"
            )
        self.opset = onnx_opset(model)
        self.shapes = shapes
        self.allowed = allowed
        self.group = ChannelGroup(channels=spec.channels // unit, unit=unit)
        self.queue: list[ir.Value] = []
        self.done: set[ir.Node] = set()
        self.reshape_shapes: set[ir.Node] = set()  # Concats whose pieces we resize
        self.reshapes: set[ir.Node] = set()
        self._add_producer(root, Span(spec.value_axis, 0, unit, spec.channels))

    def run(self) -> ChannelGroup:
        while self.queue:
            v = self.queue.pop()
            if v.is_graph_output():
                raise UnprunableError(f"{v.name!r} is a graph output (its shape is the model's)")
            producer = v.producer()
            if producer is None:
                raise UnprunableError(f"{v.name!r} is a graph input or initializer")
            for node in [producer, *(use.node for use in v.uses())]:
                if node not in self.done:
                    self.done.add(node)
                    self._visit(node, v, self.group.values[v])
        for concat in self.reshape_shapes:
            readers = {u.node for u in concat.outputs[0].uses()}
            if not readers <= self.reshapes:
                raise UnprunableError(
                    f"the shape {concat.outputs[0].name!r} is read by nodes outside the group"
                )
        return self.group

    # -- shapes: observed by running when available (see observe_shapes), else inferred

    def _shape_of(self, v: ir.Value | None) -> list[Dim] | None:
        if v is None:
            return None
        return self.shapes[v] if v in self.shapes else inferred_shape(v)

    def _rank(self, v: ir.Value | None) -> int:
        shape = self._shape_of(v)
        if shape is None:
            raise UnprunableError(f"the rank of {v.name if v is not None else '?'!r} is unknown")
        return len(shape)

    def _dims(self, v: ir.Value | None) -> list[int | None]:
        """Static sizes (None for a symbolic or unknown dim)."""
        shape = self._shape_of(v)
        if shape is None:
            raise UnprunableError(f"the shape of {v.name if v is not None else '?'!r} is unknown")
        return [d if isinstance(d, int) else None for d in shape]

    # -- bookkeeping

    def _add(self, v: ir.Value | None, span: Span) -> None:
        if v is None:
            return
        old = self.group.values.get(v)
        if old is not None:
            if old != span:
                raise UnprunableError(f"{v.name!r} is reached with two channel layouts")
            return
        self.group.values[v] = span
        self.queue.append(v)

    def _whole(self, span: Span) -> bool:
        return span.offset == 0 and span.extent == self.group.channels * span.unit

    def _cut_constant(self, node: ir.Node, index: int, span: Span) -> bool:
        """Cut a constant operand that broadcasts against a group value; False if not constant."""
        arr = constant_array(node.inputs[index])
        if arr is None:
            return False
        if arr.ndim < -span.axis or arr.shape[span.axis] == 1:
            return True  # broadcast along the channel axis: nothing to cut
        if arr.shape[span.axis] != span.extent:
            raise UnprunableError(
                f"{node.op_type} {node.name!r}: constant input {index} has {arr.shape[span.axis]} "
                f"entries on the channel axis, expected {span.extent}"
            )
        self.group.cuts.append(Cut(node, index, arr.ndim + span.axis, span))
        return True

    def _add_producer(self, node: ir.Node, span: Span) -> None:
        spec = root_spec(node)
        assert spec is not None
        if node not in self.allowed:
            raise UnprunableError(f"it joins {node.op_type} {node.name!r}, which is excluded")
        if span.axis != spec.value_axis or not self._whole(span) or span.extent != spec.channels:
            raise UnprunableError(
                f"{node.op_type} {node.name!r} joins with a different channel layout"
            )
        self.done.add(node)
        self.group.producers.append(node)
        ref = WeightRef(node, spec.weight, spec.out_axis, span)
        self.group.weights.append(ref)
        self.group.cuts.append(Cut(node, spec.weight, spec.out_axis, span))
        if len(node.inputs) > 2 and node.inputs[2] is not None:  # Conv/Gemm bias
            bias = constant_array(node.inputs[2])
            if bias is None:
                raise UnprunableError(f"{node.op_type} {node.name!r} has a non-constant bias")
            if bias.ndim and bias.shape[-1] != 1:
                self.group.cuts.append(Cut(node, 2, bias.ndim - 1, span))
        self._add(node.outputs[0], span)

    # -- the rules, one per kind of node

    def _visit(self, node: ir.Node, v: ir.Value, span: Span) -> None:
        op = node.op_type
        where = f"{op} {node.name!r}"
        if node.domain not in ("", "ai.onnx"):
            raise UnprunableError(f"{where}: ops of domain {node.domain!r} are not traced")
        from_output = v in node.outputs
        if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
            raise UnprunableError(f"{where}: its second output is used")
        spec = root_spec(node)
        if spec is not None:
            if from_output:
                self._add_producer(node, span)
            elif node.inputs[0] is v:
                want = spec.value_axis if op == "Conv" else -1
                if span.axis != want:
                    raise UnprunableError(f"{where} reads the channels on axis {span.axis}")
                self.group.cuts.append(Cut(node, spec.weight, spec.in_axis, span))
            else:
                raise UnprunableError(f"{where} reads a group value as a weight")
        elif _is_depthwise(node):
            if span.axis != -(self._rank(v) - 1):
                raise UnprunableError(f"{where}: depthwise channels on the wrong axis")
            self.group.cuts.append(Cut(node, 1, 0, span))
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                if constant_array(node.inputs[2]) is None:
                    raise UnprunableError(f"{where} has a non-constant bias")
                self.group.cuts.append(Cut(node, 2, 0, span))
            self.group.attrs.append(AttrResize(node, "group", span.unit))
            self._add(node.inputs[0], span)
            self._add(node.outputs[0], span)
        elif op in _UNARY:
            for i, x in enumerate(node.inputs[1:], 1):
                arr = constant_array(x)
                if x is not None and (arr is None or arr.size != 1):
                    raise UnprunableError(f"{where}: input {i} is not a constant scalar")
            self._add(node.inputs[0], span)
            self._add(node.outputs[0], span)
        elif op in _ELEMENTWISE:
            self._elementwise(node, span)
        elif op in _NORMS:
            if span.axis != -(self._rank(v) - 1):
                raise UnprunableError(f"{where} normalizes per axis 1, the channels are elsewhere")
            for i in range(1, len(node.inputs)):
                if node.inputs[i] is None:
                    continue
                if constant_array(node.inputs[i]) is None:
                    raise UnprunableError(f"{where}: parameter {i} is not constant")
                self.group.cuts.append(Cut(node, i, 0, span))
            self._add(node.inputs[0], span)
            self._add(node.outputs[0], span)
        elif op == "LayerNormalization":
            r = self._rank(v)
            axis = _int_attr(node, "axis", -1)
            if span.axis >= (axis if axis < 0 else axis - r):
                raise UnprunableError(f"{where} normalizes over the channel axis")
            self._add(node.inputs[0], span)
            self._add(node.outputs[0], span)
        elif op in ("Softmax", "LogSoftmax", "Hardmax"):
            r = self._rank(v)
            axis = _int_attr(node, "axis", -1 if self.opset >= 13 else 1)
            if span.axis + r >= axis % r:
                raise UnprunableError(f"{where} normalizes over the channel axis")
            self._add(node.inputs[0], span)
            self._add(node.outputs[0], span)
        elif op in _POOLS:
            if span.axis != -(self._rank(v) - 1):
                raise UnprunableError(f"{where} pools with the channels off axis 1")
            self._add(node.inputs[0], span)
            self._add(node.outputs[0], span)
        elif op in _REDUCES:
            self._reduce(node, v, span)
        elif op == "Transpose":
            r = self._rank(v)
            perm = _ints_attr(node, "perm") or list(range(r))[::-1]
            pos = span.axis + r
            if from_output:
                self._add(node.inputs[0], span.moved(perm[pos] - r))
            else:
                self._add(node.outputs[0], span.moved(perm.index(pos) - r))
        elif op in ("Reshape", "Flatten"):
            self._reshape(node, from_output, span)
        elif op == "Concat":
            self._concat(node, v, from_output, span)
        elif op == "MatMul":
            self._batched_matmul(node, v, span)
        elif op == "Shape":
            self._shape(node, v, span)
        else:
            raise UnprunableError(f"{where}: channels are not traced through {op}")

    def _elementwise(self, node: ir.Node, span: Span) -> None:
        for i, x in enumerate(node.inputs):
            if x is None or x in self.group.values:
                continue
            if self._cut_constant(node, i, span):
                continue
            dims = self._dims(x)
            if len(dims) < -span.axis or dims[span.axis] == 1:
                continue  # broadcasts along the channel axis
            if dims[span.axis] != span.extent:
                raise UnprunableError(
                    f"{node.op_type} {node.name!r}: input {x.name!r} has {dims[span.axis]} "
                    f"on the channel axis, expected {span.extent}"
                )
            if not self._whole(span):
                raise UnprunableError(f"{node.op_type} {node.name!r} joins part of a Concat")
            self._add(x, span)
        self._add(node.outputs[0], span)

    def _reduce(self, node: ir.Node, v: ir.Value, span: Span) -> None:
        x = node.inputs[0]
        r = self._rank(x)
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            axes_arr = constant_array(node.inputs[1])
            if axes_arr is None:
                raise UnprunableError(f"{node.op_type} {node.name!r}: axes are not constant")
            axes = [int(a) % r for a in axes_arr.ravel()]
        else:
            axes = [a % r for a in _ints_attr(node, "axes")]
        if not axes:
            raise UnprunableError(f"{node.op_type} {node.name!r} reduces every axis")
        keep = bool(attr_value(node, "keepdims", 1))
        kept = [a for a in range(r) if keep or a not in axes]  # output axis i is input axis kept[i]
        if v is x:
            pos = span.axis + r
            if pos in axes:
                raise UnprunableError(f"{node.op_type} {node.name!r} reduces the channel axis")
            self._add(node.outputs[0], span.moved(kept.index(pos) - len(kept)))
        else:
            pos = kept[span.axis + len(kept)]
            self._add(x, span.moved(pos - r))

    def _concat(self, node: ir.Node, v: ir.Value, from_output: bool, span: Span) -> None:
        r = self._rank(v)
        axis = _int_attr(node, "axis", 0) % r  # type: ignore[call-overload]
        if axis != span.axis + r:
            for i, _ in enumerate(node.inputs):
                if node.inputs[i] not in self.group.values and not self._cut_constant(
                    node, i, span
                ):
                    self._add(node.inputs[i], span)
            self._add(node.outputs[0], span)
            return
        if from_output:
            raise UnprunableError(
                f"Concat {node.name!r}: its output joins its own inputs' channels"
            )
        offset = 0
        for x in node.inputs:
            if x is v:
                break
            d = self._dims(x)[axis] if x is not None else 0
            if d is None:
                raise UnprunableError(f"Concat {node.name!r}: the size of {x.name!r} is unknown")  # type: ignore[union-attr]
            offset += d
        total = self._dims(node.outputs[0])[axis]
        if total is None:
            raise UnprunableError(f"Concat {node.name!r}: the output size is unknown")
        self._add(node.outputs[0], Span(span.axis, offset + span.offset, span.unit, total))

    def _batched_matmul(self, node: ir.Node, v: ir.Value, span: Span) -> None:
        a, b = node.inputs[0], node.inputs[1]
        out = node.outputs[0]
        if not self._whole(span):
            raise UnprunableError(f"MatMul {node.name!r} reads part of a Concat")
        if v is out:
            if span.axis == -1:
                self._add(b, span)
            elif span.axis == -2:
                self._add(a, span)
            else:
                for x in (a, b):
                    self._batch_operand(node, x, span)
            return
        if (v is a and span.axis == -1) or (v is b and span.axis == -2):
            raise UnprunableError(f"MatMul {node.name!r} contracts over the channel axis")
        if span.axis <= -3:
            for x in (a, b):
                self._batch_operand(node, x, span)
        self._add(out, span)

    def _batch_operand(self, node: ir.Node, x: ir.Value | None, span: Span) -> None:
        if x is None or x in self.group.values:
            return
        dims = self._dims(x)
        if len(dims) < -span.axis or dims[span.axis] == 1:
            return
        if dims[span.axis] != span.extent:
            raise UnprunableError(
                f"MatMul {node.name!r}: {x.name!r} does not share the channel axis"
            )
        self._add(x, span)

    def _shape(self, node: ir.Node, v: ir.Value, span: Span) -> None:
        if node.attributes:
            raise UnprunableError(f"Shape {node.name!r} takes a slice of the shape")
        pos = span.axis + self._rank(v)
        for use in node.outputs[0].uses():
            g = use.node
            idx = constant_array(g.inputs[1]) if g.op_type == "Gather" else None
            if idx is None or idx.size != 1 or int(idx.ravel()[0]) % self._rank(v) == pos:
                raise UnprunableError(f"Shape {node.name!r}: the channel count is read as data")

    def _reshape(self, node: ir.Node, from_output: bool, span: Span) -> None:
        x, y = node.inputs[0], node.outputs[0]
        assert x is not None
        x_dims = self._dims(x)
        entries: list[tuple[int | None, tuple[ir.Node, int, int] | None]] = []
        if node.op_type == "Flatten":
            axis = _int_attr(node, "axis", 1) % (len(x_dims) + 1)  # type: ignore[call-overload]
            head, tail = x_dims[:axis], x_dims[axis:]
            y_dims = [
                math.prod(head) if None not in head else None,  # type: ignore[arg-type]
                math.prod(tail) if None not in tail else None,  # type: ignore[arg-type]
            ]
        else:
            y_dims = self._dims(y)
            entries = self._shape_entries(node)
            for p, (literal, _) in enumerate(entries[: len(y_dims)]):
                if y_dims[p] is None and literal is not None:
                    if literal > 0:
                        y_dims[p] = literal
                    elif literal == 0 and p < len(x_dims):
                        y_dims[p] = x_dims[p]
        known, other = (y_dims, x_dims) if from_output else (x_dims, y_dims)
        a = span.axis + len(known)
        new = self._reshape_span(node, span, known, other, a, from_output)
        if not from_output:
            self._add(y, new)
        else:
            self._add(x, new)
        if node.op_type == "Reshape":
            y_span = span if from_output else new
            p = y_span.axis + len(y_dims)
            literal, slot = entries[p] if p < len(entries) else (None, None)
            if literal is not None and literal > 0:
                assert slot is not None
                self.group.resizes.append(Resize(slot[0], slot[1], slot[2], y_span.unit))
                if slot[0] is not node:
                    self.reshape_shapes.add(slot[0])
                self.reshapes.add(node)
            elif literal == 0:
                x_span = new if from_output else span
                if x_span.axis + len(x_dims) != p:
                    raise UnprunableError(
                        f"Reshape {node.name!r} copies a dim onto the channel axis"
                    )
            elif literal is None:
                raise UnprunableError(f"Reshape {node.name!r}: the channel axis size is computed")

    def _reshape_span(
        self,
        node: ir.Node,
        span: Span,
        known: Sequence[int | None],
        other: Sequence[int | None],
        a: int,
        from_output: bool,
    ) -> Span:
        """The channels' span on the other side of a Reshape/Flatten: the flat suffix from the
        channel axis on is the same memory on both sides, so find the axis that starts it."""
        where = f"{node.op_type} {node.name!r}"
        # A reshape that keeps the channel axis and every dim after it (symbolic dims compared
        # by name) leaves the channels where they are.
        b = a + len(other) - len(known)
        x, y = node.inputs[0], node.outputs[0]
        assert x is not None
        x_shape, y_shape = self._shape_of(x), self._shape_of(y)
        known_shape, other_shape = (y_shape, x_shape) if from_output else (x_shape, y_shape)
        if (
            node.op_type == "Reshape"
            and b >= 0
            and other[b] == span.extent
            and known_shape is not None
            and other_shape is not None
        ):
            tails = zip(list(known_shape)[a + 1 :], list(other_shape)[b + 1 :], strict=True)
            if all(_same_dim(p, q) for p, q in tails):
                return span.moved(span.axis)
        suffix = known[a:]
        if None in suffix:
            raise UnprunableError(f"{where}: dims after the channel axis are unknown")
        size = math.prod(suffix)  # type: ignore[arg-type]
        stride = math.prod(known[a + 1 :])  # type: ignore[arg-type]
        start: int | None = None
        for i in range(len(other) - 1, -1, -1):
            tail = other[i:]
            if None in tail:
                break
            if math.prod(tail) == size and start is None:  # type: ignore[arg-type]
                start = i  # the rightmost such axis: leading 1-dims stay outside
            if math.prod(tail) > size:  # type: ignore[arg-type]
                break
        if start is None:
            raise UnprunableError(f"{where}: the channel axis does not survive the reshape")
        other_stride = math.prod(other[start + 1 :])  # type: ignore[arg-type]
        if (span.unit * stride) % other_stride:
            factor = other_stride // math.gcd(span.unit * stride, other_stride)
            raise _NeedsCoarserUnitError(factor, node)
        if (span.offset * stride) % other_stride:
            raise UnprunableError(f"{where} splits a channel")
        return Span(
            start - len(other),
            span.offset * stride // other_stride,
            span.unit * stride // other_stride,
            other[start],  # type: ignore[arg-type]
        )

    def _shape_entries(
        self, node: ir.Node
    ) -> list[tuple[int | None, tuple[ir.Node, int, int] | None]]:
        """Each entry of a Reshape's shape input: its literal value (None if computed) and the
        constant holding it (node, input index, position)."""
        shape = node.inputs[1]
        arr = constant_array(shape)
        if arr is not None:
            return [(int(e), (node, 1, p)) for p, e in enumerate(arr.ravel())]
        producer = shape.producer() if shape is not None else None
        if producer is None or producer.op_type != "Concat":
            return []
        out: list[tuple[int | None, tuple[ir.Node, int, int] | None]] = []
        for i, piece in enumerate(producer.inputs):
            arr = constant_array(piece)
            if arr is not None:
                out.extend((int(e), (producer, i, p)) for p, e in enumerate(arr.ravel()))
                continue
            dims = self._dims(piece) if piece is not None else [None]
            if len(dims) != 1 or dims[0] is None:
                return out  # positions past an unknown-length piece are unknown
            out.extend((None, None) for _ in range(dims[0]))
        return out


def find_groups(
    model: ir.Model,
    roots: Sequence[ir.Node],
    *,
    heads: bool,
    allowed: Collection[ir.Node] | None = None,
    shapes: Mapping[ir.Value, list[Dim]] | None = None,
) -> GroupSearch:
    """Trace a group from every root in `roots` (graph order) not already in a group.

    `heads`: where a Reshape splits a layer's outputs into blocks (attention heads), retry with
    whole blocks as the channels; otherwise such a layer is left whole. `allowed`: the producers
    that may be pruned (default `roots`); a group that reaches any other producer stays whole.
    `shapes`: value shapes to use instead of the inferred ones (`observe_shapes`).
    """
    allowed_set = set(roots if allowed is None else allowed)
    taken: set[ir.Node] = set()
    groups: list[ChannelGroup] = []
    skipped: list[Skipped] = []
    for root in roots:
        if root in taken:
            continue
        unit = 1
        while True:
            try:
                group = _Walk(model, root, unit, allowed_set, shapes or {}).run()
            except _NeedsCoarserUnitError as e:
                if heads:
                    unit *= e.factor
                    continue
                skipped.append(
                    Skipped(
                        root.name or root.op_type,
                        f"{e}: attention heads are pruned whole with granularity='head'",
                    )
                )
            except UnprunableError as e:
                skipped.append(Skipped(root.name or root.op_type, str(e)))
            else:
                taken.update(group.producers)
                groups.append(group)
            break
    return GroupSearch(groups, skipped)


def observe_shapes(model: ir.Model) -> dict[ir.Value, list[Dim]]:
    """Every value's shape, seen by running the model (ember, level 0) at two input sizes.

    Shape inference loses sizes that exporters compute at run time (Shape -> Gather -> Concat ->
    Reshape, and -1 entries), so a head count or a mask's broadcast dim may be unknown to it.
    Each symbolic input dim gets a different size in each run; a dim with the same size in both
    runs is static, any other is named after its two sizes (equal names: the same dim). Empty
    when the model cannot run on random inputs: the walk then uses the inferred shapes.
    """
    import ember

    names: dict[str, int] = {}  # symbolic dim name -> index, so distinct dims get distinct sizes
    for v in model.graph.inputs:
        for d in inferred_shape(v) or []:
            if isinstance(d, str):
                names.setdefault(d, len(names))
    values = {v.name: v for node in model.graph for v in node.outputs if v.name}
    rng = np.random.default_rng(0)
    runs: list[dict[str, tuple[int, ...]]] = []
    try:
        compiled = ember.load(model, level=0)
        for first, step in ((2, 1), (5, 2)):
            feeds = {}
            for spec in compiled.inputs:
                if spec.shape is None or spec.dtype is None:
                    return {}
                shape = [
                    d if isinstance(d, int) else first + step * names.get(d or "", len(names))
                    for d in spec.shape
                ]
                if spec.dtype.kind == "f":
                    feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
                elif spec.dtype.kind in "iub":
                    feeds[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
                else:
                    return {}
            out = compiled.run(feeds, list(values))
            runs.append({k: np.shape(a) for k, a in out.items() if isinstance(a, np.ndarray)})
    except Exception:  # noqa: BLE001  (observing is an aid: without it, the inferred shapes)
        return {}
    shapes: dict[ir.Value, list[Dim]] = {}
    for name, v in values.items():
        a, b = runs[0].get(name), runs[1].get(name)
        if a is None or b is None or len(a) != len(b):
            continue
        shapes[v] = [p if p == q else f"run:{p}/{q}" for p, q in zip(a, b, strict=True)]
    for v in model.graph.inputs:
        declared = inferred_shape(v)
        if declared is not None:  # the same naming as the observed dims
            shapes[v] = [
                d if not isinstance(d, str) else f"run:{2 + names[d]}/{5 + 2 * names[d]}"
                for d in declared
            ]
    return shapes


def remove_channels(model: ir.Model, removals: Sequence[tuple[ChannelGroup, np.ndarray]]) -> None:
    """Apply each group's edits for its removed channel indices, in place."""
    cuts: dict[tuple[ir.Node, int], dict[int, list[np.ndarray]]] = defaultdict(
        lambda: defaultdict(list)
    )
    shrink: dict[tuple[ir.Node, int], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    attrs: dict[tuple[ir.Node, str], int] = defaultdict(int)
    for group, removed in removals:
        if not len(removed):
            continue
        removed = np.asarray(removed, np.int64)
        for cut in group.cuts:
            cuts[(cut.node, cut.index)][cut.axis].append(cut.span.positions(removed))
        for resize in group.resizes:
            shrink[(resize.node, resize.index)][resize.position] += resize.per * len(removed)
        for attr in group.attrs:
            attrs[(attr.node, attr.name)] += attr.per * len(removed)
    graph = model.graph
    for node, index in set(cuts) | set(shrink):
        arr = constant_array(node.inputs[index])
        assert arr is not None
        for axis, positions in cuts.get((node, index), {}).items():
            arr = np.delete(arr, np.unique(np.concatenate(positions)), axis=axis)
        if (node, index) in shrink:
            arr = arr.copy()
            flat = arr.reshape(-1)
            for position, delta in shrink[(node, index)].items():
                flat[position] -= delta
        old = node.inputs[index]
        assert old is not None
        if old.is_initializer() and not old.is_graph_input() and len(old.uses()) == 1:
            # The only reader: the initializer keeps its name (users look weights up by it).
            old.const_value = ir.tensor(arr, name=old.name)
            old.shape = ir.Shape(arr.shape)
        else:
            node.replace_input_with(index, add_initializer(graph, f"{old.name}_pruned", arr))
    for (node, name), delta in attrs.items():
        value = _int_attr(node, name, 1) - delta
        node.attributes[name] = ir.AttrInt64(name, value)
