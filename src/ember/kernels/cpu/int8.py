"""int8 CPU kernels (ember._C: csrc/dnnl_int8.cpp) with NumPy-friendly signatures.

QConv and QMatMul prepack constant int8 weights once and compute with oneDNN's VNNI kernels
(uint8/int8 source with a zero point, int8 weights with per-channel scales, float32 bias, an
activation and a residual-sum post-op), writing a requantized uint8/int8 result or float32.
QMatMul(dynamic=True) takes float32 rows and quantizes them per call exactly as ONNX
DynamicQuantizeLinear does. `quantize` / `dequantize` convert at the borders of int8 regions,
optionally between NCHW (float side) and NHWC (int8 side). Nothing here knows ONNX graphs: the
runtime maps the ai.ember int8 ops (ops/fused.py) onto these.

Rounding is to nearest even everywhere, as in the ONNX reference; the accumulation is exact
int32, so results agree with ember.ops.quant's QLinearConv / QLinearMatMul to 1 LSB (the float32
rescale of the accumulator may round a tie the other way).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ember.kernels.cpu import _C
from ember.kernels.cpu.dnnl import _ints, _window

#: the integer types activations may have; weights are always int8.
INT8_TYPES = (np.dtype(np.uint8), np.dtype(np.int8))


def _dtype_name(dtype: np.dtype | type | str | None) -> str:
    return "float32" if dtype is None else np.dtype(dtype).name


def _f32(a: np.ndarray | float) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32).reshape(-1))


class QConv(_C.QConv):
    """int8 convolution: `QConv(W, w_scale, B, ...)(x, z)` =
    `saturate(rint(act(x_scale * w_scale[k] * conv(x - x_zero_point, W) + B + dq(z)) / y_scale)
    + y_zero_point)`, with dq(z) = z_scale * (z - z_zero_point), or float32 when y_dtype is None.

    weight: int8 (K, C/group, k...) symmetric (zero point 0); w_scale: 1 or K float32 values;
    bias: float32 (K,) in real units. x is x_dtype (uint8 or int8), z (if the kernel was built
    with z_scale) and y are y_dtype; with channels_last all are N...C, the layout oneDNN's int8
    kernels run fastest in. requantize=(scale, zero_point, lowest, highest): the convolution (plus
    bias) is quantized and dequantized with these before z is added, as a QuantizeLinear ->
    DequantizeLinear between the conv and its residual Add would.

    >>> w = np.ones((1, 1, 1, 1), np.int8)
    >>> conv = QConv(w, 0.5, None, x_scale=1.0, x_zero_point=10, y_scale=1.0, y_dtype=np.uint8)
    >>> conv(np.full((1, 1, 2, 1), 14, np.uint8))[0, 0, :, 0]  # NHWC: N=1, H=1, W=2, C=1
    array([2, 2], dtype=uint8)
    """

    def __init__(
        self,
        weight: np.ndarray,
        w_scale: np.ndarray | float,
        bias: np.ndarray | None = None,
        *,
        x_scale: float,
        x_zero_point: int = 0,
        x_dtype: np.dtype | type | str = np.uint8,
        y_scale: float = 1.0,
        y_zero_point: int = 0,
        y_dtype: np.dtype | type | str | None = None,
        z_scale: float | None = None,
        z_zero_point: int = 0,
        strides: Sequence[int] | None = None,
        pads: Sequence[int] | None = None,
        dilations: Sequence[int] | None = None,
        group: int = 1,
        channels_last: bool | int = True,
        activation: str = "",
        activation_params: Sequence[float] = (),
        requantize: Sequence[float] = (),
    ) -> None:
        nd = max(np.ndim(weight) - 2, 1)
        super().__init__(
            np.ascontiguousarray(weight),
            _f32(w_scale),
            None if bias is None else _f32(bias),
            x_scale=float(x_scale),
            x_zero_point=int(x_zero_point),
            x_dtype=_dtype_name(x_dtype),
            y_dtype=_dtype_name(y_dtype),
            y_scale=float(y_scale),
            y_zero_point=int(y_zero_point),
            has_z=z_scale is not None,
            z_scale=float(z_scale or 1.0),
            z_zero_point=int(z_zero_point),
            strides=_ints(strides, nd, 1),
            pads=_ints(pads, 2 * nd, 0),
            dilations=_ints(dilations, nd, 1),
            group=int(group),
            channels_last=bool(channels_last),
            activation=activation,
            activation_params=[float(p) for p in activation_params],
            requantize=[float(c) for c in requantize],
        )


class QMatMul(_C.QMatMul):
    """int8 matmul with a constant, prepacked int8 B (K, N) (or (N, K) with trans_b):
    `saturate(rint(act(a_scale * b_scale[n] * (a - a_zero_point) @ B + bias) / y_scale)
    + y_zero_point)`, or float32 when y_dtype is None.

    With dynamic=True, a is float32 and is quantized per call to uint8 as ONNX
    DynamicQuantizeLinear does (its scale and zero point replace a_scale / a_zero_point); the
    result is float32. b_scale: 1 or N values; bias: float32 (N,).

    >>> mm = QMatMul(np.array([[1], [2]], np.int8), 0.5, a_scale=1.0, a_zero_point=1)
    >>> mm(np.array([[3, 5]], np.uint8))
    array([[5.]], dtype=float32)
    """

    def __init__(
        self,
        b: np.ndarray,
        b_scale: np.ndarray | float,
        bias: np.ndarray | None = None,
        *,
        trans_b: bool = False,
        dynamic: bool = False,
        a_scale: float = 1.0,
        a_zero_point: int = 0,
        a_dtype: np.dtype | type | str = np.uint8,
        y_scale: float = 1.0,
        y_zero_point: int = 0,
        y_dtype: np.dtype | type | str | None = None,
        activation: str = "",
        activation_params: Sequence[float] = (),
    ) -> None:
        super().__init__(
            np.ascontiguousarray(b),
            _f32(b_scale),
            None if bias is None else _f32(bias),
            trans_b=bool(trans_b),
            dynamic=bool(dynamic),
            a_scale=float(a_scale),
            a_zero_point=int(a_zero_point),
            a_dtype=_dtype_name(a_dtype),
            y_dtype=_dtype_name(y_dtype),
            y_scale=float(y_scale),
            y_zero_point=int(y_zero_point),
            activation=activation,
            activation_params=[float(p) for p in activation_params],
        )


def quantize(
    x: np.ndarray,
    scale: float,
    zero_point: int = 0,
    dtype: np.dtype | type | str = np.uint8,
    *,
    channels_last: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """saturate(rint(x / scale) + zero_point) as uint8/int8 (float32 x, per-tensor parameters);
    channels_last: x is (N, C, spatial...) and the result (N, spatial..., C).

    >>> quantize(np.array([-1.0, 0.5, 1.5, 300.0], np.float32), 1.0, 2)
    array([  1,   2,   4, 255], dtype=uint8)
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    return _C.quantize(x, float(scale), int(zero_point), _dtype_name(dtype), channels_last, out)


