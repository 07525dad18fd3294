"""Kernel selection: the nodes that run on native CPU kernels instead of their NumPy reference.

`select(node, attrs, constant)` looks at one node once, at compile time, and returns a `Kernel` (a
callable with the op's positional inputs and an optional `out=` buffer) or None when the node stays
on its reference op. Weights are prepacked here, once. A kernel runs the reference op instead when
an input is not float32 or when its maker's function returns None (a case it does not handle, known
only at run time), so selection never changes what a model accepts. Each kernel agrees with its
reference to float32 rounding (tests/runtime/test_native.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from ember.ops.registry import EMBER_DOMAIN

if TYPE_CHECKING:
    from ember.kernels.cpu.dnnl import BufferRef  # a Program buffer: (number, shape)

F32 = np.dtype(np.float32)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A native implementation of one node.

    fn(*inputs, out=None) -> output; `raw` is the same without the float32 check, for callers
    that know the inputs are float32 (it may return None: run the reference). Every kernel fills
    a caller-given float32 `out` buffer of the output's shape (the memory arena's).
    `elementwise`: output element i depends only on element i of its same-shaped inputs, so the
    output may take the memory of an input that dies here.
    `lower(inputs, out)`: the same call as a step of a C++ Program (runtime/program.py), on
    buffers given as (number, shape), None for inputs it does not read (prepacked weights).
    """

    fn: Callable[..., Any]
    name: str  # for profiles: "onednn conv", "ember softmax", ...
    elementwise: bool = False
    raw: Callable[..., Any] | None = None  # fn without the float32 check (None: same as fn)
    # fn checks its inputs' dtypes itself (the int8 kernels), returning None for what it does
    # not take: no float32-only check in front of it.
    any_dtype: bool = False
    lower: Callable[[Sequence[BufferRef | None], BufferRef], Any] | None = None


def _data(ins: Sequence[BufferRef | None]) -> BufferRef:
    """A lowered kernel's first input: always a buffer (runtime/program.py checks)."""
    x = ins[0]
    assert x is not None, "lowering: the first input must be a buffer"
    return x


Constant = Callable[[ir.Value | None], np.ndarray | None]


def select(
    node: ir.Node,
    attrs: Mapping[str, Any],
    reference: Callable[..., Any],
    constant: Constant,
    *,
    opset: int,
    bf16: bool = False,
) -> Kernel | None:
    """The native kernel for `node`, or None. `constant(value)` is its array when constant;
    `reference(*inputs, **attrs)` is the op's reference function, `attrs` its bound attributes."""
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    maker = _MAKERS.get((domain, node.op_type))
    if maker is None or any(o is not None and o.name and i > 0 for i, o in enumerate(node.outputs)):
        return None  # a second output (MaxPool indices, LayerNorm stats) stays on the reference
    params = {k: v for k, v in attrs.items() if k != "ctx"}
    params["opset"] = opset
    kernel = maker(node, params, constant, bf16)
    if kernel is None:
        return None
    fn = _or_reference(kernel.fn, reference, attrs, f32_only=not kernel.any_dtype)
    return dataclasses.replace(kernel, fn=fn, raw=kernel.fn)


def _or_reference(
    fn: Callable[..., Any],
    reference: Callable[..., Any],
    attrs: Mapping[str, Any],
    *,
    f32_only: bool = True,
) -> Callable[..., Any]:
    ref_attrs = dict(attrs)

    def run(*args: Any, out: np.ndarray | None = None) -> Any:
        for a in args:
            if f32_only and a is not None and a.dtype != F32:
                return reference(*args, **ref_attrs)
        result = fn(*args, out=out)
        return reference(*args, **ref_attrs) if result is None else result

    return run


# ------------------------------------------------------------------------------------------------
# Makers: (node, attrs, constant, bf16) -> Kernel | None
# ------------------------------------------------------------------------------------------------

_MAKERS: dict[tuple[str, str], Callable[..., Kernel | None]] = {}


