"""Activation ops: elementwise nonlinearities, and Softmax/LogSoftmax/Hardmax along an axis.

Every formula is written to stay finite where the math is finite (sigmoid, softplus, log-softmax for
large |x|). float16/bfloat16 inputs are computed in float32 and rounded once at the end. Only the
softmax family accumulates, so only it reads exact mode.
"""

from __future__ import annotations

import math

import numpy as np

from ember.ops.common import is_float, normalize_axis, work_dtype
from ember.ops.registry import OpContext, op
from ember.ops.special import erfc


def _work(x: np.ndarray) -> np.ndarray:
    """`x` in the dtype to compute with: half floats widen to float32 (NumPy has no accurate
    half-precision exp/log, and ml_dtypes' bfloat16 has none), everything else stays."""
    return x.astype(work_dtype(None, x.dtype), copy=False)


def _float_input(x: np.ndarray, name: str) -> None:
    if not is_float(x.dtype):
        raise TypeError(f"{name} needs a floating-point input, got {x.dtype}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive number never overflows: pick the form whose exponent is -|x|.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _softplus(x: np.ndarray) -> np.ndarray:
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow for large x, no underflow to 0 early.
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


_SQRT_PI = math.sqrt(math.pi)


# --- ReLU family ---------------------------------------------------------------------------------


@op
def Relu(X, *, consumed_inputs=None):
    # consumed_inputs (opset 1) was an in-place hint with no effect on the result.
    return Relu_6(X)


@op
def Relu_6(X):
    # Opset 14 only widens the types (signed ints); the same formula serves every version.
    return np.maximum(X, X.dtype.type(0))


@op
def LeakyRelu(X, *, alpha=0.01, consumed_inputs=None):
    return LeakyRelu_6(X, alpha=alpha)


@op
def LeakyRelu_6(X, *, alpha=0.01):
    _float_input(X, "LeakyRelu")
    x = _work(X)
    return np.where(x < 0, x * alpha, x).astype(X.dtype)


@op
def PRelu(X, slope, *, consumed_inputs=None):
    return PRelu_6(X, slope)


@op
def PRelu_6(X, slope):
    """Before opset 7: `slope` is one value, one per channel (axis 1), or the shape of X."""
    if slope.size == 1:
        s = slope.reshape(())
    elif slope.ndim == 1 and X.ndim >= 2 and slope.shape[0] == X.shape[1]:
        s = slope.reshape((-1,) + (1,) * (X.ndim - 2))  # (C, 1, ..., 1)
    else:
        return PRelu_7(X, slope)
    return np.where(X < 0, X * s, X).astype(X.dtype)


@op
def PRelu_7(X, slope):
    # Opsets 9 and 16 only add types (integers, bfloat16).
    try:
        fits = np.broadcast_shapes(X.shape, slope.shape) == X.shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"PRelu: slope of shape {slope.shape} is not unidirectionally broadcastable to "
            f"X of shape {X.shape}"
        )
    x, s = _work(X), _work(slope)
    return np.where(x < 0, x * s, x).astype(X.dtype)


@op
def ThresholdedRelu_10(X, *, alpha=1.0):
    _float_input(X, "ThresholdedRelu")
    return np.where(alpha < X, X, 0).astype(X.dtype)


# --- exponential-linear family -------------------------------------------------------------------


def _elu(x: np.ndarray, alpha: float) -> np.ndarray:
    # expm1 of min(x, 0): accurate near 0 and never overflows on the branch that is discarded.
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


@op
def Elu(X, *, alpha=1.0, consumed_inputs=None):
    return Elu_6(X, alpha=alpha)


@op
def Elu_6(X, *, alpha=1.0):
    _float_input(X, "Elu")
    return _elu(_work(X), alpha).astype(X.dtype)


@op
def Selu(X, *, alpha=1.6732, gamma=1.0507, consumed_inputs=None):
    # Opset 1 had 4-digit defaults; opset 6 gave the exact constants.
    return Selu_6(X, alpha=alpha, gamma=gamma)


@op
def Selu_6(X, *, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    _float_input(X, "Selu")
    return (gamma * _elu(_work(X), alpha)).astype(X.dtype)


@op
def Celu_12(X, *, alpha=1.0):
    _float_input(X, "Celu")
    if alpha == 0:
        raise ValueError("Celu: alpha must be non-zero (the formula divides by it)")
    x = _work(X)
    return (np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(np.minimum(x, 0) / alpha))).astype(
        X.dtype
    )


# --- sigmoid family ------------------------------------------------------------------------------


@op
def Sigmoid(X, *, consumed_inputs=None):
    return Sigmoid_6(X)


@op
def Sigmoid_6(X):
    _float_input(X, "Sigmoid")
    return _sigmoid(_work(X)).astype(X.dtype)


@op
def HardSigmoid(X, *, alpha=0.2, beta=0.5, consumed_inputs=None):
    return HardSigmoid_6(X, alpha=alpha, beta=beta)


@op
def HardSigmoid_6(X, *, alpha=0.2, beta=0.5):
    _float_input(X, "HardSigmoid")
    x = _work(X)
    return np.clip(alpha * x + beta, 0, 1).astype(X.dtype)


@op
def HardSwish_14(X):
    _float_input(X, "HardSwish")
    x = _work(X)
    return (x * np.clip(x / 6 + 0.5, 0, 1)).astype(X.dtype)


@op
def Swish_24(X, *, alpha=1.0):
    _float_input(X, "Swish")
    x = _work(X)
    return (x * _sigmoid(alpha * x)).astype(X.dtype)


