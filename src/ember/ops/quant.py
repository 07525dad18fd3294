"""Quantization ops: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear and the integer /
QLinear compute ops (MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv).

The math is three pure functions (`expand_qparam`, `quantize`, `dequantize`) plus `saturate_cast`;
they choose nothing (no qparam search): they apply given scales and zero points. Granularity is one
concept: a scale/zero point is expanded once to broadcast against the input, whether it is a scalar
(per-tensor), a 1-D vector (per-axis) or a same-rank tensor (blocked along `axis`).
Sub-byte and float8/float4/float6 types are the ml_dtypes ones, as in onnx's NumPy conversion.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import onnx_ir as ir

from ember.ops.common import normalize_axis
from ember.ops.conv import extract_windows, grouped_matmul, window_geometry
from ember.ops.registry import op

_INT_QTYPES = {
    np.dtype(t)
    for t in (
        np.uint8,
        np.int8,
        np.uint16,
        np.int16,
        ml_dtypes.uint4,
        ml_dtypes.int4,
        ml_dtypes.uint2,
        ml_dtypes.int2,
    )
}
_FLOAT_QTYPES = {
    np.dtype(t)
    for t in (
        ml_dtypes.float8_e4m3fn,
        ml_dtypes.float8_e4m3fnuz,
        ml_dtypes.float8_e5m2,
        ml_dtypes.float8_e5m2fnuz,
        ml_dtypes.float4_e2m1fn,
        ml_dtypes.float6_e2m3fn,
        ml_dtypes.float6_e3m2fn,
    )
}
_DEQUANT_OUTPUTS = {np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}


def onnx_dtype(code: int, *, what: str) -> np.dtype[Any]:
    """The NumPy dtype of an ONNX TensorProto data type code (an output_dtype-like attribute)."""
    try:
        return np.dtype(ir.DataType(int(code)).numpy())
    except (ValueError, TypeError) as e:
        raise ValueError(f"{what}={code} is not an ONNX tensor data type ember can hold") from e


# ---------------------------------------------------------------------------------------------
# The quantization math: pure functions.


def expand_qparam(
    param: np.ndarray,
    shape: tuple[int, ...],
    axis: int,
    block_size: int = 0,
    *,
    name: str = "scale",
) -> np.ndarray:
    """`param` (a scale or zero point) reshaped/repeated to broadcast against an input of `shape`.

    scalar or 1-element -> per-tensor; 1-D of length shape[axis] -> per-axis; same rank as the
    input with shape[axis] replaced by ceil(shape[axis] / block_size) -> blocked.

    >>> expand_qparam(np.array([1.0, 2.0]), (2, 3), axis=0).shape
    (2, 1)
    >>> expand_qparam(np.array([[1.0, 2.0]]), (1, 4), axis=1, block_size=2).tolist()
    [[1.0, 1.0, 2.0, 2.0]]
    """
    r = len(shape)
    if param.size == 1 and param.ndim <= 1:
        return param.reshape(())
    if r == 0:
        raise ValueError(f"{name} of shape {param.shape} cannot apply to a scalar input")
    axis = normalize_axis(axis, r)
    per_axis = param.ndim == 1 and r > 1
    if param.ndim == 1:  # per-axis: lift to rank r with the values along `axis`
        lifted_shape = [1] * r
        lifted_shape[axis] = param.shape[0]
        param = param.reshape(lifted_shape)
    elif param.ndim != r:
        raise ValueError(
            f"{name} of shape {param.shape} fits neither per-tensor (scalar), per-axis (1-D) nor "
            f"blocked (rank {r}) quantization of an input of shape {shape}"
        )
    s, d = param.shape[axis], shape[axis]
    if per_axis and s != d:
        raise ValueError(
            f"per-axis {name} has {s} values but axis {axis} of the input {shape} has {d}"
        )
    if s not in (1, d):  # blocked along `axis`: each value covers block_size input elements
        if block_size <= 0:
            raise ValueError(
                f"{name} has {s} entries along axis {axis} but the input has {d}; blocked "
                f"quantization needs a positive block_size (got {block_size})"
            )
        if -(-d // block_size) != s:
            raise ValueError(
                f"{name} has {s} blocks along axis {axis}, but an input dimension of {d} with "
                f"block_size={block_size} needs ceil({d}/{block_size}) = {-(-d // block_size)}"
            )
        param = np.repeat(param, block_size, axis=axis).take(np.arange(d), axis=axis)
    try:
        ok = np.broadcast_shapes(param.shape, shape) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name} of shape {param.shape} (after expansion along axis {axis}) does not "
            f"broadcast to the input shape {shape}"
        )
    return param


def saturate_cast(v: np.ndarray, dtype: np.dtype[Any], *, saturate: bool = True) -> np.ndarray:
    """`v` (floating) as the quantized `dtype`: integers round half to even and clip to the type's
    range; float8/float4/float6 round to nearest even and, when `saturate`, clip to +-max finite."""
    dtype = np.dtype(dtype)
    if dtype in _INT_QTYPES or dtype.kind in "iu":
        ii = ml_dtypes.iinfo(dtype)
        return np.clip(np.rint(v), ii.min, ii.max).astype(dtype)
    if dtype in _FLOAT_QTYPES:
        v = np.asarray(v)
        if v.dtype not in (np.float32, np.float64):
            v = v.astype(np.float32)
        if saturate:
            fi = ml_dtypes.finfo(dtype)
            v = np.clip(v, float(fi.min), float(fi.max))  # NaN stays NaN
        return v.astype(dtype)
    raise ValueError(f"{dtype} is not a quantized type")


def quantize(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    dtype: np.dtype[Any],
    *,
    saturate: bool = True,
    precision: np.dtype[Any] | None = None,
) -> np.ndarray:
    """y = saturate(round_half_even(x / scale) + zero_point), scale/zero point already expanded.

    The division runs in `precision` when given, else in NumPy's promotion of x and scale.

    >>> zp = np.array(2, np.uint8)
    >>> quantize(np.array([-1.0, 0.5, 300.0]), np.array(1.0), zp, np.uint8).tolist()
    [1, 2, 255]
    """
    dtype = np.dtype(dtype)
    v = x.astype(precision) / scale.astype(precision) if precision is not None else x / scale
    if dtype in _INT_QTYPES:
        info = ml_dtypes.iinfo(dtype)
        # Round in floating point, then add the zero point in integers: adding it in a narrow
        # float (bfloat16) could round the sum.
        q = np.clip(np.rint(v.astype(np.float64)), -(2.0**40), 2.0**40).astype(np.int64)
        if zero_point is not None:
            q = q + zero_point.astype(np.int64)
        return np.clip(q, info.min, info.max).astype(dtype)
    if dtype in _FLOAT_QTYPES:
        if zero_point is not None and np.any(zero_point.astype(np.float32) != 0):
            v = v.astype(np.float32) + zero_point.astype(np.float32)
        return saturate_cast(v, dtype, saturate=saturate)
    raise ValueError(
        f"QuantizeLinear cannot produce {dtype}; expected an 8/16/4/2-bit integer or "
        "a float8/float4/float6 type"
    )


def dequantize(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, dtype: np.dtype[Any]
) -> np.ndarray:
    """y = (x - zero_point) * scale as `dtype`, scale/zero point already expanded; computed in
    float32 with the zero point subtracted exactly (in integers for integer x).

    >>> zp = np.array(1, np.uint8)
    >>> dequantize(np.array([0, 3], np.uint8), np.array(0.5), zp, np.float32).tolist()
    [-0.5, 1.0]
    """
    if x.dtype in _INT_QTYPES or x.dtype.kind in "iu":
        dx = x.astype(np.int64)
        if zero_point is not None:
            dx = dx - zero_point.astype(np.int64)
        dx = dx.astype(np.float32)
    else:
        dx = x.astype(np.float32)
        if zero_point is not None:
            dx = dx - zero_point.astype(np.float32)
    return (dx * scale.astype(np.float32)).astype(dtype)


# ---------------------------------------------------------------------------------------------
# QuantizeLinear / DequantizeLinear


def _quantize_linear(
    x,
    y_scale,
    y_zero_point,
    *,
    axis,
    block_size=0,
    output_dtype=0,
    saturate=1,
    precision=0,
    blocked=True,
):
    if not blocked and y_scale.ndim > 1:
        raise ValueError(
            f"y_scale must be a scalar or 1-D at this opset, got shape {y_scale.shape}"
        )
    if block_size < 0:
        raise ValueError(f"block_size must be >= 0, got {block_size}")
    dtype = onnx_dtype(output_dtype, what="output_dtype") if output_dtype else None
    if y_zero_point is not None:
        if dtype is not None and dtype != y_zero_point.dtype:
            raise ValueError(
                f"output_dtype ({dtype}) and y_zero_point ({y_zero_point.dtype}) disagree"
            )
        dtype = y_zero_point.dtype
    if dtype is None:
        dtype = np.dtype(np.uint8)
    if dtype not in _INT_QTYPES and dtype not in _FLOAT_QTYPES:
        raise ValueError(f"QuantizeLinear cannot produce {dtype}")
    scale = expand_qparam(y_scale, x.shape, axis, block_size, name="y_scale")
    zp = (
        expand_qparam(y_zero_point, x.shape, axis, block_size, name="y_zero_point")
        if y_zero_point is not None
        else None
    )
    prec = onnx_dtype(precision, what="precision") if precision else None
    return quantize(x, scale, zp, dtype, saturate=bool(saturate), precision=prec)


@op
def QuantizeLinear_10(x, y_scale, y_zero_point=None):
    return _quantize_linear(x, y_scale, y_zero_point, axis=1, blocked=False)


@op
def QuantizeLinear_13(x, y_scale, y_zero_point=None, *, axis=1):
    return _quantize_linear(x, y_scale, y_zero_point, axis=axis, blocked=False)


@op
def QuantizeLinear_19(x, y_scale, y_zero_point=None, *, axis=1, saturate=1):
    return _quantize_linear(x, y_scale, y_zero_point, axis=axis, saturate=saturate, blocked=False)


@op
def QuantizeLinear_21(
    x, y_scale, y_zero_point=None, *, axis=1, block_size=0, output_dtype=0, saturate=1
):
    return _quantize_linear(
        x,
        y_scale,
        y_zero_point,
        axis=axis,
        block_size=block_size,
        output_dtype=output_dtype,
        saturate=saturate,
    )


@op
def QuantizeLinear_23(
    x, y_scale, y_zero_point=None, *, axis=1, block_size=0, output_dtype=0, precision=0, saturate=1
):
    """Also serves 24 (float8e8m0 scales), 25 (int2/uint2) and 28 (float6): only types widen."""
    return _quantize_linear(
        x,
        y_scale,
        y_zero_point,
        axis=axis,
        block_size=block_size,
        output_dtype=output_dtype,
        saturate=saturate,
        precision=precision,
    )


def _dequantize_linear(
    x, x_scale, x_zero_point, *, axis, block_size=0, output_dtype=0, blocked=True
):
    if not blocked and x_scale.ndim > 1:
        raise ValueError(
            f"x_scale must be a scalar or 1-D at this opset, got shape {x_scale.shape}"
        )
    if block_size < 0:
        raise ValueError(f"block_size must be >= 0, got {block_size}")
    if x_zero_point is not None and x_zero_point.dtype != x.dtype:
        raise ValueError(f"x_zero_point ({x_zero_point.dtype}) must have x's type ({x.dtype})")
    if x.dtype == np.int32 and x_zero_point is not None and np.any(x_zero_point != 0):
        raise ValueError("an int32 x has no zero point (it must be 0)")
    dtype = onnx_dtype(output_dtype, what="output_dtype") if output_dtype else x_scale.dtype
    if dtype not in _DEQUANT_OUTPUTS:
        raise ValueError(
            f"DequantizeLinear produces float32, float16 or bfloat16, not {dtype} "
            "(set output_dtype when x_scale is float8e8m0)"
        )
    scale = expand_qparam(x_scale, x.shape, axis, block_size, name="x_scale")
    zp = (
        expand_qparam(x_zero_point, x.shape, axis, block_size, name="x_zero_point")
        if x_zero_point is not None
        else None
    )
    return dequantize(x, scale, zp, dtype)


@op
def DequantizeLinear_10(x, x_scale, x_zero_point=None):
    return _dequantize_linear(x, x_scale, x_zero_point, axis=1, blocked=False)


@op
def DequantizeLinear_13(x, x_scale, x_zero_point=None, *, axis=1):
    """Also serves 19 (float8 inputs, float16/bfloat16 scales): only types widen."""
    return _dequantize_linear(x, x_scale, x_zero_point, axis=axis, blocked=False)


@op
def DequantizeLinear_21(x, x_scale, x_zero_point=None, *, axis=1, block_size=0):
    return _dequantize_linear(x, x_scale, x_zero_point, axis=axis, block_size=block_size)


@op
def DequantizeLinear_23(x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    """Also serves 24, 25 and 28: only types widen."""
    return _dequantize_linear(
        x, x_scale, x_zero_point, axis=axis, block_size=block_size, output_dtype=output_dtype
    )


@op
def DynamicQuantizeLinear_11(x):
    """uint8 asymmetric quantization with the range [min(x, 0), max(x, 0)], all in float32."""
    qmin, qmax = np.float32(0), np.float32(255)
    if x.size == 0:
        raise ValueError("DynamicQuantizeLinear needs a non-empty input")
    maxx = np.float32(max(np.float32(0), np.max(x)))
    minx = np.float32(min(np.float32(0), np.min(x)))
    scale = np.float32(1.0 if maxx == minx else (maxx - minx)) / (qmax - qmin)
    zero_point = np.rint(np.clip(qmin - minx / scale, qmin, qmax))
    y = np.clip(np.rint(x / scale) + zero_point, qmin, qmax)
    return (
        y.astype(np.uint8),
        np.array(scale, dtype=x.dtype),
        np.array(zero_point, dtype=np.uint8),
    )


# ---------------------------------------------------------------------------------------------
# Integer compute: matmul and convolution on zero-point-shifted integers.
#
# NOTE: the products of two shifted 8-bit values are < 2**17, so float64 (BLAS) sums of them are
# exact for any K below ~2**36; the exact integer result is then wrapped to int32 like a C kernel.


def _shifted(x: np.ndarray, zero_point: np.ndarray | None) -> np.ndarray:
    """x - zero_point as float64 (exact for 8-bit and float8 values)."""
    v = x.astype(np.float64)
    if zero_point is not None:
        v = v - zero_point.astype(np.float64)
    return v


def _wrap_int32(v: np.ndarray) -> np.ndarray:
    return v.astype(np.int64).astype(np.int32)


def _row_param(p: np.ndarray | None, a: np.ndarray) -> np.ndarray | None:
    """A per-row (length M) zero point or scale of a (..., M, K) operand as (M, 1)."""
    if p is None or p.size == 1:
        return None if p is None else p.reshape(())
    if p.ndim == 1:
        if a.ndim < 2 or p.shape[0] != a.shape[-2]:
            raise ValueError(f"a per-row parameter of shape {p.shape} needs {a.shape[-2:-1]} rows")
        return p.reshape(-1, 1)
    return p


def _col_param(p: np.ndarray | None) -> np.ndarray | None:
    if p is None or p.size == 1:
        return None if p is None else p.reshape(())
    return p  # 1-D of length N broadcasts along the last axis as is


def _matmul_f64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul needs operands of rank >= 1, got {a.shape} and {b.shape}")
    k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if a.shape[-1] != k_b:
        raise ValueError(f"inner dimensions differ: A {a.shape}, B {b.shape}")
    return np.matmul(a, b)


@op
def MatMulInteger_10(A, B, a_zero_point=None, b_zero_point=None):
    """int32 (A - a_zero_point) @ (B - b_zero_point); zero points per tensor, per row of A or per
    column of B."""
    a = _shifted(A, _row_param(a_zero_point, A))
    b = _shifted(B, _col_param(b_zero_point))
    return _wrap_int32(_matmul_f64(a, b))


@op
def QLinearMatMul_10(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    """Also serves 21 (float8 operands, float16/bfloat16 scales): only types widen.

    y = saturate((a - a_zp) @ (b - b_zp) * (a_scale * b_scale / y_scale) + y_zp).
    """
    acc = _matmul_f64(
        _shifted(a, _row_param(a_zero_point, a)), _shifted(b, _col_param(b_zero_point))
    )
    a_s, b_s = _row_param(a_scale, a), _col_param(b_scale)
    multiplier = (a_s * b_s / y_scale.reshape(())).astype(np.float64)  # in the scales' dtype
    dtype = y_zero_point.dtype if y_zero_point is not None else a.dtype
    v = acc * multiplier
    if y_zero_point is not None:
        v = v + y_zero_point.reshape(()).astype(np.float64)
    return saturate_cast(v, dtype)


def _conv_shifted(
    x, w, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None
):
    """Grouped N-d convolution of float64 x (N, C, *S) with w (M, C/group, *K): (N, M, *O) float64.

    The window arithmetic and the im2col + batched matmul are conv.py's, shared with Conv; the
    shifted integer values are exact in float64.
    """
    if x.ndim < 3 or w.ndim != x.ndim:
        raise ValueError(
            f"x must be (N, C, spatial...) and w of the same rank, got {x.shape} and {w.shape}"
        )
    C, M = x.shape[1], w.shape[0]
    if kernel_shape is not None and tuple(kernel_shape) != w.shape[2:]:
        raise ValueError(f"kernel_shape={list(kernel_shape)} does not match w of shape {w.shape}")
    if group < 1 or w.shape[1] * group != C or M % group:
        raise ValueError(
            f"group={group} does not fit x with {C} channels and w of shape {w.shape} "
            "(need C == group * w.shape[1] and output channels divisible by group)"
        )
    win = window_geometry(
        x.shape[2:], w.shape[2:], strides=strides, dilations=dilations, pads=pads, auto_pad=auto_pad
    )
    return grouped_matmul(extract_windows(x, win, 0), w, group)


def _per_channel(p: np.ndarray | None, rank: int, *, axis: int) -> np.ndarray | None:
    """A scalar or per-channel 1-D parameter shaped to broadcast along `axis` of a rank-`rank`
    tensor."""
    if p is None or p.size == 1:
        return None if p is None else p.reshape(())
    if p.ndim != 1:
        raise ValueError(f"a per-channel parameter must be a scalar or 1-D, got shape {p.shape}")
    shape = [1] * rank
    shape[axis] = p.shape[0]
    return p.reshape(shape)


@op
def ConvInteger_10(
    x,
    w,
    x_zero_point=None,
    w_zero_point=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
):
    """int32 convolution of (x - x_zero_point) and (w - w_zero_point); w_zero_point may be per
    output channel. Padding contributes 0 after the shift (i.e. pads with x_zero_point)."""
    if x_zero_point is not None and x_zero_point.size != 1:
        raise ValueError(f"x_zero_point must be a scalar, got shape {x_zero_point.shape}")
    xs = _shifted(x, x_zero_point.reshape(()) if x_zero_point is not None else None)
    ws = _shifted(w, _per_channel(w_zero_point, w.ndim, axis=0))
    y = _conv_shifted(
        xs,
        ws,
        auto_pad=auto_pad,
        dilations=dilations,
        group=group,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
    )
    return _wrap_int32(y)


@op
def QLinearConv_10(
    x,
    x_scale,
    x_zero_point,
    w,
    w_scale,
    w_zero_point,
    y_scale,
    y_zero_point,
    B=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
):
    """y = saturate((conv(x - x_zp, w - w_zp) + B) * (x_scale * w_scale / y_scale) + y_zp), with
    w_scale/w_zero_point per tensor or per output channel."""
    M = w.shape[0]
    for name, p in (("w_scale", w_scale), ("w_zero_point", w_zero_point)):
        if p is not None and p.size not in (1, M):
            raise ValueError(
                f"{name} has {p.size} values; expected 1 or one per output channel ({M})"
            )
    xs = _shifted(x, x_zero_point.reshape(()) if x_zero_point is not None else None)
    ws = _shifted(w, _per_channel(w_zero_point, w.ndim, axis=0))
    acc = _conv_shifted(
        xs,
        ws,
        auto_pad=auto_pad,
        dilations=dilations,
        group=group,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
    )
    if B is not None:
        acc = acc + _per_channel(B, acc.ndim, axis=1).astype(np.float64)
    w_s = _per_channel(w_scale, acc.ndim, axis=1)
    multiplier = (x_scale.reshape(()) * w_s / y_scale.reshape(())).astype(np.float64)
    v = acc * multiplier
    dtype = y_zero_point.dtype if y_zero_point is not None else x.dtype
    if y_zero_point is not None:
        v = v + y_zero_point.reshape(()).astype(np.float64)
    return saturate_cast(v, dtype)