def _maker(domain: str, *op_types: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(f: Callable[..., Any]) -> Callable[..., Any]:
        for t in op_types:
            _MAKERS[(domain, t)] = f
        return f

    return register


def _input(node: ir.Node, i: int) -> ir.Value | None:
    if i >= len(node.inputs):
        return None
    v = node.inputs[i]
    return v if v is not None and v.name else None


def _spatial(attrs: Mapping[str, Any], name: str, n: int, default: int) -> list[int]:
    v = attrs.get(name)
    return [default] * n if v is None else [int(x) for x in v]


def _explicit_pads(attrs: Mapping[str, Any], n: int) -> list[int] | None:
    """ONNX pads when they do not depend on the input's size (auto_pad NOTSET or VALID)."""
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return None
    return _spatial(attrs, "pads", 2 * n, 0) if auto_pad == "NOTSET" else [0] * (2 * n)


@_maker("", "Conv")
@_maker(EMBER_DOMAIN, "FusedConv")
def _conv(node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool) -> Kernel | None:
    from ember.kernels.cpu import dnnl

    w = constant(_input(node, 1))
    b_value = _input(node, 2)
    b = constant(b_value)
    if w is None or w.dtype != F32 or not 3 <= w.ndim <= 5 or (b_value is not None and b is None):
        return None  # dynamic weights, 4-D+ convs: the reference handles them
    n = w.ndim - 2  # spatial axes: 1-D, 2-D or 3-D
    pads = _explicit_pads(attrs, n)
    if pads is None:
        return None
    conv = dnnl.Conv(
        w,
        None if b is None else b.astype(F32),
        strides=_spatial(attrs, "strides", n, 1),
        pads=pads,
        dilations=_spatial(attrs, "dilations", n, 1),
        group=int(attrs.get("group", 1)),
        channels_last=bool(attrs.get("channels_last", 0)),
        activation=attrs.get("activation", ""),
        activation_params=tuple(attrs.get("activation_params", ())),
        bf16=bf16,
    )

    def run(
        x: np.ndarray, w_: Any = None, b_: Any = None, z: Any = None, *, out: Any = None
    ) -> Any:
        return conv(x, z, out=out)

    def lower(ins: Sequence[BufferRef | None], out: BufferRef) -> Any:
        return conv.step(_data(ins), ins[3] if len(ins) > 3 else None, out)

    return Kernel(run, "onednn conv", lower=lower)


def _gemm_kernel(
    a_trans: bool,
    b: np.ndarray,
    trans_b: bool,
    bias: np.ndarray | None,
    attrs: Mapping[str, Any],
    bf16: bool,
    a: ir.Value | None = None,
) -> Kernel | None:
    from ember.kernels.cpu import dnnl
    from ember.runtime import sparse

    if a_trans or b.ndim != 2 or b.dtype != F32:
        return None
    matmul = dnnl.MatMul(
        b,
        bias,
        trans_b=trans_b,
        alpha=float(attrs.get("alpha", 1.0)),
        activation=attrs.get("activation", ""),
        activation_params=tuple(attrs.get("activation_params", ())),
        bf16=bf16,
    )
    # A mostly-zero weight: the sparse kernel when it times faster here (runtime/sparse.py).
    kernel: Any = matmul
    if not bf16:
        choice = sparse.choose(
            b,
            bias,
            matmul,
            trans_b=trans_b,
            alpha=float(attrs.get("alpha", 1.0)),
            activation=attrs.get("activation", ""),
            activation_params=tuple(attrs.get("activation_params", ())),
            rows=sparse.expected_rows(a),
        )
        kernel = choice.sparse or matmul

    def run(a: np.ndarray, *_weights: Any, out: Any = None) -> Any:
        return kernel(a, out=out)

    def lower(ins: Sequence[BufferRef | None], out: BufferRef) -> Any:
        return kernel.step(_data(ins), out)

    name = "onednn matmul" if kernel is matmul else "ember sparse matmul"
    return Kernel(run, name, lower=lower)


@_maker("", "Gemm")
@_maker(EMBER_DOMAIN, "FusedGemm")
def _gemm(node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool) -> Kernel | None:
    b = constant(_input(node, 1))
    c_value = _input(node, 2)
    c = constant(c_value)
    if b is None or (c_value is not None and c is None):
        return None
    n = b.shape[0] if attrs.get("transB", 0) else b.shape[1]
    bias = None
    if c is not None:
        if c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1) or c.ndim > 2:
            return None  # a C that is not a row vector: the reference broadcasts it
        bias = (np.broadcast_to(c.reshape(-1), (n,)) * float(attrs.get("beta", 1.0))).astype(F32)
    return _gemm_kernel(
        bool(attrs.get("transA", 0)),
        b,
        bool(attrs.get("transB", 0)),
        bias,
        attrs,
        bf16,
        _input(node, 0),
    )


