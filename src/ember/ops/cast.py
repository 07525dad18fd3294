"""Cast, CastLike and BitCast, and the ONNX element type -> NumPy dtype table other ops share.

Low-precision types (bfloat16, float8, float4, float6, int4/uint4, int2/uint2) are ml_dtypes dtypes;
ONNX strings are object arrays of Python str. Float-to-float8 saturation and FLOAT8E8M0 rounding
follow the tables in the ONNX Cast spec; every other numeric conversion is NumPy's (ml_dtypes')
conversion, which is what the ONNX spec and its test data describe.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ember.ops.common import is_float
from ember.ops.registry import op

# ONNX TensorProto.DataType -> (name, NumPy dtype). STRING is an object array of str.
_TYPES: dict[int, tuple[str, np.dtype]] = {
    1: ("FLOAT", np.dtype(np.float32)),
    2: ("UINT8", np.dtype(np.uint8)),
    3: ("INT8", np.dtype(np.int8)),
    4: ("UINT16", np.dtype(np.uint16)),
    5: ("INT16", np.dtype(np.int16)),
    6: ("INT32", np.dtype(np.int32)),
    7: ("INT64", np.dtype(np.int64)),
    8: ("STRING", np.dtype(object)),
    9: ("BOOL", np.dtype(np.bool_)),
    10: ("FLOAT16", np.dtype(np.float16)),
    11: ("DOUBLE", np.dtype(np.float64)),
    12: ("UINT32", np.dtype(np.uint32)),
    13: ("UINT64", np.dtype(np.uint64)),
    14: ("COMPLEX64", np.dtype(np.complex64)),
    15: ("COMPLEX128", np.dtype(np.complex128)),
    16: ("BFLOAT16", np.dtype(ml_dtypes.bfloat16)),
    17: ("FLOAT8E4M3FN", np.dtype(ml_dtypes.float8_e4m3fn)),
    18: ("FLOAT8E4M3FNUZ", np.dtype(ml_dtypes.float8_e4m3fnuz)),
    19: ("FLOAT8E5M2", np.dtype(ml_dtypes.float8_e5m2)),
    20: ("FLOAT8E5M2FNUZ", np.dtype(ml_dtypes.float8_e5m2fnuz)),
    21: ("UINT4", np.dtype(ml_dtypes.uint4)),
    22: ("INT4", np.dtype(ml_dtypes.int4)),
    23: ("FLOAT4E2M1", np.dtype(ml_dtypes.float4_e2m1fn)),
    24: ("FLOAT8E8M0", np.dtype(ml_dtypes.float8_e8m0fnu)),
    25: ("UINT2", np.dtype(ml_dtypes.uint2)),
    26: ("INT2", np.dtype(ml_dtypes.int2)),
    27: ("FLOAT6E2M3", np.dtype(ml_dtypes.float6_e2m3fn)),
    28: ("FLOAT6E3M2", np.dtype(ml_dtypes.float6_e3m2fn)),
}
_BY_NAME = {name: code for code, (name, _) in _TYPES.items()}

_FLOAT8 = frozenset(_TYPES[c][1] for c in (17, 18, 19, 20))  # the types `saturate` applies to
_E8M0 = _TYPES[24][1]
_ML_FLOATS = frozenset(_TYPES[c][1] for c in (16, 17, 18, 19, 20, 23, 24, 27, 28))
_ML_INTS = frozenset(_TYPES[c][1] for c in (21, 22, 25, 26))
_BITS = {
    _TYPES[c][1]: b for c, b in ((21, 4), (22, 4), (23, 4), (25, 2), (26, 2), (27, 6), (28, 6))
}


def numpy_dtype(onnx_elem_type: int) -> np.dtype:
    """The NumPy dtype that holds ONNX element type `onnx_elem_type` (a TensorProto.DataType).

    >>> numpy_dtype(10)
    dtype('float16')
    >>> numpy_dtype(16).name
    'bfloat16'
    """
    entry = _TYPES.get(int(onnx_elem_type))
    if entry is None:
        known = ", ".join(f"{c} ({n})" for c, (n, _) in _TYPES.items())
        raise ValueError(f"unknown ONNX element type {onnx_elem_type}; known: {known}")
    return entry[1]


def _is_text(dtype: np.dtype) -> bool:
    return dtype.kind in "OUS"


def cast_array(
    x: np.ndarray, to: np.dtype, *, saturate: bool = True, round_mode: str = "up"
) -> np.ndarray:
    """`x` converted to dtype `to` by the ONNX Cast rules (see the module docstring).

    >>> cast_array(np.array([1000.0, np.inf], np.float32), numpy_dtype(17)).astype(np.float32)
    array([448., 448.], dtype=float32)
    """
    to = np.dtype(to)
    if x.dtype == to:
        return x
    if _is_text(to):
        return _to_string(x)
    if _is_text(x.dtype):
        return _from_string(x, to, saturate=saturate, round_mode=round_mode)
    with np.errstate(all="ignore"):  # out-of-range values are defined (or UB) per the spec
        if to == _E8M0:
            return _to_e8m0(x, saturate=bool(saturate), round_mode=round_mode)
        if to in _FLOAT8 and saturate:
            # Inf and values beyond the largest finite float8 go to +-FLT_MAX; NaN stays NaN.
            w = x if x.dtype.kind == "f" else x.astype(np.float64)
            hi = float(ml_dtypes.finfo(to).max)
            return np.asarray(np.clip(w, -hi, hi)).astype(to)
        if x.dtype in _ML_FLOATS and to.kind in "iub":
            x = x.astype(np.float32)  # ml_dtypes floats convert to integers through float32
        return np.asarray(x).astype(to)


def _to_e8m0(x: np.ndarray, *, saturate: bool, round_mode: str) -> np.ndarray:
    """FLOAT8E8M0 (a bare power of two 2^(code-127), code 255 = NaN) with ONNX's rounding modes.

    up: the next power of two at or above |x|; down: at or below; nearest: ties go up. With
    saturate, values beyond the range clamp to it (0 -> the smallest); without, they become NaN.
    Negative inputs are undefined by the spec: their magnitude is used.
    """
    if round_mode not in ("up", "down", "nearest"):
        raise ValueError(f"Cast: round_mode must be 'up', 'down' or 'nearest', got {round_mode!r}")
    w = np.abs(x.astype(np.float64))
    m, e = np.frexp(w)  # w = m * 2^e with m in [0.5, 1): floor(log2 w) = e - 1
    exact = m == 0.5
    if round_mode == "up":
        k = np.where(exact, e - 1, e)
    elif round_mode == "down":
        k = e - 1
    else:
        k = np.where(m >= 0.75, e, e - 1)  # 2^(e-1) * 1.5 is the midpoint
    code = k.astype(np.int64) + 127
    finite = np.isfinite(w) & (w > 0)
    low = np.where(finite, code < 0, w == 0)
    high = np.where(finite, code > 254, np.isinf(w))
    code = np.where(low, 0 if saturate else 255, code)
    code = np.where(high, 254 if saturate else 255, code)
    code = np.where(np.isnan(w), 255, code)
    return np.clip(code, 0, 255).astype(np.uint8).view(_E8M0)


def _to_string(x: np.ndarray) -> np.ndarray:
    """Numbers as ONNX writes them: shortest round-trip digits; NaN, INF and -INF for specials."""
    if x.dtype.kind in "OUS":
        return x.astype(np.str_).astype(object)
    if is_float(x.dtype):
        w = x.astype(np.float32) if x.dtype in _ML_FLOATS else x
        s = w.astype(np.str_)
        s = np.where(np.isnan(w), "NaN", s)
        s = np.where(np.isposinf(w), "INF", s)
        s = np.where(np.isneginf(w), "-INF", s)
        return np.asarray(s).astype(object)
    if x.dtype in _ML_INTS:
        x = x.astype(np.int8)
    return x.astype(np.str_).astype(object)


def _from_string(x: np.ndarray, to: np.dtype, *, saturate: bool, round_mode: str) -> np.ndarray:
    """Parse decimal or scientific numbers, and INF/+INF/-INF/NaN in any case, into `to`.

    A float string cast to an integer type truncates ("100.5" -> 100); bool accepts true/false
    (any case) or a number (nonzero is True).
    """
    s = np.char.strip(x.astype(np.str_))
    if to == np.bool_:
        lower = np.char.lower(s)
        words = (lower == "true") | (lower == "false")
        numbers = _parse_float(np.where(words, "0", s))
        return np.where(words, lower == "true", numbers != 0)
    if to.kind in "iu" or to in _ML_INTS:
        wide = np.uint64 if to.kind == "u" else np.int64
        try:
            values = s.astype(wide)  # exact for integers beyond float64's 2^53
        except (ValueError, OverflowError):
            values = np.trunc(_parse_float(s))
        with np.errstate(all="ignore"):
            return values.astype(np.int64).astype(to) if to in _ML_INTS else values.astype(to)
    return cast_array(_parse_float(s), to, saturate=saturate, round_mode=round_mode)


def _parse_float(s: np.ndarray) -> np.ndarray:
    try:
        return s.astype(np.float64)  # accepts 1e-5, INF, +inf, -Inf, NaN, nan
    except ValueError as e:
        raise ValueError(f"Cast: cannot parse a number from a string: {e}") from None


@op
def Cast(input, *, to):
    # Opset 1 names the type as a string: "FLOAT", "INT64", ...
    code = _BY_NAME.get(str(to).upper())
    if code is None:
        raise ValueError(f"Cast: unknown type name to={to!r}; known: {', '.join(_BY_NAME)}")
    return cast_array(input, numpy_dtype(code))


@op
def Cast_6(input, *, to):
    return cast_array(input, numpy_dtype(to))


@op
def Cast_19(input, *, to, saturate=1):
    return cast_array(input, numpy_dtype(to), saturate=bool(saturate))


@op
def Cast_24(input, *, to, saturate=1, round_mode="up"):
    return cast_array(input, numpy_dtype(to), saturate=bool(saturate), round_mode=round_mode)


@op
def CastLike_15(input, target_type):
    return cast_array(input, target_type.dtype)


@op
def CastLike_19(input, target_type, *, saturate=1):
    return cast_array(input, target_type.dtype, saturate=bool(saturate))


@op
def CastLike_24(input, target_type, *, saturate=1, round_mode="up"):
    return cast_array(input, target_type.dtype, saturate=bool(saturate), round_mode=round_mode)


def _bit_width(dtype: np.dtype) -> int:
    return _BITS.get(dtype, dtype.itemsize * 8)


@op
def BitCast_26(input, *, to):
    target = numpy_dtype(to)
    if _is_text(input.dtype) or _is_text(target):
        raise TypeError(f"BitCast does not take strings (from {input.dtype} to {target})")
    bits = _bit_width(input.dtype)
    if bits != _bit_width(target):
        raise ValueError(
            f"BitCast needs types of one bit width, got {input.dtype} ({bits} bits) "
            f"and {target} ({_bit_width(target)} bits)"
        )
    if bits >= 8:
        # NOTE: ONNX fixes the byte order as little endian, NumPy's native order on every host
        # ember runs on.
        return input.view(target)
    # Sub-byte types sit one per byte: take the low `bits` of each and reinterpret them.
    code = input.view(np.uint8) & np.uint8((1 << bits) - 1)
    if target.kind == "V" and target not in _ML_INTS:  # float4 / float6: code is the storage
        return code.view(target)
    if target == np.dtype(ml_dtypes.int4) or target == np.dtype(ml_dtypes.int2):
        sign = np.uint8(1 << (bits - 1))
        return (code.astype(np.int8) - ((code & sign).astype(np.int8) << 1)).astype(target)
    return code.astype(target)
