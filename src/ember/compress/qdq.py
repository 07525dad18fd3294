"""Integer quantization of a graph: static int8 QDQ, dynamic int8 (MatMulInteger), weight-only
int8/int4 (blocked DequantizeLinear), in the forms ONNX Runtime's quantizer writes, so ORT runs the
result and ember's int8 fusion pass recognizes it.

Static: per-channel symmetric int8 weights, per-tensor activations (uint8 asymmetric for "auto",
int8 symmetric when asked), int32 biases, Q/DQ on op outputs (except an output that is only a
graph output: it stays float, as quantizing it would only add error), Relu/Clip folded into the
range of the op before them, MaxPool/Reshape/Flatten/Transpose/Squeeze/Unsqueeze passing the int8
domain through with their input's parameters, residual Adds of two quantized tensors quantized.
Options: bias correction and SmoothQuant. fp16/bf16 are precision.py's; this module hands them over.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

import numpy as np
import onnx_ir as ir

from ember.compress import _graph as g
from ember.compress._qmath import QParams, QuantizedTensor, choose_qparams, dequantize_tensor
from ember.compress._qmath import quantize_weight as _quantize_weight
from ember.compress.calibrate import (
    Histogram,
    Sample,
    activation_symmetric,
    compute_range,
    limit_samples,
    stream_tensors,
)
from ember.compress.config import QuantConfig
from ember.errors import ConfigError
from ember.ir import verify
from ember.passes.rewrite import add_initializer, attr_value

Progress = Callable[[str, int, "int | None"], None]

#: ops whose output keeps the int8 domain with its input's scale and zero point (ORT's Direct8Bit)
SHARED_PARAMS_OPS = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")
#: activations folded into the range of the quantized op before them (uint8: zero point 0 clips)
FOLDABLE_ACTIVATIONS = ("Relu", "Clip")
#: opset each mode needs: per-axis Q/DQ (13), blocked DequantizeLinear and INT4 (21)
MODE_OPSET = {"static": 13, "dynamic": 13, "weight-only": 21}

_INT8 = np.dtype(np.int8)
_UINT8 = np.dtype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Target:
    """One node to quantize and the roles of its inputs."""

    node: ir.Node
    activations: tuple[int, ...]  # input indices holding float activations
    weight: int | None  # input index of the constant weight
    weight_axis: int  # its output-channel axis (per-channel scales, bias channels)
    bias: int | None  # input index of a constant 1-D bias (Conv, Gemm)


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    return int(attr_value(node, name, default))  # type: ignore[call-overload]


def _float_attr(node: ir.Node, name: str, default: float) -> float:
    return float(attr_value(node, name, default))  # type: ignore[arg-type]


def _ints_attr(node: ir.Node, name: str, default: list[int]) -> list[int]:
    return [int(v) for v in attr_value(node, name, default)]  # type: ignore[attr-defined]


def _input(node: ir.Node, index: int | None) -> ir.Value:
    """A node input that the Target guarantees is present."""
    assert index is not None
    value = node.inputs[index]
    assert value is not None, f"{node.name}: input {index} is missing"
    return value


def _index(index: int | None) -> int:
    assert index is not None
    return index


def _const(value: ir.Value) -> np.ndarray:
    """A value the Target guarantees is constant."""
    arr = g.constant_of(value)
    assert arr is not None, f"{value.name} is not a constant"
    return arr


# ---------------------------------------------------------------------------------------------
# Which nodes


def quantizable_nodes(model: ir.Model, config: QuantConfig) -> list[str]:
    """Names of the nodes `quantize_graph(model, config, ...)` would quantize, in graph order
    (for fp16/bf16: the compute nodes that would run in the low precision). Unnamed nodes are
    named `<OpType>_<index>`, as quantize_graph names them.

    >>> from ember.ir import load_model
    >>> from ember.zoo import model_path
    >>> quantizable_nodes(load_model(model_path("mnist_mlp")), QuantConfig(mode="dynamic"))
    ['/0/Gemm', '/3/Gemm', '/6/Gemm']
    """
    work = g.working_copy(model)
    _check_names(work, config.exclude, "QuantConfig.exclude")
    if not config.is_integer:
        from ember.compress.precision import low_precision_nodes

        return low_precision_nodes(work, config)
    return [t.node.name or "" for t in select_targets(work, config)]


def select_targets(
    model: ir.Model, config: QuantConfig, keep_fp32: Collection[str] = ()
) -> list[Target]:
    skip = set(config.exclude) | set(keep_fp32)
    targets = []
    for node in g.graph_order(model.graph):
        if node.domain not in ("", "ai.onnx") or node.op_type not in config.op_types:
            continue
        if node.name in skip:
            continue
        target = _target(node, config.mode)
        if target is not None:
            targets.append(target)
    return targets


def _target(node: ir.Node, mode: str) -> Target | None:
    inputs = list(node.inputs)
    if len(inputs) < 2 or not _is_float_activation(inputs[0]):
        return None
    w = g.constant_of(inputs[1])
    if w is None or w.dtype != np.float32:
        w = None
    if node.op_type == "Conv":
        if mode != "static" or w is None or w.ndim < 3:
            return None
        return Target(node, (0,), 1, 0, _bias_index(node, w.shape[0]))
    if node.op_type == "Gemm":
        if w is None or w.ndim != 2:
            return None
        if mode != "static" and attr_value(node, "transA", 0):
            return None
        trans_b = bool(attr_value(node, "transB", 0))
        axis = 0 if trans_b else 1
        return Target(node, (0,), 1, axis, _bias_index(node, w.shape[axis]))
    if node.op_type == "MatMul":
        if w is not None and w.ndim >= 2:
            if mode != "static" and w.ndim != 2:
                return None
            return Target(node, (0,), 1, w.ndim - 1, None)
        if mode == "static" and _is_float_activation(inputs[1]):
            return Target(node, (0, 1), None, 0, None)  # activation x activation (attention)
    return None


def _is_float_activation(value: ir.Value | None) -> bool:
    if value is None or g.constant_of(value) is not None:
        return False
    return value.dtype in (ir.DataType.FLOAT, None)


def _bias_index(node: ir.Node, channels: int) -> int | None:
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return None
    b = g.constant_of(node.inputs[2])
    if b is None or b.dtype != np.float32 or b.shape != (channels,):
        return None
    return 2


def _check_names(model: ir.Model, names: Iterable[str], what: str) -> None:
    known = {n.name for n in model.graph}
    unknown = [n for n in names if n not in known]
    if unknown:
        sample = ", ".join(sorted(k for k in known if k)[:8])
        raise ConfigError(
            f"{what} names node(s) {', '.join(map(repr, unknown))} that the model does not have; "
            f"its nodes include: {sample}{', ...' if len(known) > 8 else ''}"
        )


# ---------------------------------------------------------------------------------------------
# The entry point


def quantize_graph(
    model: ir.Model,
    config: QuantConfig,
    samples: Iterable[Sample] | None = None,
    *,
    keep_fp32: Collection[str] = (),
    progress: Progress | None = None,
) -> ir.Model:
    """A new model: `model` quantized as `config` says; `model` itself is untouched.

    `samples` (batches of graph input name -> array) are required for static quantization and
    SmoothQuant; `keep_fp32` names nodes left in float32.

    >>> import numpy as np
    >>> from ember.ir import load_model
    >>> from ember.zoo import model_path, load_eval
    >>> m = load_model(model_path("mnist_mlp"))
    >>> q = quantize_graph(m, QuantConfig(), [{"input": load_eval("mnist_mlp").x[:64]}])
    >>> sorted({n.op_type for n in q.graph})
    ['DequantizeLinear', 'Gemm', 'QuantizeLinear']
    """
    if not config.is_integer:
        from ember.compress.precision import convert_precision

        return convert_precision(model, config, keep_fp32=keep_fp32)
    if config.mode == "static" and samples is None:
        raise ConfigError(
            "empty calibration set: static quantization needs calibration samples to measure "
            "activation ranges (pass samples, or use mode='dynamic' or 'weight-only')"
        )
    if config.smoothquant and samples is None:
        raise ConfigError(
            "QuantConfig.smoothquant needs calibration samples to measure activation channels; "
            "pass samples or set smoothquant=0"
        )
    work = g.working_copy(model)
    _check_names(work, config.exclude, "QuantConfig.exclude")
    _check_names(work, keep_fp32, "keep_fp32")
    g.raise_opset(work, MODE_OPSET[config.mode])
    if config.smoothquant and samples is not None:
        smooth_targets = [t for t in select_targets(work, config, keep_fp32) if _smoothable(t)]
        apply_smoothquant(
            work,
            smooth_targets,
            _samples(samples, config, progress, "smoothquant"),
            alpha=float(config.smoothquant),
        )
    targets = select_targets(work, config, keep_fp32)
    if config.mode == "static":
        assert samples is not None
        _quantize_static(work, targets, config, _samples(samples, config, progress, "calibration"))
    elif config.mode == "dynamic":
        _quantize_dynamic(work, targets, config)
    else:
        _quantize_weight_only(work, targets, config)
    g.drop_unused(work)
    verify(work)
    return work


def _samples(
    samples: Iterable[Sample], config: QuantConfig, progress: Progress | None, stage: str
) -> _Counted:
    return _Counted(samples, config.calibration_samples, progress, stage)


class _Counted:
    """Samples capped at the config's limit, reporting progress(stage, batches, total)."""

    def __init__(
        self, samples: Iterable[Sample], limit: int | None, progress: Progress | None, stage: str
    ) -> None:
        self.samples, self.limit, self.progress, self.stage = samples, limit, progress, stage

    def __iter__(self) -> Iterator[Sample]:
        total: int | None
        try:
            total = len(self.samples)  # type: ignore[arg-type]  # a SampleSet knows it
        except TypeError:
            total = None
        for i, batch in enumerate(limit_samples(self.samples, self.limit)):
            yield batch
            if self.progress is not None:
                self.progress(self.stage, i + 1, total)


