"""Elementwise ops: unary math, arithmetic, comparison, logic and bitwise ops, Where and Clip.

Binary ops broadcast NumPy-style from opset 7 on, and by the legacy `broadcast`/`axis` rule before.
Outputs keep the input dtype exactly (no NumPy promotion). Transcendental functions of half floats
(float16, bfloat16, float8) are computed in float32 and rounded once. Only Sum and Mean accumulate,
so only they read exact mode. The legacy `consumed_inputs` attribute (opset 1) was a memory-reuse
hint with no effect on values: it is accepted and ignored.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from ember.ops.common import is_float, normalize_axis, work_arrays
from ember.ops.registry import OpContext, op
from ember.ops.special import erf

_ML_FLOATS = frozenset(
    np.dtype(t)
    for t in (
        ml_dtypes.bfloat16,
        ml_dtypes.float8_e4m3fn,
        ml_dtypes.float8_e4m3fnuz,
        ml_dtypes.float8_e5m2,
        ml_dtypes.float8_e5m2fnuz,
        ml_dtypes.float8_e8m0fnu,
        ml_dtypes.float4_e2m1fn,
        ml_dtypes.float6_e2m3fn,
        ml_dtypes.float6_e3m2fn,
    )
)
_NARROW_FLOATS = _ML_FLOATS | {np.dtype(np.float16)}  # computed in float32, rounded once


def _is_int(dtype: np.dtype) -> bool:
    return dtype.kind in "iu"


def _is_text(dtype: np.dtype) -> bool:
    return dtype.kind in "OUS"


def _require_float(name: str, x: np.ndarray) -> None:
    if not is_float(x.dtype):
        raise TypeError(f"{name} needs a floating-point input, got {x.dtype}")


def _require_int(name: str, x: np.ndarray) -> None:
    if not _is_int(x.dtype):
        raise TypeError(f"{name} needs an integer input, got {x.dtype}")


def _require_bool(name: str, *xs: np.ndarray) -> None:
    for x in xs:
        if x.dtype != np.bool_:
            raise TypeError(f"{name} needs bool inputs, got {x.dtype}")


def _same_dtype(name: str, *xs: np.ndarray) -> None:
    first = xs[0].dtype
    for x in xs[1:]:
        if x.dtype != first and not (_is_text(first) and _is_text(x.dtype)):
            raise TypeError(f"{name} needs inputs of one dtype, got {first} and {x.dtype}")


def _float_math(name: str, fn: Callable[[np.ndarray], Any], x: np.ndarray) -> np.ndarray:
    """fn(x) for a float `x`, in float32 for half floats, as x.dtype; IEEE specials, no warnings."""
    _require_float(name, x)
    w = x.astype(np.float32) if x.dtype in _NARROW_FLOATS else x
    with np.errstate(all="ignore"):
        return np.asarray(fn(w)).astype(x.dtype, copy=False)


def _legacy_broadcast(name: str, a: np.ndarray, b: np.ndarray, broadcast: int, axis: int | None):
    """B aligned to A by the opset-1/6 rule: B's shape is a contiguous run of A's dims, starting at
    `axis` (default: the trailing dims). Returns B reshaped so NumPy broadcasting does the rest."""
    if not broadcast:
        if a.shape != b.shape:
            raise ValueError(
                f"{name}: shapes {list(a.shape)} and {list(b.shape)} differ and broadcast=0"
            )
        return b
    if b.ndim > a.ndim:
        raise ValueError(
            f"{name}: legacy broadcast needs B's rank ({b.ndim}) <= A's rank ({a.ndim})"
        )
    start = a.ndim - b.ndim if axis is None else normalize_axis(axis, a.ndim)
    if start + b.ndim > a.ndim:
        raise ValueError(
            f"{name}: B of shape {list(b.shape)} does not fit A of shape {list(a.shape)} "
            f"at axis={axis}"
        )
    return b.reshape(b.shape + (1,) * (a.ndim - start - b.ndim))


def _same_shapes(name: str, xs: tuple[np.ndarray, ...]) -> None:
    """Opset-1/6 variadic ops (Max, Min, Sum, Mean) take inputs of one shape: no broadcasting."""
    for x in xs[1:]:
        if x.shape != xs[0].shape:
            raise ValueError(
                f"{name} before opset 8 needs inputs of one shape, got "
                f"{list(xs[0].shape)} and {list(x.shape)}"
            )


def _variadic(name: str, fn: Callable[..., Any], xs: tuple[np.ndarray, ...]) -> np.ndarray:
    if not xs:
        raise ValueError(f"{name} needs at least one input")
    _same_dtype(name, *xs)
    if len(xs) == 1:
        return xs[0].copy()
    with np.errstate(all="ignore"):
        return np.asarray(functools.reduce(fn, xs)).astype(xs[0].dtype, copy=False)


# ---------------------------------------------------------------- unary math


@op
def Abs(X, *, consumed_inputs=None):
    return Abs_6(X)


@op
def Abs_6(X):
    return np.abs(X)  # NOTE: abs(INT_MIN) wraps to INT_MIN, as in C


@op
def Neg(X, *, consumed_inputs=None):
    return Neg_6(X)


@op
def Neg_6(X):
    return np.negative(X)


@op
def Reciprocal(X, *, consumed_inputs=None):
    return Reciprocal_6(X)


@op
def Reciprocal_6(X):
    return _float_math("Reciprocal", np.reciprocal, X)


@op
def Sqrt(X, *, consumed_inputs=None):
    return Sqrt_6(X)


@op
def Sqrt_6(X):
    return _float_math("Sqrt", np.sqrt, X)


@op
def Exp(input, *, consumed_inputs=None):
    return Exp_6(input)


@op
def Exp_6(input):
    return _float_math("Exp", np.exp, input)


@op
def Log(input, *, consumed_inputs=None):
    return Log_6(input)


@op
def Log_6(input):
    return _float_math("Log", np.log, input)


@op
def Ceil(X, *, consumed_inputs=None):
    return Ceil_6(X)


@op
def Ceil_6(X):
    return _float_math("Ceil", np.ceil, X)


@op
def Floor(X, *, consumed_inputs=None):
    return Floor_6(X)


@op
def Floor_6(X):
    return _float_math("Floor", np.floor, X)


@op
def Round_11(X):
    return _float_math("Round", np.rint, X)  # rint rounds halves to even, as ONNX asks


@op
def Sign_9(input):
    return np.sign(input)  # NaN stays NaN; unsigned inputs give 0 or 1


@op
def Sin_7(input):
    return _float_math("Sin", np.sin, input)


@op
def Cos_7(input):
    return _float_math("Cos", np.cos, input)


@op
def Tan_7(input):
    return _float_math("Tan", np.tan, input)


@op
def Asin_7(input):
    return _float_math("Asin", np.arcsin, input)


@op
def Acos_7(input):
    return _float_math("Acos", np.arccos, input)


@op
def Atan_7(input):
    return _float_math("Atan", np.arctan, input)


@op
def Sinh_9(input):
    return _float_math("Sinh", np.sinh, input)


@op
def Cosh_9(input):
    return _float_math("Cosh", np.cosh, input)


@op
def Asinh_9(input):
    return _float_math("Asinh", np.arcsinh, input)


@op
def Acosh_9(input):
    return _float_math("Acosh", np.arccosh, input)


@op
def Atanh_9(input):
    return _float_math("Atanh", np.arctanh, input)


@op
def Erf_9(input):
    if _is_int(input.dtype):  # the schema allows integers: |erf(n)| < 1 truncates to 0
        return np.zeros_like(input)
    return _float_math("Erf", lambda w: erf(w.astype(np.float64)), input)


@op
def IsNaN_9(X):
    return np.isnan(X.astype(np.float32) if X.dtype in _ML_FLOATS else X)


@op
def IsInf_10(X, *, detect_negative=1, detect_positive=1):
    w = X.astype(np.float32) if X.dtype in _ML_FLOATS else X
    inf = np.isinf(w)
    if not detect_negative:
        inf &= w > 0
    if not detect_positive:
        inf &= w < 0
    return inf


# ---------------------------------------------------------------- binary arithmetic


def _add(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    _same_dtype("Add", A, B)
    return np.asarray(np.add(A, B))


def _sub(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    _same_dtype("Sub", A, B)
    return np.asarray(np.subtract(A, B))


def _mul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    _same_dtype("Mul", A, B)
    return np.asarray(np.multiply(A, B))


def _div(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    _same_dtype("Div", A, B)
    with np.errstate(all="ignore"):
        if A.dtype.kind == "u":
            return np.asarray(np.floor_divide(A, B))
        if A.dtype.kind == "i":
            # ONNX integer division truncates toward zero; NumPy's // floors. They differ by one
            # where the division is inexact and the signs differ. Division by zero gives 0.
            q = np.floor_divide(A, B)
            inexact = (q * B) != A
            return np.asarray(q + (inexact & ((A < 0) != (B < 0))))
        return np.asarray(np.divide(A, B))


@op
def Add(A, B, *, axis=None, broadcast=0, consumed_inputs=None):
    return _add(A, _legacy_broadcast("Add", A, B, broadcast, axis))


@op
def Add_6(A, B, *, axis=None, broadcast=0):
    return _add(A, _legacy_broadcast("Add", A, B, broadcast, axis))


@op
def Add_7(A, B):
    return _add(A, B)


@op
def Sub(A, B, *, axis=None, broadcast=0, consumed_inputs=None):
    return _sub(A, _legacy_broadcast("Sub", A, B, broadcast, axis))


@op
def Sub_6(A, B, *, axis=None, broadcast=0):
    return _sub(A, _legacy_broadcast("Sub", A, B, broadcast, axis))


@op
def Sub_7(A, B):
    return _sub(A, B)


@op
def Mul(A, B, *, axis=None, broadcast=0, consumed_inputs=None):
    return _mul(A, _legacy_broadcast("Mul", A, B, broadcast, axis))


@op
def Mul_6(A, B, *, axis=None, broadcast=0):
    return _mul(A, _legacy_broadcast("Mul", A, B, broadcast, axis))


@op
def Mul_7(A, B):
    return _mul(A, B)


@op
def Div(A, B, *, axis=None, broadcast=0, consumed_inputs=None):
    return _div(A, _legacy_broadcast("Div", A, B, broadcast, axis))


@op
def Div_6(A, B, *, axis=None, broadcast=0):
    return _div(A, _legacy_broadcast("Div", A, B, broadcast, axis))


@op
def Div_7(A, B):
    return _div(A, B)


def _pow(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """X ** Y with the dtype of X (the base), whatever the exponent's dtype."""
    with np.errstate(all="ignore"):
        if is_float(X.dtype):
            x = X.astype(np.float32) if X.dtype in _NARROW_FLOATS else X
            y = Y.astype(np.float32) if Y.dtype in _NARROW_FLOATS else Y
            return np.asarray(np.power(x, y)).astype(X.dtype, copy=False)
        _require_int("Pow", X)
        if is_float(Y.dtype):
            y = Y.astype(np.float64)
            return np.trunc(np.power(X.astype(np.float64), y)).astype(X.dtype)
        _require_int("Pow", Y)
        # Integer power in 64 bits, wrapped to X's width (the same bits as computing in X's
        # width). NumPy refuses negative integer exponents: x^-n truncates to 1, +-1 or 0.
        wide = np.uint64 if X.dtype.kind == "u" else np.int64
        out = np.power(X.astype(wide), np.maximum(Y, 0).astype(wide))
        if np.any(Y < 0):
            neg = np.trunc(np.power(X.astype(np.float64), Y.astype(np.float64)))
            out = np.where(Y < 0, neg.astype(wide), out)
        return np.asarray(out).astype(X.dtype)