@_maker("", "MatMul")
@_maker(EMBER_DOMAIN, "FusedMatMul")
def _matmul(node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool) -> Kernel | None:
    from ember.kernels.cpu import dnnl

    b = constant(_input(node, 1))
    bias_value = _input(node, 2)
    bias = constant(bias_value)
    if bias_value is not None and bias is None:
        return None
    if b is not None:
        if b.ndim != 2:
            return None
        return _gemm_kernel(False, b, False, bias, attrs, bf16, _input(node, 0))
    if bias_value is not None or attrs.get("activation"):
        return None

    def run(a: np.ndarray, b_: np.ndarray, *, out: Any = None) -> Any:
        if a.ndim < 2 or b_.ndim < 2 or a.ndim > 4 or b_.ndim > 4:
            return None  # 1-D or rank > 4: the reference
        return dnnl.matmul(a, b_, out=out)

    return Kernel(run, "onednn matmul")


@_maker("", "MaxPool", "AveragePool")
@_maker(EMBER_DOMAIN, "MaxPool", "AveragePool")
def _pool(node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool) -> Kernel | None:
    from ember.kernels.cpu import dnnl

    k = attrs.get("kernel_shape")
    pads = _explicit_pads(attrs, 2)
    if k is None or len(k) != 2 or pads is None:
        return None
    params: dict[str, Any] = dict(
        kernel_shape=list(k),
        strides=_spatial(attrs, "strides", 2, 1),
        pads=pads,
        ceil_mode=int(attrs.get("ceil_mode", 0)),
        channels_last=bool(attrs.get("channels_last", 0)),
    )
    if node.op_type == "MaxPool":
        if attrs.get("storage_order", 0):
            return None
        pool = dnnl.max_pool
        params["dilations"] = _spatial(attrs, "dilations", 2, 1)
    else:
        if _spatial(attrs, "dilations", 2, 1) != [1, 1]:
            return None
        pool = dnnl.avg_pool
        params["count_include_pad"] = int(attrs.get("count_include_pad", 0))

    int8_pool = _max_pool_int8(attrs, pads) if node.op_type == "MaxPool" else None

    def run(x: np.ndarray, *, out: Any = None) -> Any:
        if x.dtype == F32:
            return pool(x, out=out, **params)
        if int8_pool is not None:  # int8 regions (passes/fuse_quant.py) pool int8 tensors
            return int8_pool.fn(x, out=out)
        return None

    kind = 0 if node.op_type == "MaxPool" else 1 if params.get("count_include_pad") else 2
    geometry = {k: v for k, v in params.items() if k != "count_include_pad"}

    def lower(ins: Sequence[BufferRef | None], out: BufferRef) -> Any:
        return dnnl.pool_step(_data(ins), out, kind=kind, **geometry)

    return Kernel(run, "onednn pooling", lower=lower, any_dtype=True)


@_maker("", "GlobalAveragePool")
@_maker(EMBER_DOMAIN, "GlobalAveragePool")
def _global_avg_pool(
    node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool
) -> Kernel | None:
    from ember.kernels.cpu import dnnl

    channels_last = bool(attrs.get("channels_last", 0))

    def run(x: np.ndarray, *, out: Any = None) -> Any:
        if x.ndim != 4:
            return None  # the reference handles 3-D and 5-D
        return dnnl.global_avg_pool(x, channels_last=channels_last, out=out)

    def lower(ins: Sequence[BufferRef | None], out: BufferRef) -> Any:
        x = _data(ins)
        if len(x[1]) != 4:
            return None
        spatial = x[1][1:-1] if channels_last else x[1][2:]
        return dnnl.pool_step(x, out, kind=2, kernel_shape=spatial, channels_last=channels_last)

    return Kernel(run, "onednn pooling", lower=lower)


def _is_last_axis(axis: int, rank: int) -> bool:
    return rank > 0 and -rank <= axis < rank and axis % rank == rank - 1


@_maker("", "Softmax")
def _softmax(node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool) -> Kernel | None:
    from ember.kernels.cpu import nn

    # Before opset 13 Softmax flattens to 2-D at `axis` (default 1): the same as a softmax over the
    # last axis only when `axis` is the last one, as from 13 on.
    axis = int(attrs.get("axis", -1 if attrs["opset"] >= 13 else 1))

    def run(x: np.ndarray, *, out: Any = None) -> Any:
        if not _is_last_axis(axis, x.ndim):
            return None  # the reference computes it (or names the bad axis)
        return nn.softmax(x, out=out)

    return Kernel(run, "ember softmax")