# ---------------------------------------------------------------------------------------------
# Static QDQ


@dataclasses.dataclass
class _Activation:
    """A tensor that gets a Q->DQ pair: its range is `calib`'s, or it reuses `shares`'s params."""

    calib: ir.Value | None
    shares: ir.Value | None = None


@dataclasses.dataclass
class _BiasStats:
    """Running sum of what the bias correction needs: the mean input row (Gemm/MatMul) or the
    mean input patch (Conv), over every position that produces an output."""

    total: np.ndarray | None = None
    count: int = 0

    def add(self, total: np.ndarray, count: int) -> None:
        self.total = total if self.total is None else self.total + total
        self.count += count

    @property
    def mean(self) -> np.ndarray | None:
        return None if self.total is None or self.count == 0 else self.total / self.count


def _quantize_static(
    model: ir.Model, targets: list[Target], config: QuantConfig, samples: Iterable[Sample]
) -> None:
    graph = model.graph
    symmetric = activation_symmetric(config)
    act_dtype = _INT8 if symmetric else _UINT8
    plan, folded, alias = _plan_activations(model, targets, symmetric, config)

    weights = {t.node: _quantize_target_weight(t, config) for t in targets if t.weight is not None}
    corrected = [t for t in targets if t.node in weights and config.bias_correction]
    hists = {act.calib: Histogram() for act in plan.values() if act.calib is not None}
    stats = {t.node: _BiasStats() for t in corrected}
    wanted = [v.name or "" for v in hists] + [
        _input(t.node, t.activations[0]).name or "" for t in corrected
    ]
    by_name = {v.name or "": v for v in hists}

    def visit(values: dict[str, np.ndarray]) -> None:
        for name, hist_value in by_name.items():
            hists[hist_value].add(values[name])
        for t in corrected:
            x = values[_input(t.node, t.activations[0]).name or ""]
            contribution = _bias_input_stats(t, x)
            if contribution is not None:
                stats[t.node].add(*contribution)

    stream_tensors(model, samples, wanted, visit)

    params: dict[ir.Value, QParams] = {}
    for v, hist in hists.items():
        r = compute_range(hist, config.method, symmetric=symmetric, percentile=config.percentile)
        params[v] = choose_qparams(r.lo, r.hi, act_dtype, symmetric=symmetric)

    def resolve(v: ir.Value) -> QParams:
        act = plan[v]
        while act.calib is None:
            assert act.shares is not None
            act = plan[act.shares]
        return params[act.calib]

    # From here on the graph changes: Relu/Clip folded, weights and biases, then activations.
    for node in folded:
        relu_out = node.outputs[0]
        relu_out.replace_all_uses_with(alias[relu_out], replace_graph_outputs=False)
        graph.remove(node, safe=True)
    for t in targets:
        quantized = weights.get(t.node)
        if quantized is not None:
            correction = _bias_correction(t, quantized, stats.get(t.node))
            _insert_weight_dq(graph, t, quantized)
            if t.bias is not None:
                x_params = resolve(_input(t.node, t.activations[0]))
                _insert_bias_dq(graph, t, x_params, quantized.params, correction)
            elif correction is not None:
                _correct_following_add(graph, t, correction)
    for v in sorted(plan, key=lambda v: _position(graph, v)):
        _insert_qdq(graph, v, resolve(v))