@op
def Pow(X, Y, *, axis=None, broadcast=0):
    return _pow(X, _legacy_broadcast("Pow", X, Y, broadcast, axis))


@op
def Pow_7(X, Y):
    return _pow(X, Y)


@op
def Mod_10(A, B, *, fmod=0):
    # Opsets 10-13 allowed floats only with fmod=1; opset 28 defined fmod=0 for floats as floored
    # modulo (the sign of B). That is what np.mod computes, special cases included, so one
    # function serves every version.
    _same_dtype("Mod", A, B)
    if fmod not in (0, 1):
        raise ValueError(f"Mod: fmod must be 0 or 1, got {fmod}")
    if A.dtype.kind not in "iuf" and A.dtype not in _ML_FLOATS:
        raise TypeError(f"Mod needs numeric inputs, got {A.dtype}")
    fn = np.fmod if fmod else np.mod
    if A.dtype in _NARROW_FLOATS:
        return _float_math("Mod", lambda a: fn(a, B.astype(np.float32)), A)
    with np.errstate(all="ignore"):
        return np.asarray(fn(A, B))  # integer modulo by zero gives 0


# ---------------------------------------------------------------- variadic


@op
def Max(*data_0, consumed_inputs=None):
    return Max_6(*data_0)


@op
def Max_6(*data_0):
    _same_shapes("Max", data_0)
    return _variadic("Max", np.maximum, data_0)