@_maker("", "LayerNormalization")
@_maker(EMBER_DOMAIN, "LayerNorm")
def _layer_norm(
    node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool
) -> Kernel | None:
    from ember.kernels.cpu import nn

    axis = int(attrs.get("axis", -1))
    eps = float(attrs.get("epsilon", 1e-5))
    if int(attrs.get("stash_type", 1)) != 1:
        return None

    def run(x: np.ndarray, scale: np.ndarray, bias: Any = None, *, out: Any = None) -> Any:
        if not _is_last_axis(axis, x.ndim):
            return None
        return nn.layer_norm(x, scale, bias, epsilon=eps, out=out)

    return Kernel(run, "ember layernorm")


@_maker("", "Gelu")
@_maker(EMBER_DOMAIN, "Gelu")
def _gelu(node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool) -> Kernel | None:
    from ember.kernels.cpu import nn

    approximate = attrs.get("approximate", "none")

    def run(x: np.ndarray, *, out: Any = None) -> Any:
        return nn.gelu(x, approximate=approximate, out=out)

    return Kernel(run, "ember gelu", elementwise=True)


@_maker(EMBER_DOMAIN, "MultiHeadAttention")
def _attention(
    node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool
) -> Kernel | None:
    from ember.kernels.cpu import nn

    heads = int(attrs["num_heads"])
    scale = float(attrs.get("scale", 0.0))

    def run(
        q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: Any = None, *, out: Any = None
    ) -> Any:
        return nn.attention(q, k, v, mask, num_heads=heads, scale=scale, out=out)

    return Kernel(run, "ember attention")


@_maker("", "Transpose")
def _transpose(
    node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool
) -> Kernel | None:
    from ember.kernels.cpu import dnnl

    perm = attrs.get("perm")
    if perm == [0, 2, 3, 1]:
        to, to_last = dnnl.to_channels_last, True
    elif perm == [0, 3, 1, 2]:
        to, to_last = dnnl.to_channels_first, False
    else:
        return None

    def run(x: np.ndarray, *, out: Any = None) -> Any:
        return to(x, out=out)

    def lower(ins: Sequence[BufferRef | None], out: BufferRef) -> Any:
        return dnnl.relayout_step(_data(ins), out, to_channels_last=to_last)

    return Kernel(run, "onednn reorder", lower=lower)


# Elementwise ops on NumPy ufuncs with out=: what lets the arena hold their outputs, and in place.
_UNARY: dict[str, Callable[..., np.ndarray]] = {
    "Relu": lambda x, out: np.maximum(x, np.float32(0), out=out),
    "Tanh": np.tanh,
    "Exp": np.exp,
    "Sqrt": np.sqrt,
    "Neg": np.negative,
}
_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}


@_maker("", *_UNARY)
def _unary(node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool) -> Kernel | None:
    fn = _UNARY[node.op_type]

    def run(x: np.ndarray, *, out: Any = None) -> Any:
        return np.asarray(fn(x, out=out))  # a ufunc gives a 0-d input back as a NumPy scalar

    return Kernel(run, "numpy " + node.op_type.lower(), elementwise=True)


@_maker("", *_BINARY)
def _binary(node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool) -> Kernel | None:
    ufunc = _BINARY[node.op_type]
    if "broadcast" in attrs or "axis" in attrs:
        return None  # opset < 7 broadcasting rules: the reference handles them

    def run(a: np.ndarray, b: np.ndarray, *, out: Any = None) -> Any:
        return np.asarray(ufunc(a, b, out=out))  # 0-d inputs give a NumPy scalar back

    return Kernel(run, "numpy " + node.op_type.lower(), elementwise=True)


@_maker("", "Clip")
def _clip(node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool) -> Kernel | None:
    if "min" in attrs or "max" in attrs:  # Clip-6 attributes
        lo: Any = attrs.get("min")
        hi: Any = attrs.get("max")
    else:
        lo_value, hi_value = _input(node, 1), _input(node, 2)
        lo, hi = constant(lo_value), constant(hi_value)
        if (lo_value is not None and lo is None) or (hi_value is not None and hi is None):
            return None
    lo_f = np.float32(-np.inf if lo is None else lo)
    hi_f = np.float32(np.inf if hi is None else hi)

    def run(x: np.ndarray, *_bounds: Any, out: Any = None) -> Any:
        # np.clip is min(max(x, lo), hi): with lo > hi every element is hi, as ONNX says.
        return np.asarray(np.clip(x, lo_f, hi_f, out=out))

    return Kernel(run, "numpy clip", elementwise=True)