def _plan_activations(
    model: ir.Model, targets: list[Target], symmetric: bool, config: QuantConfig
) -> tuple[dict[ir.Value, _Activation], list[ir.Node], dict[ir.Value, ir.Value]]:
    """Which tensors get Q->DQ and where their ranges come from, walking the graph in order.

    Returns the plan, the Relu/Clip nodes to fold away, and for each folded node's output the
    value that replaces it (the quantized op's output).
    """
    by_node = {t.node: t for t in targets}
    plan: dict[ir.Value, _Activation] = {}
    folded: list[ir.Node] = []
    alias: dict[ir.Value, ir.Value] = {}

    def resolve(v: ir.Value | None) -> ir.Value | None:
        while v is not None and v in alias:
            v = alias[v]
        return v

    for node in g.graph_order(model.graph):
        target = by_node.get(node)
        if target is not None:
            for i in target.activations:
                x = resolve(node.inputs[i])
                assert x is not None
                plan.setdefault(x, _Activation(calib=x))
            y = node.outputs[0]
            # An output only the caller reads stays float: a Q->DQ there would only add error.
            if y.uses() or not y.is_graph_output():
                plan.setdefault(y, _Activation(calib=y))
            continue
        if node.domain not in ("", "ai.onnx") or not node.inputs or node.name in config.exclude:
            continue
        x = resolve(node.inputs[0])
        if x is None or x not in plan or len(node.outputs) < 1:
            continue
        y = node.outputs[0]
        if node.op_type in FOLDABLE_ACTIVATIONS:
            producer = x.producer()
            # After a quantized op, or a residual Add of two quantized tensors (ResNet's
            # Add -> Relu): the int8 kernels then take the Add and the Relu as post-ops.
            quantized_producer = producer in by_node or (
                producer is not None and producer.op_type == "Add" and producer.domain == ""
            )
            if (
                not symmetric
                and quantized_producer
                and len(x.uses()) == 1
                and not x.is_graph_output()
                and not y.is_graph_output()
                and _clips_at_zero(node)
            ):
                # uint8 with the range of the activation's output has zero point 0: Q clips.
                plan[x] = _Activation(calib=y)
                alias[y] = x
                folded.append(node)
            else:
                plan.setdefault(y, _Activation(calib=y))
        elif node.op_type in SHARED_PARAMS_OPS and _used_outputs(node) == 1:
            plan.setdefault(y, _Activation(calib=None, shares=x))
        elif node.op_type == "Add" and len(node.inputs) == 2:
            other = resolve(node.inputs[1])
            if other is not None and other in plan:  # residual: both operands int8
                plan.setdefault(y, _Activation(calib=y))
    return plan, folded, alias