@op
def Max_8(*data_0):
    return _variadic("Max", np.maximum, data_0)  # NaN wins, as in ONNX Runtime


@op
def Min(*data_0, consumed_inputs=None):
    return Min_6(*data_0)


@op
def Min_6(*data_0):
    _same_shapes("Min", data_0)
    return _variadic("Min", np.minimum, data_0)


@op
def Min_8(*data_0):
    return _variadic("Min", np.minimum, data_0)


def _sum(name: str, xs: tuple[np.ndarray, ...], ctx: OpContext | None) -> np.ndarray:
    if not xs:
        raise ValueError(f"{name} needs at least one input")
    _same_dtype(name, *xs)
    dtype = xs[0].dtype
    ws = work_arrays(ctx, *xs)
    with np.errstate(all="ignore"):
        total = functools.reduce(np.add, ws)
        if name == "Mean":
            total = total / len(xs)
    return np.array(total, dtype=dtype)  # a copy even for one input: never alias an input


@op
def Sum(*data_0, consumed_inputs=None, ctx=None):
    return Sum_6(*data_0, ctx=ctx)


@op
def Sum_6(*data_0, ctx=None):
    _same_shapes("Sum", data_0)
    return _sum("Sum", data_0, ctx)


@op
def Sum_8(*data_0, ctx=None):
    return _sum("Sum", data_0, ctx)