# ------------------------------------------------------------------------------------------------
# int8 (passes/fuse_quant.py writes these ops): quantization parameters are constants, read here
# once; the kernels check the tensors' dtypes per call and leave anything else to the reference.
# ------------------------------------------------------------------------------------------------

_INT8 = (np.dtype(np.uint8), np.dtype(np.int8))


def _scalar(a: np.ndarray | None) -> float | int | None:
    return None if a is None or a.size != 1 else a.reshape(-1)[0].item()


def _qparam_pair(
    node: ir.Node, constant: Constant, i_scale: int, i_zero: int
) -> tuple[float, int, np.dtype] | None:
    """(scale, zero point, its dtype) of a constant per-tensor pair of inputs, or None."""
    scale_value, zero_value = _input(node, i_scale), _input(node, i_zero)
    scale, zero = constant(scale_value), constant(zero_value)
    if scale is None or scale.size != 1 or (zero_value is not None and zero is None):
        return None
    if zero is not None and (zero.size != 1 or zero.dtype not in _INT8):
        return None
    dtype = zero.dtype if zero is not None else np.dtype(np.uint8)
    return float(scale.reshape(-1)[0]), int(_scalar(zero) or 0), dtype


def _max_pool_int8(attrs: dict[str, Any], pads: list[int]) -> Kernel | None:
    from ember.kernels.cpu import int8

    if attrs.get("storage_order", 0):
        return None
    params: dict[str, Any] = dict(
        kernel_shape=list(attrs["kernel_shape"]),
        strides=_spatial(attrs, "strides", 2, 1),
        pads=pads,
        dilations=_spatial(attrs, "dilations", 2, 1),
        ceil_mode=int(attrs.get("ceil_mode", 0)),
        channels_last=bool(attrs.get("channels_last", 0)),
    )

    def run(x: np.ndarray, *, out: Any = None) -> Any:
        if x.dtype not in _INT8:
            return None
        return int8.max_pool(x, out=out, **params)

    return Kernel(run, "onednn int8 pooling", any_dtype=True)


@_maker(EMBER_DOMAIN, "QConv")
def _qconv(node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool) -> Kernel | None:
    from ember.kernels.cpu import int8

    x = _qparam_pair(node, constant, 1, 2)
    w, w_scale = constant(_input(node, 3)), constant(_input(node, 4))
    has_y = _input(node, 5) is not None
    y = _qparam_pair(node, constant, 5, 6) if has_y else (1.0, 0, None)
    b_value, z_value = _input(node, 7), _input(node, 8)
    b = constant(b_value)
    z = _qparam_pair(node, constant, 9, 10) if z_value is not None else None
    if x is None or y is None or w is None or w_scale is None or w.dtype != np.int8:
        return None
    if not 3 <= w.ndim <= 5 or (b_value is not None and b is None) or (z_value and z is None):
        return None
    n = w.ndim - 2
    pads = _explicit_pads(attrs, n)
    if pads is None:
        return None
    conv = int8.QConv(
        w,
        w_scale.astype(F32),
        None if b is None else b.astype(F32),
        x_scale=x[0],
        x_zero_point=x[1],
        x_dtype=x[2],
        y_scale=y[0],
        y_zero_point=y[1],
        y_dtype=y[2],
        z_scale=None if z is None else z[0],
        z_zero_point=0 if z is None else z[1],
        strides=_spatial(attrs, "strides", n, 1),
        pads=pads,
        dilations=_spatial(attrs, "dilations", n, 1),
        group=int(attrs.get("group", 1)),
        channels_last=bool(attrs.get("channels_last", 0)),
        activation=attrs.get("activation", ""),
        activation_params=tuple(attrs.get("activation_params", ())),
        requantize=tuple(attrs.get("requantize", ())),
    )
    x_dtype, z_dtype = x[2], None if z is None else np.dtype(y[2])

    def run(xq: np.ndarray, *args: Any, out: Any = None) -> Any:
        zq = args[7] if len(args) > 7 else None
        if xq.dtype != x_dtype or (zq is not None and zq.dtype != z_dtype):
            return None
        return conv(
            np.ascontiguousarray(xq), None if zq is None else np.ascontiguousarray(zq), out=out
        )

    return Kernel(run, "onednn int8 conv", any_dtype=True)