def _clips_at_zero(node: ir.Node) -> bool:
    """Relu, or Clip whose lower bound is a constant 0 (Relu6): what a zero point of 0 does."""
    if node.op_type == "Relu":
        return True
    low = node.inputs[1] if len(node.inputs) > 1 else None
    if low is None:
        value = attr_value(node, "min")  # before opset 11
        return isinstance(value, int | float) and float(value) == 0.0
    arr = g.constant_of(low)
    return arr is not None and arr.size == 1 and float(arr.reshape(())) == 0.0


def _used_outputs(node: ir.Node) -> int:
    return sum(1 for v in node.outputs if v is not None and (v.uses() or v.is_graph_output()))


def _position(graph: ir.Graph, v: ir.Value) -> int:
    producer = v.producer()
    if producer is None:
        return -1
    for i, node in enumerate(graph):
        if node is producer:
            return i
    return -1


def _quantize_target_weight(t: Target, config: QuantConfig) -> QuantizedTensor:
    w = _const(_input(t.node, t.weight))
    return _quantize_weight(w, _INT8, axis=t.weight_axis if config.per_channel else None)


def _insert_qdq(graph: ir.Graph, v: ir.Value, p: QParams) -> None:
    base = v.name or "tensor"
    scale = add_initializer(graph, f"{base}_scale", p.scale)
    zero = add_initializer(graph, f"{base}_zero_point", p.zero_point)
    dtype = ir.DataType.from_numpy(p.dtype)
    q = g.new_value(graph, f"{base}_quantized", v, dtype)
    dq = g.new_value(graph, f"{base}_dequantized", v, ir.DataType.FLOAT)
    q_node = g.make_node(
        graph, "QuantizeLinear", [v, scale, zero], [q], name=f"{base}_QuantizeLinear"
    )
    dq_node = g.make_node(
        graph, "DequantizeLinear", [q, scale, zero], [dq], name=f"{base}_DequantizeLinear"
    )
    g.redirect_uses(graph, v, dq, skip=q_node)
    g.insert_after_producer(graph, v, [q_node, dq_node])