@op
def Mean(*data_0, consumed_inputs=None, ctx=None):
    return Mean_6(*data_0, ctx=ctx)


@op
def Mean_6(*data_0, ctx=None):
    _same_shapes("Mean", data_0)
    return _sum("Mean", data_0, ctx)


@op
def Mean_8(*data_0, ctx=None):
    return _sum("Mean", data_0, ctx)


# ---------------------------------------------------------------- comparison and logic


def _compare(name: str, fn: Callable[..., Any], A: np.ndarray, B: np.ndarray) -> np.ndarray:
    _same_dtype(name, A, B)
    return np.asarray(fn(A, B), dtype=np.bool_)


@op
def Equal(A, B, *, axis=None, broadcast=0):
    return Equal_7(A, _legacy_broadcast("Equal", A, B, broadcast, axis))


@op
def Equal_7(A, B):
    if _is_text(A.dtype) and _is_text(B.dtype):
        # Strings may come as str or bytes objects; compare them as text.
        return np.asarray(_as_str(A) == _as_str(B), dtype=np.bool_)
    return _compare("Equal", np.equal, A, B)


def _as_str(x: np.ndarray) -> np.ndarray:
    return x.astype(np.str_) if x.dtype.kind in "OS" else x


@op
def Greater(A, B, *, axis=None, broadcast=0):
    return Greater_7(A, _legacy_broadcast("Greater", A, B, broadcast, axis))


@op
def Greater_7(A, B):
    return _compare("Greater", np.greater, A, B)


@op
def Less(A, B, *, axis=None, broadcast=0):
    return Less_7(A, _legacy_broadcast("Less", A, B, broadcast, axis))


@op
def Less_7(A, B):
    return _compare("Less", np.less, A, B)


@op
def GreaterOrEqual_12(A, B):
    return _compare("GreaterOrEqual", np.greater_equal, A, B)


@op
def LessOrEqual_12(A, B):
    return _compare("LessOrEqual", np.less_equal, A, B)


def _logic(name: str, fn: Callable[..., Any], A: np.ndarray, B: np.ndarray) -> np.ndarray:
    _require_bool(name, A, B)
    return np.asarray(fn(A, B))