def dequantize(
    x: np.ndarray,
    scale: float,
    zero_point: int = 0,
    *,
    channels_last: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """(x - zero_point) * scale as float32 (uint8/int8 x, per-tensor parameters); channels_last:
    x is (N, spatial..., C) and the result (N, C, spatial...).

    >>> dequantize(np.array([0, 3], np.uint8), 0.5, 1)
    array([-0.5,  1. ], dtype=float32)
    """
    return _C.dequantize(np.ascontiguousarray(x), float(scale), int(zero_point), channels_last, out)


def dynamic_quantize(x: np.ndarray) -> tuple[np.ndarray, float, int]:
    """ONNX DynamicQuantizeLinear of float32 x: (uint8 y, scale, zero point).

    >>> dynamic_quantize(np.array([0.0, 2.55], np.float32))
    (array([  0, 255], dtype=uint8), 0.009999999776482582, 0)
    """
    y, scale, zero_point = _C.dynamic_quantize(np.ascontiguousarray(x, dtype=np.float32))
    return y, float(scale), int(zero_point)


def max_pool(
    x: np.ndarray,
    *,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    ceil_mode: bool | int = False,
    channels_last: bool | int = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """ONNX MaxPool of uint8/int8 x (NC... or, with channels_last, N...C).

    >>> max_pool(np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4), kernel_shape=[2, 2],
    ...          strides=[2, 2])[0, 0]
    array([[ 5,  7],
           [13, 15]], dtype=uint8)
    """
    window = _window(kernel_shape, strides, pads, dilations)
    return _C.max_pool_int8(
        np.ascontiguousarray(x), *window, bool(ceil_mode), bool(channels_last), out
    )