def _dq_constant(
    graph: ir.Graph, node: ir.Node, base: str, q: QuantizedTensor, *, per_axis: bool
) -> ir.Value:
    """Initializers for `q` and a DequantizeLinear before `node`; returns its float output."""
    p = q.params
    values = add_initializer(graph, f"{base}_quantized", q.values)
    scale = add_initializer(graph, f"{base}_scale", p.scale)
    inputs: list[ir.Value | None] = [values, scale]
    if np.any(p.zero_point.astype(np.int64) != 0) or p.block_size == 0:
        inputs.append(add_initializer(graph, f"{base}_zero_point", p.zero_point))
    attrs: dict[str, Any] = {}
    if per_axis or p.block_size:
        attrs["axis"] = p.axis
    if p.block_size:
        attrs["block_size"] = p.block_size
    out = ir.Value(
        name=g.unique_name(graph, f"{base}_dequantized"),
        type=ir.TensorType(ir.DataType.FLOAT),
        shape=ir.Shape(q.values.shape),
    )
    dq = g.make_node(
        graph, "DequantizeLinear", inputs, [out], name=f"{base}_DequantizeLinear", attributes=attrs
    )
    graph.insert_before(node, dq)
    return out


def _insert_weight_dq(graph: ir.Graph, t: Target, q: QuantizedTensor) -> None:
    w = _input(t.node, t.weight)
    per_axis = q.params.scale.ndim == 1
    out = _dq_constant(graph, t.node, w.name or "weight", q, per_axis=per_axis)
    t.node.replace_input_with(_index(t.weight), out)


def _insert_bias_dq(
    graph: ir.Graph,
    t: Target,
    x_params: QParams,
    w_params: QParams,
    correction: np.ndarray | None,
) -> None:
    """int32 bias with scale x_scale * w_scale (per channel), zero point 0, as ORT writes it."""
    node = t.node
    b_value = _input(node, t.bias)
    b = _const(b_value).astype(np.float64)
    if node.op_type == "Gemm":
        beta = _float_attr(node, "beta", 1.0)
        b = b * beta
        if beta != 1.0:
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    if correction is not None:
        b = b + correction
    scale = (x_params.scale.astype(np.float64) * w_params.scale.astype(np.float64)).astype(
        np.float32
    )
    scale = np.broadcast_to(scale, b.shape).astype(np.float32) if scale.ndim else scale
    safe = np.where(scale > 0, scale, 1.0)
    info = np.iinfo(np.int32)
    values = np.clip(np.rint(b / safe), info.min, info.max).astype(np.int32)
    q = QuantizedTensor(values, QParams(scale, np.zeros(scale.shape, np.int32), 0, 0))
    out = _dq_constant(graph, node, b_value.name or "bias", q, per_axis=scale.ndim == 1)
    node.replace_input_with(_index(t.bias), out)


# ---------------------------------------------------------------------------------------------
# Bias correction: the mean output error a layer's weight rounding causes, measured on the
# calibration inputs, is added back to its bias (by linearity: mean(op(x, W - W_q)) needs only the
# mean input row, or for a conv the mean input patch).