@op
def SwiGLU_28(A, B, *, alpha=1.0):
    """Swish_alpha(A) * B; A and B must have the same shape (no broadcasting)."""
    _float_input(A, "SwiGLU")
    if A.shape != B.shape:
        raise ValueError(
            f"SwiGLU: A and B must have the same shape (no broadcasting), got {A.shape} and "
            f"{B.shape}"
        )
    if A.dtype != B.dtype:
        raise TypeError(f"SwiGLU: A and B must have the same dtype, got {A.dtype} and {B.dtype}")
    a, b = _work(A), _work(B)
    return (a * _sigmoid(alpha * a) * b).astype(A.dtype)


# --- tanh family ---------------------------------------------------------------------------------


@op
def Tanh(input, *, consumed_inputs=None):
    return Tanh_6(input)


@op
def Tanh_6(input):
    _float_input(input, "Tanh")
    return np.tanh(_work(input)).astype(input.dtype)


@op
def Softplus(X):
    _float_input(X, "Softplus")
    return _softplus(_work(X)).astype(X.dtype)


@op
def Softsign(input):
    _float_input(input, "Softsign")
    x = _work(input)
    return (x / (1 + np.abs(x))).astype(input.dtype)


@op
def Mish_18(X):
    _float_input(X, "Mish")
    x = _work(X)
    return (x * np.tanh(_softplus(x))).astype(X.dtype)


@op
def Gelu_20(X, *, approximate="none"):
    """0.5 x (1 + erf(x / sqrt 2)), or its tanh approximation.

    >>> Gelu_20(np.array([-40.0, 0.0, 1.0])).round(6)
    array([-0.      ,  0.      ,  0.841345])
    """
    _float_input(X, "Gelu")
    x = _work(X)
    if approximate == "none":
        # 0.5 x (1 + erf(x/sqrt2)) written as 0.5 x erfc(-x/sqrt2): no cancellation for x << 0.
        y = 0.5 * x.astype(np.float64) * erfc(-x.astype(np.float64) / math.sqrt(2.0))
    elif approximate == "tanh":
        y = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    else:
        raise ValueError(f"Gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return y.astype(X.dtype)


@op
def Shrink_9(input, *, bias=0.0, lambd=0.5):
    x = _work(input)
    if x.dtype.kind in "iu":
        x = x.astype(np.float64)  # x - bias must not wrap around before the comparison picks it
    y = np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0))
    return y.astype(input.dtype)


# --- softmax family ------------------------------------------------------------------------------


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - np.where(np.isfinite(m), m, 0))  # a row of -inf stays nan-free until the divide
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    # x - max - log(sum(exp(x - max))): every exponent is <= 0, so nothing overflows.
    m = np.max(x, axis=axis, keepdims=True)
    d = x - np.where(np.isfinite(m), m, 0)
    return d - np.log(np.sum(np.exp(d), axis=axis, keepdims=True))


def _hardmax(x: np.ndarray, axis: int) -> np.ndarray:
    y = np.zeros_like(x)
    if x.size:
        first = np.expand_dims(np.argmax(x, axis=axis), axis)  # ties: the first maximum wins
        np.put_along_axis(y, first, 1, axis=axis)
    return y


def _compute(x: np.ndarray, ctx: OpContext | None) -> np.ndarray:
    if ctx is not None and ctx.exact and is_float(x.dtype):
        return x.astype(np.float64)
    return _work(x)


def _along_axis(fn, x: np.ndarray, axis: int, ctx: OpContext | None) -> np.ndarray:
    """Opset 13+: `fn` along the single axis `axis`."""
    axis = normalize_axis(axis, x.ndim)
    if x.size == 0:
        return x.copy()
    return fn(_compute(x, ctx), axis).astype(x.dtype)


def _coerced_2d(fn, x: np.ndarray, axis: int, ctx: OpContext | None) -> np.ndarray:
    """Opsets 1-12: view x as (prod(shape[:axis]), prod(shape[axis:])) and apply `fn` per row."""
    axis = normalize_axis(axis, x.ndim)
    if x.size == 0:
        return x.copy()
    x2 = _compute(x, ctx).reshape(math.prod(x.shape[:axis]), -1)  # (N, D)
    return fn(x2, 1).reshape(x.shape).astype(x.dtype)


@op
def Softmax(input, *, axis=1, ctx=None):
    _float_input(input, "Softmax")
    return _coerced_2d(_softmax, input, axis, ctx)


@op
def Softmax_13(input, *, axis=-1, ctx=None):
    """exp(x) / sum(exp(x)) along `axis`, shifted by the max so large inputs cannot overflow.

    >>> Softmax_13(np.array([1000.0, 1000.0, -np.inf]))
    array([0.5, 0.5, 0. ])
    """
    _float_input(input, "Softmax")
    return _along_axis(_softmax, input, axis, ctx)


@op
def LogSoftmax(input, *, axis=1, ctx=None):
    _float_input(input, "LogSoftmax")
    return _coerced_2d(_log_softmax, input, axis, ctx)


@op
def LogSoftmax_13(input, *, axis=-1, ctx=None):
    _float_input(input, "LogSoftmax")
    return _along_axis(_log_softmax, input, axis, ctx)


@op
def Hardmax(input, *, axis=1):
    return _coerced_2d(_hardmax, input, axis, None)


@op
def Hardmax_13(input, *, axis=-1):
    return _along_axis(_hardmax, input, axis, None)
