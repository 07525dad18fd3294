"""The quantization math as pure functions: choose scale/zero point from a range, quantize a weight
per tensor, per channel or per block (granularity is one `axis` + `block_size`), dequantize it.

Rounding and saturation are ONNX QuantizeLinear's (ember.ops.quant); nothing here knows graphs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_dtypes
import numpy as np

from ember.ops.quant import dequantize, expand_qparam, quantize


@dataclasses.dataclass(frozen=True, eq=False)
class QParams:
    """Scale and zero point of one quantized tensor; scalar (per tensor), 1-D (per channel along
    `axis`) or same-rank blocked (blocks of `block_size` along `axis`)."""

    scale: np.ndarray  # float32
    zero_point: np.ndarray  # the quantized dtype
    axis: int = 0
    block_size: int = 0

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.zero_point.dtype


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A quantized constant: its integer values and the QParams that dequantize them."""

    values: np.ndarray
    params: QParams


def qrange(dtype: np.dtype[Any], *, symmetric: bool) -> tuple[int, int]:
    """The integer range used: the full type, or narrowed to +-max for symmetric signed types
    (int8 -> [-127, 127], as ORT, so that -x is representable whenever x is)."""
    info = ml_dtypes.iinfo(dtype)
    if symmetric and info.min < 0:
        return -int(info.max), int(info.max)
    return int(info.min), int(info.max)


def choose_qparams(lo: float, hi: float, dtype: np.dtype[Any], *, symmetric: bool) -> QParams:
    """Per-tensor scale and zero point covering [lo, hi] (widened to include 0, so that 0 is
    exactly representable: padding and Relu outputs stay exact).

    >>> p = choose_qparams(-1.0, 3.0, np.dtype(np.uint8), symmetric=False)
    >>> float(p.scale), int(p.zero_point)
    (0.01568627543747425, 64)
    >>> p = choose_qparams(-1.0, 3.0, np.dtype(np.int8), symmetric=True)
    >>> bool(p.scale == np.float32(3.0 / 127)), int(p.zero_point)
    (True, 0)
    """
    dtype = np.dtype(dtype)
    qmin, qmax = qrange(dtype, symmetric=symmetric)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        absmax = max(-lo, hi)
        # Signed: zero point 0; unsigned symmetric (rare) centres on the middle of the range.
        scale = 2 * absmax / (qmax - qmin) if absmax > 0 else 1.0
        zero = 0 if qmin < 0 else (qmin + qmax + 1) // 2
    else:
        scale = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
        zero = int(np.clip(np.rint(qmin - lo / scale), qmin, qmax))
    return QParams(np.array(scale, np.float32), np.array(zero, dtype))


def quantize_weight(
    w: np.ndarray,
    dtype: np.dtype[Any],
    *,
    axis: int | None,
    block_size: int = 0,
) -> QuantizedTensor:
    """Symmetric quantization of a constant: per tensor (axis None), per channel along `axis`, or
    in blocks of `block_size` along `axis` (every other axis per channel).

    >>> w = np.array([[1.0, -2.0], [0.5, 4.0]], np.float32)
    >>> q = quantize_weight(w, np.dtype(np.int8), axis=1)
    >>> q.values.tolist(), q.params.scale.tolist() == [np.float32(1 / 127), np.float32(4 / 127)]
    ([[127, -64], [64, 127]], True)
    """
    dtype = np.dtype(dtype)
    w32 = np.asarray(w, np.float32)
    _, qmax = qrange(dtype, symmetric=True)
    absw = np.abs(w32)
    if axis is None:
        absmax = np.array(absw.max() if absw.size else 0.0, np.float32)
    elif block_size:
        absmax = _block_absmax(absw, axis, block_size)
    else:
        others = tuple(i for i in range(w32.ndim) if i != axis)
        absmax = absw.max(axis=others) if w32.size else np.zeros(w32.shape[axis], np.float32)
    scale = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32)
    zero = np.zeros(scale.shape, dtype)
    ax = 0 if axis is None else axis
    values = quantize(
        w32, expand_qparam(scale, w32.shape, ax, block_size), None, dtype, precision=None
    )
    return QuantizedTensor(values, QParams(scale, zero, ax, block_size))


def _block_absmax(absw: np.ndarray, axis: int, block_size: int) -> np.ndarray:
    """max |w| over each block of `block_size` along `axis`: shape[axis] -> ceil(/block_size)."""
    n = absw.shape[axis]
    blocks = -(-n // block_size)
    pad = blocks * block_size - n
    if pad:
        widths = [(0, 0)] * absw.ndim
        widths[axis] = (0, pad)
        absw = np.pad(absw, widths)
    shape = [*absw.shape[:axis], blocks, block_size, *absw.shape[axis + 1 :]]
    return absw.reshape(shape).max(axis=axis + 1).astype(np.float32)


def dequantize_tensor(q: QuantizedTensor) -> np.ndarray:
    """float32 values of a QuantizedTensor, as DequantizeLinear computes them."""
    p = q.params
    shape = q.values.shape
    scale = expand_qparam(p.scale, shape, p.axis, p.block_size)
    zero = expand_qparam(p.zero_point, shape, p.axis, p.block_size)
    return dequantize(q.values, scale, zero, np.dtype(np.float32))


def fake_quantize(x: np.ndarray, params: QParams) -> np.ndarray:
    """x after QuantizeLinear then DequantizeLinear with `params` (per tensor)."""
    q = quantize(x, params.scale, params.zero_point, params.dtype)
    return dequantize(q, params.scale, params.zero_point, np.dtype(np.float32))
