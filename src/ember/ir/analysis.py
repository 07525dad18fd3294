"""Static facts about a model for `ember inspect`: op histogram, parameter count, FLOPs estimate.

FLOPs count a multiply-add as 2 and are estimated from inferred shapes with every symbolic dim bound
to a concrete size (batch 1 unless told otherwise); ops whose cost is negligible or unknown count 0.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Mapping

import onnx_ir as ir

from ember.ir.load import infer_shapes


@dataclasses.dataclass(frozen=True)
class ModelStats:
    op_counts: dict[str, int]  # op type (domain-qualified outside the default domain) -> nodes
    n_params: int  # elements in floating/integer initializers and Constant tensors
    size_params: int  # bytes of those
    flops: int | None  # None when shapes could not be inferred
    dims: dict[str, int]  # the symbolic dims bound to compute `flops`


def _nodes(graph: ir.Graph) -> list[ir.Node]:
    out = []
    for n in graph:
        out.append(n)
        for attr in n.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                out.extend(_nodes(attr.value))
    return out


def op_histogram(model: ir.Model) -> dict[str, int]:
    counts = collections.Counter(
        f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
        for n in _nodes(model.graph)
    )
    return dict(counts.most_common())


def _params(model: ir.Model) -> tuple[int, int]:
    count = size = 0
    for v in model.graph.initializers.values():
        if v.const_value is not None:
            count += v.const_value.size
            size += v.const_value.nbytes
    for n in _nodes(model.graph):
        if n.op_type == "Constant" and "value" in n.attributes:
            t = n.attributes["value"].value
            count += t.size
            size += t.nbytes
    return count, size


def _bind_dims(model: ir.Model, dims: Mapping[str, int]) -> tuple[ir.Model, dict[str, int]]:
    """A copy of `model` with concrete input shapes: symbolic dims from `dims`, else 1."""
    copy = ir.from_proto(ir.to_proto(model))
    used: dict[str, int] = {}
    for v in copy.graph.inputs:
        if v.shape is None:
            continue
        new = []
        for d in v.shape:
            if isinstance(d, int):
                new.append(d)
            else:
                name = d.value or "?"
                used[name] = int(dims.get(name, 1))
                new.append(used[name])
        v.shape = ir.Shape(new)
    return copy, used


def _static_dims(v: ir.Value | None) -> list[int] | None:
    """The value's dims when all are known integers, else None."""
    if v is None or v.shape is None:
        return None
    dims = [d for d in v.shape if isinstance(d, int)]
    return dims if len(dims) == len(v.shape) else None


def _numel(v: ir.Value | None) -> int | None:
    dims = _static_dims(v)
    return None if dims is None else math.prod(dims)


def _node_flops(n: ir.Node) -> int:
    out = _numel(n.outputs[0]) if n.outputs else None
    if out is None:
        return 0
    t = n.op_type
    if t in ("MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"):
        a = _static_dims(n.inputs[0])
        if not a:
            return 0
        k = a[0] if t == "Gemm" and _attr(n, "transA") else a[-1]
        return 2 * out * k
    if t in ("Conv", "ConvInteger", "QLinearConv"):
        w = _static_dims(n.inputs[3 if t == "QLinearConv" else 1])
        if w is None:
            return 0
        return 2 * out * math.prod(w[1:])  # per output: (C/groups) * kernel taps
    if t == "ConvTranspose":
        x, w = _numel(n.inputs[0]), _static_dims(n.inputs[1])
        if x is None or w is None:
            return 0
        return 2 * x * math.prod(w[1:])  # each input pixel scatters into (M/groups) * taps
    if t in ("Einsum", "Attention", "LSTM", "GRU", "RNN", "Loop", "Scan", "If"):
        return 0  # data-dependent or structural: not estimated
    if t in (
        "Shape",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Identity",
        "Constant",
        "Transpose",
        "Concat",
        "Split",
        "Slice",
        "Gather",
        "Expand",
        "Cast",
        "Dropout",
    ):
        return 0  # data movement, no arithmetic
    return out  # elementwise, normalization, pooling...: about one op per output element


def _attr(n: ir.Node, name: str) -> int:
    a = n.attributes.get(name)
    return int(a.value) if a is not None else 0


def estimate_flops(
    model: ir.Model, dims: Mapping[str, int] | None = None
) -> tuple[int | None, dict[str, int]]:
    """FLOPs of one run with symbolic dims bound by `dims` (default 1), and the binding used."""
    bound, used = _bind_dims(model, dims or {})
    try:
        infer_shapes(bound)
    except Exception:  # noqa: BLE001  (no estimate beats a crash in a report)
        return None, used
    return sum(_node_flops(n) for n in _nodes(bound.graph)), used


def model_stats(model: ir.Model, dims: Mapping[str, int] | None = None) -> ModelStats:
    count, size = _params(model)
    flops, used = estimate_flops(model, dims)
    return ModelStats(op_histogram(model), count, size, flops, used)


def format_count(n: float) -> str:
    """A count for people: 625.15k, 22.57M."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def format_bytes(n: float) -> str:
    """A size for people: 42.3 KiB, 1.8 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"