@op
def And(A, B, *, axis=None, broadcast=0):
    return _logic("And", np.logical_and, A, _legacy_broadcast("And", A, B, broadcast, axis))


@op
def And_7(A, B):
    return _logic("And", np.logical_and, A, B)


@op
def Or(A, B, *, axis=None, broadcast=0):
    return _logic("Or", np.logical_or, A, _legacy_broadcast("Or", A, B, broadcast, axis))


@op
def Or_7(A, B):
    return _logic("Or", np.logical_or, A, B)


@op
def Xor(A, B, *, axis=None, broadcast=0):
    return _logic("Xor", np.logical_xor, A, _legacy_broadcast("Xor", A, B, broadcast, axis))


@op
def Xor_7(A, B):
    return _logic("Xor", np.logical_xor, A, B)


@op
def Not(X):
    _require_bool("Not", X)
    return np.logical_not(X)


# ---------------------------------------------------------------- bitwise


@op
def BitShift_11(X, Y, *, direction):
    # Opset 28 added signed types and defined shifts by a negative amount or by >= the bit width
    # (undefined before): the result is what the sign fill alone gives. One function serves both.
    _same_dtype("BitShift", X, Y)
    _require_int("BitShift", X)
    if direction not in ("LEFT", "RIGHT"):
        raise ValueError(f"BitShift: direction must be 'LEFT' or 'RIGHT', got {direction!r}")
    bits = X.dtype.itemsize * 8
    in_range = (Y >= 0) & (bits > Y)
    amount = np.where(in_range, Y, 0).astype(X.dtype)
    if direction == "LEFT":
        return np.asarray(np.where(in_range, np.left_shift(X, amount), X.dtype.type(0)))
    shifted = np.right_shift(X, amount)  # arithmetic (sign-filling) for signed X
    fill = np.right_shift(X, bits - 1) if X.dtype.kind == "i" else np.zeros_like(X)
    return np.asarray(np.where(in_range, shifted, fill))


def _bitwise(name: str, fn: Callable[..., Any], A: np.ndarray, B: np.ndarray) -> np.ndarray:
    _same_dtype(name, A, B)
    _require_int(name, A)
    return np.asarray(fn(A, B))


@op
def BitwiseAnd_18(A, B):
    return _bitwise("BitwiseAnd", np.bitwise_and, A, B)


@op
def BitwiseOr_18(A, B):
    return _bitwise("BitwiseOr", np.bitwise_or, A, B)


@op
def BitwiseXor_18(A, B):
    return _bitwise("BitwiseXor", np.bitwise_xor, A, B)


@op
def BitwiseNot_18(X):
    _require_int("BitwiseNot", X)
    return np.invert(X)


# ---------------------------------------------------------------- selection


@op
def Where_9(condition, X, Y):
    _require_bool("Where", condition)
    _same_dtype("Where", X, Y)
    return np.where(condition, X, Y)


def _clip(x: np.ndarray, lo: Any, hi: Any) -> np.ndarray:
    # Min(max, Max(x, min)): when min > max every value becomes max. NaN inputs stay NaN.
    with np.errstate(all="ignore"):
        out = x if lo is None else np.maximum(x, lo)
        out = out if hi is None else np.minimum(out, hi)
    return np.array(out, dtype=x.dtype)


@op
def Clip(input, *, consumed_inputs=None, max=None, min=None):
    return Clip_6(input, max=max, min=min)


@op
def Clip_6(input, *, max=None, min=None):
    # The attributes are Python floats; held in x's dtype they clip exactly as ONNX Runtime does.
    _require_float("Clip", input)
    return _clip(input, min, max)


def _clip_bound(name: str, v: np.ndarray | None, x: np.ndarray) -> np.ndarray | None:
    if v is None:
        return None
    if v.size != 1:
        raise ValueError(f"Clip: {name} must be a scalar, got shape {list(v.shape)}")
    if v.dtype != x.dtype:
        raise TypeError(f"Clip: {name} has dtype {v.dtype}, the input {x.dtype}")
    return v.reshape(())


@op
def Clip_11(input, min=None, max=None):
    return _clip(input, _clip_bound("min", min, input), _clip_bound("max", max, input))