@_maker(EMBER_DOMAIN, "QMatMul")
def _qmatmul(node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool) -> Kernel | None:
    from ember.kernels.cpu import int8

    a = _qparam_pair(node, constant, 1, 2)
    b, b_scale = constant(_input(node, 3)), constant(_input(node, 4))
    y = _qparam_pair(node, constant, 5, 6) if _input(node, 5) is not None else (1.0, 0, None)
    bias_value = _input(node, 7)
    bias = constant(bias_value)
    if a is None or y is None or b is None or b_scale is None or b.dtype != np.int8:
        return None
    if b.ndim != 2 or (bias_value is not None and bias is None):
        return None
    mm = int8.QMatMul(
        b,
        b_scale.astype(F32),
        None if bias is None else bias.astype(F32),
        a_scale=a[0],
        a_zero_point=a[1],
        a_dtype=a[2],
        y_scale=y[0],
        y_zero_point=y[1],
        y_dtype=y[2],
        activation=attrs.get("activation", ""),
        activation_params=tuple(attrs.get("activation_params", ())),
    )
    a_dtype = a[2]

    def run(aq: np.ndarray, *_: Any, out: Any = None) -> Any:
        if aq.dtype != a_dtype or aq.ndim < 1:
            return None
        return mm(aq, out=out)

    return Kernel(run, "onednn int8 matmul", any_dtype=True)


@_maker(EMBER_DOMAIN, "DynamicQMatMul")
def _dynamic_qmatmul(
    node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool
) -> Kernel | None:
    from ember.kernels.cpu import int8

    b, b_scale = constant(_input(node, 1)), constant(_input(node, 2))
    bias_value = _input(node, 3)
    bias = constant(bias_value)
    if b is None or b_scale is None or b.dtype != np.int8 or b.ndim != 2:
        return None
    if bias_value is not None and bias is None:
        return None
    mm = int8.QMatMul(
        b,
        b_scale.astype(F32),
        None if bias is None else bias.astype(F32),
        dynamic=True,
        activation=attrs.get("activation", ""),
        activation_params=tuple(attrs.get("activation_params", ())),
    )

    def run(a: np.ndarray, *_: Any, out: Any = None) -> Any:
        if a.dtype != F32 or a.ndim < 1 or a.size == 0:
            return None
        return mm(a, out=out)

    return Kernel(run, "onednn int8 dynamic matmul", any_dtype=True)


@_maker("", "QuantizeLinear")
@_maker(EMBER_DOMAIN, "QuantizeLinear")
def _quantize(
    node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool
) -> Kernel | None:
    from ember.kernels.cpu import int8

    q = _qparam_pair(node, constant, 1, 2)
    if q is None or attrs.get("block_size", 0) or attrs.get("output_dtype", 0):
        return None
    scale, zero_point, dtype = q
    channels_last = bool(attrs.get("channels_last", 0))

    def run(x: np.ndarray, *_: Any, out: Any = None) -> Any:
        if x.dtype != F32 or (channels_last and x.ndim < 3):
            return None
        return int8.quantize(x, scale, zero_point, dtype, channels_last=channels_last, out=out)

    return Kernel(run, "ember quantize", any_dtype=True)


@_maker("", "DequantizeLinear")
@_maker(EMBER_DOMAIN, "DequantizeLinear")
def _dequantize(
    node: ir.Node, attrs: dict[str, Any], constant: Constant, bf16: bool
) -> Kernel | None:
    from ember.kernels.cpu import int8

    q = _qparam_pair(node, constant, 1, 2)
    if q is None or attrs.get("block_size", 0) or attrs.get("output_dtype", 0):
        return None
    scale_array = constant(_input(node, 1))
    if scale_array is None or scale_array.dtype != F32:
        return None  # a float16 scale gives float16
    scale, zero_point, zero_dtype = q
    has_zero = _input(node, 2) is not None
    channels_last = bool(attrs.get("channels_last", 0))

    def run(x: np.ndarray, *_: Any, out: Any = None) -> Any:
        if x.dtype not in _INT8 or (has_zero and x.dtype != zero_dtype):
            return None
        if channels_last and x.ndim < 3:
            return None
        return int8.dequantize(x, scale, zero_point, channels_last=channels_last, out=out)

    return Kernel(run, "ember dequantize", any_dtype=True)