def _bias_input_stats(t: Target, x: np.ndarray) -> tuple[np.ndarray, int] | None:
    node = t.node
    x = np.asarray(x, np.float64)
    if node.op_type == "Gemm":
        rows = x.T if attr_value(node, "transA", 0) else x  # (M, K)
        return rows.sum(axis=0), rows.shape[0]
    if node.op_type == "MatMul":
        if x.ndim < 2:
            return None
        rows = x.reshape(-1, x.shape[-1])
        return rows.sum(axis=0), rows.shape[0]
    if node.op_type == "Conv":
        return _conv_patch_sum(node, x)
    return None


def _conv_patch_sum(node: ir.Node, x: np.ndarray) -> tuple[np.ndarray, int] | None:
    """Sum over output positions of the (zero-padded) input patch each reads: (C, *kernel)."""
    if attr_value(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None  # TODO: SAME_* padding depends on the input size; no model here uses it
    w = g.constant_of(node.inputs[1])
    assert w is not None
    kernel = list(w.shape[2:])
    nd = len(kernel)
    pads = _ints_attr(node, "pads", [0] * 2 * nd)
    strides = _ints_attr(node, "strides", [1] * nd)
    dilations = _ints_attr(node, "dilations", [1] * nd)
    if x.ndim != nd + 2:
        return None
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    out = [
        (padded.shape[2 + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
        for i in range(nd)
    ]
    if any(n <= 0 for n in out):
        return None
    total = np.zeros((x.shape[1], *kernel))
    for offsets in itertools.product(*(range(k) for k in kernel)):
        window: tuple[slice, ...] = tuple(
            slice(o * d, o * d + (n - 1) * s + 1, s)
            for o, d, n, s in zip(offsets, dilations, out, strides, strict=True)
        )
        at: tuple[Any, ...] = (slice(None), *offsets)
        total[at] = padded[(slice(None), slice(None), *window)].sum(axis=(0, *range(2, 2 + nd)))
    return total, x.shape[0] * int(np.prod(out))


def _bias_correction(t: Target, q: QuantizedTensor, stats: _BiasStats | None) -> np.ndarray | None:
    """Per output channel: mean(op(x, W)) - mean(op(x, W_q)) = mean(op(x, W - W_q))."""
    mean = stats.mean if stats is not None else None
    if mean is None:
        return None
    w = _const(_input(t.node, t.weight)).astype(np.float64)
    delta = w - dequantize_tensor(q).astype(np.float64)
    node = t.node
    if node.op_type == "Gemm":
        delta_kn = delta.T if attr_value(node, "transB", 0) else delta
        alpha = _float_attr(node, "alpha", 1.0)
        return alpha * (mean @ delta_kn)
    if node.op_type == "MatMul":
        return mean @ delta if delta.ndim == 2 else None
    if node.op_type == "Conv":
        groups = _int_attr(node, "group", 1)
        c_out, c_in_g = delta.shape[0], delta.shape[1]
        per_group = c_out // groups
        out = np.empty(c_out)
        for o in range(c_out):
            grp = o // per_group
            out[o] = np.sum(delta[o] * mean[grp * c_in_g : (grp + 1) * c_in_g])
        return out
    return None


def _correct_following_add(graph: ir.Graph, t: Target, correction: np.ndarray) -> None:
    """A MatMul has no bias input: correct the constant of the Add that follows it, if any."""
    out = t.node.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or out.is_graph_output():
        return
    add = uses[0].node
    if add.op_type != "Add" or len(add.inputs) != 2:
        return
    other = 1 - uses[0].idx
    b = g.constant_of(add.inputs[other])
    if b is None or b.dtype != np.float32 or b.shape != correction.shape:
        return
    name = _input(add, other).name or "bias"
    fixed = add_initializer(graph, f"{name}_corrected", (b + correction).astype(np.float32))
    add.replace_input_with(other, fixed)


# ---------------------------------------------------------------------------------------------
# SmoothQuant: X W = (X / s)(s W), with s chosen to move activation outliers into the weights.


def _smoothable(t: Target) -> bool:
    node = t.node
    if t.weight is None or node.op_type not in ("MatMul", "Gemm"):
        return False
    if node.op_type == "Gemm" and attr_value(node, "transA", 0):
        return False
    w = g.constant_of(node.inputs[t.weight])
    return w is not None and w.ndim == 2


def apply_smoothquant(
    model: ir.Model, targets: list[Target], samples: Iterable[Sample], *, alpha: float
) -> int:
    """Smooth every group of MatMul/Gemm reading one activation; returns the groups smoothed.

    s_k = max|X_k|^alpha / max|W_k|^(1-alpha) per input channel k (W over every consumer in the
    group). 1/s goes into the producer when it is a LayerNormalization read only by the group
    (its scale and bias), else into an inserted Mul; s goes into each weight's rows.
    """
    groups: dict[ir.Value, list[Target]] = {}
    for t in targets:
        groups.setdefault(_input(t.node, 0), []).append(t)
    if not groups:
        return 0
    absmax: dict[str, np.ndarray] = {}

    def visit(values: dict[str, np.ndarray]) -> None:
        for name, x in values.items():
            m = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
            absmax[name] = m if name not in absmax else np.maximum(absmax[name], m)

    stream_tensors(model, samples, [v.name or "" for v in groups], visit)
    graph = model.graph
    for x, group in groups.items():
        x_max = absmax.get(x.name or "")
        if x_max is None:
            continue
        w_rows = [_weight_kn(t) for t in group]
        w_max = np.max([np.abs(w).max(axis=1) for w in w_rows], axis=0)
        s = np.power(np.maximum(x_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1 - alpha)
        s = np.clip(s, 1e-5, 1e5).astype(np.float64)
        for t, w in zip(group, w_rows, strict=True):
            _set_weight_kn(graph, t, (w * s[:, None]).astype(np.float32))
        if not _fold_into_layernorm(graph, x, group, 1.0 / s):
            inv = add_initializer(graph, f"{x.name}_smooth_scale", (1.0 / s).astype(np.float32))
            y = g.new_value(graph, f"{x.name}_smoothed", x, ir.DataType.FLOAT)
            mul = g.make_node(graph, "Mul", [x, inv], [y], name=f"{x.name}_SmoothQuant")
            g.insert_after_producer(graph, x, [mul])
            for t in group:
                t.node.replace_input_with(0, y)
    return len(groups)


def _weight_kn(t: Target) -> np.ndarray:
    w = _const(_input(t.node, t.weight)).astype(np.float64)
    if t.node.op_type == "Gemm" and attr_value(t.node, "transB", 0):
        return w.T
    return w


def _set_weight_kn(graph: ir.Graph, t: Target, w_kn: np.ndarray) -> None:
    w = w_kn.T if t.node.op_type == "Gemm" and attr_value(t.node, "transB", 0) else w_kn
    old = _input(t.node, t.weight)
    new = add_initializer(graph, f"{old.name}_smoothed", np.ascontiguousarray(w))
    t.node.replace_input_with(_index(t.weight), new)


def _fold_into_layernorm(
    graph: ir.Graph, x: ir.Value, group: list[Target], inv_s: np.ndarray
) -> bool:
    """LayerNormalization(..., scale, bias) -> x read only by the group: scale, bias *= 1/s."""
    ln = x.producer()
    readers = {u.node for u in x.uses()}
    if ln is None or ln.op_type != "LayerNormalization" or x.is_graph_output():
        return False
    if readers != {t.node for t in group} or len(ln.inputs) < 2:
        return False
    params = [g.constant_of(v) for v in ln.inputs[1:3]]
    if any(p is not None and p.shape != inv_s.shape for p in params) or params[0] is None:
        return False
    for i, p in enumerate(params, start=1):
        if p is not None:
            name = _input(ln, i).name or "ln"
            ln.replace_input_with(
                i, add_initializer(graph, f"{name}_smoothed", (p * inv_s).astype(np.float32))
            )
    return True


# ---------------------------------------------------------------------------------------------
# Dynamic int8: ORT's quantize_dynamic form


def _quantize_dynamic(model: ir.Model, targets: list[Target], config: QuantConfig) -> None:
    graph = model.graph
    shared: dict[ir.Value, tuple[ir.Value, ir.Value, ir.Value]] = {}
    for t in targets:
        node = t.node
        x = node.inputs[0]
        assert x is not None
        w_kn = _weight_kn(t).astype(np.float32)
        q = _quantize_weight(w_kn, _INT8, axis=1 if config.per_channel else None)
        base = node.name or "MatMul"
        new_nodes: list[ir.Node] = []
        if x not in shared:
            xq = g.new_value(graph, f"{x.name}_quantized", x, ir.DataType.UINT8)
            xs = ir.Value(
                name=g.unique_name(graph, f"{x.name}_scale"),
                type=ir.TensorType(ir.DataType.FLOAT),
                shape=ir.Shape([]),
            )
            xz = ir.Value(
                name=g.unique_name(graph, f"{x.name}_zero_point"),
                type=ir.TensorType(ir.DataType.UINT8),
                shape=ir.Shape([]),
            )
            dql = g.make_node(
                graph,
                "DynamicQuantizeLinear",
                [x],
                [xq, xs, xz],
                name=f"{x.name}_DynamicQuantizeLinear",
            )
            g.insert_after_producer(graph, x, [dql])
            shared[x] = (xq, xs, xz)
        xq, xs, xz = shared[x]
        w_name = _input(node, 1).name or "weight"
        wq = add_initializer(graph, f"{w_name}_quantized", q.values)
        wz = add_initializer(graph, f"{w_name}_zero_point", q.params.zero_point)
        alpha = _float_attr(node, "alpha", 1.0) if node.op_type == "Gemm" else 1.0
        ws = add_initializer(
            graph, f"{w_name}_scale", (q.params.scale * np.float32(alpha)).astype(np.float32)
        )
        out = node.outputs[0]
        acc = g.new_value(graph, f"{base}_output_int32", out, ir.DataType.INT32)
        new_nodes.append(
            g.make_node(
                graph, "MatMulInteger", [xq, wq, xz, wz], [acc], name=f"{base}_MatMulInteger"
            )
        )
        acc_f = g.new_value(graph, f"{base}_output_float", out, ir.DataType.FLOAT)
        new_nodes.append(
            g.make_node(
                graph,
                "Cast",
                [acc],
                [acc_f],
                name=f"{base}_Cast",
                attributes={"to": int(ir.DataType.FLOAT)},
            )
        )
        scale = ir.Value(
            name=g.unique_name(graph, f"{base}_scale"), type=ir.TensorType(ir.DataType.FLOAT)
        )
        new_nodes.append(g.make_node(graph, "Mul", [xs, ws], [scale], name=f"{base}_scale_Mul"))
        y = g.new_value(graph, f"{base}_output", out, ir.DataType.FLOAT)
        new_nodes.append(g.make_node(graph, "Mul", [acc_f, scale], [y], name=f"{base}_output_Mul"))
        if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
            beta = _float_attr(node, "beta", 1.0)
            c = node.inputs[2]
            if beta != 1.0:
                c_arr = g.constant_of(c)
                if c_arr is None:
                    beta_v = add_initializer(graph, f"{base}_beta", np.array(beta, np.float32))
                    cb = g.new_value(graph, f"{base}_bias_scaled", c, ir.DataType.FLOAT)
                    new_nodes.append(
                        g.make_node(graph, "Mul", [c, beta_v], [cb], name=f"{base}_beta_Mul")
                    )
                    c = cb
                else:
                    c = add_initializer(
                        graph, f"{c.name}_scaled", (c_arr * beta).astype(np.float32)
                    )
            biased = g.new_value(graph, f"{base}_output_biased", out, ir.DataType.FLOAT)
            new_nodes.append(g.make_node(graph, "Add", [y, c], [biased], name=f"{base}_bias_Add"))
            y = biased
        graph.insert_before(node, new_nodes)
        g.redirect_uses(graph, out, y)
        graph.remove(node, safe=True)


# ---------------------------------------------------------------------------------------------
# Weight-only int8/int4: DequantizeLinear(block_size=G) -> MatMul/Gemm


def _quantize_weight_only(model: ir.Model, targets: list[Target], config: QuantConfig) -> None:
    graph = model.graph
    dtype = np.dtype(_int4()) if config.bits == 4 else _INT8
    for t in targets:
        node = t.node
        if t.weight is None:
            continue
        w = g.constant_of(node.inputs[t.weight])
        assert w is not None and w.ndim == 2
        # Blocks run along K, the reduction axis: axis 0 of MatMul's [K, N], 1 of Gemm's [N, K].
        k_axis = 1 if node.op_type == "Gemm" and attr_value(node, "transB", 0) else 0
        q = _quantize_weight(w, dtype, axis=k_axis, block_size=config.group_size)
        base = _input(node, t.weight).name or "weight"
        out = _dq_constant(graph, node, base, q, per_axis=True)
        node.replace_input_with(t.weight, out)


def _int4() -> Any:
    import ml_dtypes

    return ml_dtypes.int4
