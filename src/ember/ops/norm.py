"""Normalization ops: batch, instance, layer, group, RMS, local-response, Lp and mean-variance.

Statistics are computed in float32 for half-precision inputs and in the input dtype otherwise, or in
float64 in exact mode; variances are two-pass (mean of squared deviations), never E[x^2] - E[x]^2.
BatchNormalization's training mode computes the batch statistics but updates nothing in place.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ember.ops.common import is_float, normalize_axis, work_dtype
from ember.ops.registry import OpContext, op

# TensorProto element types a stash_type attribute may name.
_STASH = {
    1: np.dtype(np.float32),
    10: np.dtype(np.float16),
    11: np.dtype(np.float64),
    16: np.dtype(ml_dtypes.bfloat16),
}


def _stat_dtype(ctx: OpContext | None, *dtypes: np.dtype) -> np.dtype:
    """The dtype to compute statistics in: float64 when exact, else the widest of `dtypes` with
    half floats widened to float32 (NumPy reduces float16 poorly and bfloat16 not at all)."""
    return np.result_type(*(work_dtype(ctx, d) for d in dtypes))


def _float_input(x: np.ndarray, name: str) -> None:
    if not is_float(x.dtype):
        raise TypeError(f"{name} needs a floating-point input, got {x.dtype}")


def _stash(stash_type: int, name: str) -> np.dtype:
    if stash_type not in _STASH:
        raise ValueError(
            f"{name}: stash_type={stash_type} is not a floating-point type "
            f"(expected one of {sorted(_STASH)})"
        )
    return _STASH[stash_type]


def _channel_shape(x: np.ndarray) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel (C,) vector against x (N, C, D1, ..., Dn)."""
    return (-1,) + (1,) * (x.ndim - 2)


def _check_channel_param(p: np.ndarray, c: int, what: str, op_name: str) -> None:
    if p.size != c:
        raise ValueError(f"{op_name}: {what} has {p.size} values, expected one per channel ({c})")


def _check_unidirectional(y: np.ndarray, X: np.ndarray, op_name: str, what: str) -> None:
    if y.shape != X.shape:
        raise ValueError(
            f"{op_name}: {what} must broadcast to X's shape {X.shape} without growing it "
            f"(the result would be {y.shape})"
        )


# --- BatchNormalization --------------------------------------------------------------------------


def _batchnorm(
    X: np.ndarray,
    scale: np.ndarray,
    B: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    epsilon: float,
    ctx: OpContext | None,
    *,
    spatial: bool = True,
) -> np.ndarray:
    """Inference: (X - mean) / sqrt(var + epsilon) * scale + B, parameters per channel."""
    _float_input(X, "BatchNormalization")
    x = X.reshape(X.shape[0], 1) if X.ndim == 1 else X  # a 1-D input is (N,) with C = 1
    dt = _stat_dtype(ctx, X.dtype, scale.dtype, mean.dtype)
    if spatial:
        c = x.shape[1]
        for p, what in ((scale, "scale"), (B, "B"), (mean, "mean"), (var, "var")):
            _check_channel_param(p, c, what, "BatchNormalization")
        shape = _channel_shape(x)
    else:  # spatial=0 (opsets 1-7): one parameter per activation, shaped (C, D1, ..., Dn)
        shape = x.shape[1:]
    s, b, m, v = (p.astype(dt).reshape(shape) for p in (scale, B, mean, var))
    y = (x.astype(dt) - m) * (s / np.sqrt(v + dt.type(epsilon))) + b
    return y.astype(X.dtype).reshape(X.shape)


def _batch_stats(X: np.ndarray, dt: np.dtype, spatial: bool = True):
    """Per-channel mean and population variance of X over every axis but 1. -> (mean, var)."""
    x = X.reshape(X.shape[0], 1) if X.ndim == 1 else X
    axes = (0, *range(2, x.ndim)) if spatial else (0,)
    xw = x.astype(dt)
    mean = xw.mean(axis=axes)
    var = np.square(xw - np.expand_dims(mean, axes)).mean(axis=axes)
    return mean, var


def _batchnorm_train_legacy(X, scale, B, mean, var, epsilon, momentum, spatial, ctx):
    """Opsets 6-9 training: (Y, running mean, running var, saved mean, saved var)."""
    dt = _stat_dtype(ctx, X.dtype, mean.dtype)
    bm, bv = _batch_stats(X, dt, spatial)
    y = _batchnorm(X, scale, B, bm, bv, epsilon, ctx, spatial=spatial)
    m = mean.astype(dt).reshape(bm.shape)
    v = var.astype(dt).reshape(bv.shape)
    running_mean = (m * momentum + bm * (1 - momentum)).astype(mean.dtype).reshape(mean.shape)
    running_var = (v * momentum + bv * (1 - momentum)).astype(var.dtype).reshape(var.shape)
    return y, running_mean, running_var, bm.astype(mean.dtype), bv.astype(var.dtype)


@op
def BatchNormalization(
    X,
    scale,
    B,
    mean,
    var,
    *,
    consumed_inputs=None,
    epsilon=1e-5,
    is_test=0,
    momentum=0.9,
    spatial=1,
    ctx=None,
):
    # consumed_inputs (opset 1) was an in-place hint with no effect on the result.
    return BatchNormalization_6(
        X,
        scale,
        B,
        mean,
        var,
        epsilon=epsilon,
        is_test=is_test,
        momentum=momentum,
        spatial=spatial,
        ctx=ctx,
    )


@op
def BatchNormalization_6(
    X, scale, B, mean, var, *, epsilon=1e-5, is_test=0, momentum=0.9, spatial=1, ctx=None
):
    # NOTE: is_test defaults to 0 (training), yet nearly every exported opset-6 model declares
    # only Y and means inference; so the node's output count decides, as in opsets 7 and 9.
    return BatchNormalization_7(
        X,
        scale,
        B,
        mean,
        var,
        epsilon=epsilon,
        momentum=momentum,
        spatial=spatial,
        ctx=_single_output(ctx) if is_test else ctx,
    )


def _single_output(ctx: OpContext | None) -> OpContext:
    return OpContext(exact=ctx.exact, n_outputs=1, opset=ctx.opset) if ctx else OpContext()


@op
def BatchNormalization_7(
    X, scale, B, mean, var, *, epsilon=1e-5, momentum=0.9, spatial=1, ctx=None
):
    """Opsets 7-8: training mode when the node declares more than one output."""
    if ctx is not None and ctx.n_outputs > 1:
        return _batchnorm_train_legacy(
            X, scale, B, mean, var, epsilon, momentum, bool(spatial), ctx
        )
    return _batchnorm(X, scale, B, mean, var, epsilon, ctx, spatial=bool(spatial))


@op
def BatchNormalization_9(X, scale, B, mean, var, *, epsilon=1e-5, momentum=0.9, ctx=None):
    """Opsets 9-13: spatial only; training mode when the node declares more than one output."""
    return BatchNormalization_7(
        X, scale, B, mean, var, epsilon=epsilon, momentum=momentum, spatial=1, ctx=ctx
    )


@op
def BatchNormalization_14(
    X, scale, B, input_mean, input_var, *, epsilon=1e-5, momentum=0.9, training_mode=0, ctx=None
):
    """Training mode normalizes with the batch statistics and returns (Y, running_mean,
    running_var); inference mode uses input_mean and input_var. Opset 15 only loosens the types
    (scale and the statistics may differ from X's dtype)."""
    if not training_mode:
        return _batchnorm(X, scale, B, input_mean, input_var, epsilon, ctx)
    y, running_mean, running_var, _, _ = _batchnorm_train_legacy(
        X, scale, B, input_mean, input_var, epsilon, momentum, True, ctx
    )
    return y, running_mean, running_var


# --- InstanceNormalization -----------------------------------------------------------------------


@op
def InstanceNormalization(input, scale, B, *, epsilon=1e-5, consumed_inputs=None, ctx=None):
    return InstanceNormalization_6(input, scale, B, epsilon=epsilon, ctx=ctx)


@op
def InstanceNormalization_6(input, scale, B, *, epsilon=1e-5, ctx=None):
    """Normalizes every (n, c) slice over its spatial axes, then scales and shifts per channel."""
    _float_input(input, "InstanceNormalization")
    if input.ndim < 3:
        raise ValueError(
            f"InstanceNormalization needs an (N, C, D1, ...) input, got shape {input.shape}"
        )
    c = input.shape[1]
    _check_channel_param(scale, c, "scale", "InstanceNormalization")
    _check_channel_param(B, c, "B", "InstanceNormalization")
    dt = _stat_dtype(ctx, input.dtype, scale.dtype)
    x = input.astype(dt)  # (N, C, D1, ..., Dn)
    axes = tuple(range(2, x.ndim))
    d = x - x.mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(np.square(d).mean(axis=axes, keepdims=True) + dt.type(epsilon))
    shape = _channel_shape(x)
    y = d * inv_std * scale.astype(dt).reshape(shape) + B.astype(dt).reshape(shape)
    return y.astype(input.dtype)


# --- LayerNormalization / RMSNormalization -------------------------------------------------------


@op
def LayerNormalization_17(X, Scale, B=None, *, axis=-1, epsilon=1e-5, stash_type=1, ctx=None):
    """Normalizes over axes [axis, rank) -> (Y, Mean, InvStdDev); Mean and InvStdDev have the
    stash type and the shape of X with the normalized axes kept as 1.

    Stage one runs in the stash type or wider: a float64 X is never squeezed through float32.

    >>> y, mean, inv_std = LayerNormalization_17(np.array([[1.0, 3.0]]), np.ones(2), epsilon=0.0)
    >>> y, mean, inv_std
    (array([[-1.,  1.]]), array([[2.]], dtype=float32), array([[1.]], dtype=float32))
    """
    _float_input(X, "LayerNormalization")
    u = _stash(stash_type, "LayerNormalization")
    axis = normalize_axis(axis, X.ndim)
    axes = tuple(range(axis, X.ndim))
    dt = _stat_dtype(ctx, X.dtype, u)
    x = X.astype(dt)
    mean = x.mean(axis=axes, keepdims=True)  # (d0, ..., d[axis-1], 1, ..., 1)
    d = x - mean
    inv_std = 1 / np.sqrt(np.square(d).mean(axis=axes, keepdims=True) + dt.type(epsilon))
    normalized = d * inv_std
    if ctx is not None and ctx.exact:
        y = normalized * Scale.astype(dt)
        if B is not None:
            y = y + B.astype(dt)
    else:
        # The second stage runs in X's type, as the spec's function body casts before scaling.
        y = normalized.astype(X.dtype) * Scale
        if B is not None:
            y = y + B
    _check_unidirectional(y, X, "LayerNormalization", "Scale and B")
    y = y.astype(X.dtype)
    if ctx is not None and ctx.n_outputs == 1:
        return y
    return y, mean.astype(u), inv_std.astype(u)


@op
def RMSNormalization_23(X, scale, *, axis=-1, epsilon=1e-5, stash_type=1, ctx=None):
    """X / sqrt(mean(X^2 over axes [axis, rank)) + epsilon) * scale; Y has scale's dtype."""
    _float_input(X, "RMSNormalization")
    u = _stash(stash_type, "RMSNormalization")
    axis = normalize_axis(axis, X.ndim)
    axes = tuple(range(axis, X.ndim))
    dt = _stat_dtype(ctx, X.dtype, u)
    x = X.astype(dt)
    rms = np.sqrt(np.square(x).mean(axis=axes, keepdims=True) + dt.type(epsilon))
    normalized = x / rms
    if ctx is not None and ctx.exact:
        y = normalized * scale.astype(dt)
    else:
        y = normalized.astype(scale.dtype) * scale
    _check_unidirectional(y, X, "RMSNormalization", "scale")
    return y.astype(scale.dtype)


# --- GroupNormalization --------------------------------------------------------------------------


def _group_normalized(X: np.ndarray, num_groups, epsilon: float, dt: np.dtype) -> np.ndarray:
    """X normalized per (instance, group of channels), in dtype `dt`, shape (N, G, C/G, D...)."""
    if num_groups is None:
        raise ValueError("GroupNormalization needs the num_groups attribute")
    if X.ndim < 2:
        raise ValueError(f"GroupNormalization needs an (N, C, ...) input, got shape {X.shape}")
    N, C = X.shape[:2]
    if num_groups <= 0 or C % num_groups:
        raise ValueError(
            f"GroupNormalization: num_groups={num_groups} does not divide the {C} channels"
        )
    x = X.astype(dt).reshape(N, num_groups, C // num_groups, *X.shape[2:])
    axes = tuple(range(2, x.ndim))
    d = x - x.mean(axis=axes, keepdims=True)
    return d / np.sqrt(np.square(d).mean(axis=axes, keepdims=True) + dt.type(epsilon))


@op
def GroupNormalization_18(X, scale, bias, *, epsilon=1e-5, num_groups=None, ctx=None):
    """Opset 18: scale and bias hold one value per group."""
    _float_input(X, "GroupNormalization")
    dt = _stat_dtype(ctx, X.dtype, scale.dtype)
    normalized = _group_normalized(X, num_groups, epsilon, dt)  # (N, G, C/G, D...)
    for p, what in ((scale, "scale"), (bias, "bias")):
        if p.size != num_groups:
            raise ValueError(
                f"GroupNormalization (opset 18): {what} has {p.size} values, expected one per "
                f"group ({num_groups}); opset 21 takes one per channel"
            )
    shape = (-1,) + (1,) * (normalized.ndim - 2)  # (G, 1, 1, ...)
    y = normalized * scale.astype(dt).reshape(shape) + bias.astype(dt).reshape(shape)
    return y.reshape(X.shape).astype(X.dtype)


@op
def GroupNormalization_21(X, scale, bias, *, epsilon=1e-5, num_groups=None, stash_type=1, ctx=None):
    """Opset 21: scale and bias hold one value per channel; stage one runs in the stash type
    (or wider); the scale and shift run in X's type."""
    _float_input(X, "GroupNormalization")
    u = _stash(stash_type, "GroupNormalization")
    dt = _stat_dtype(ctx, X.dtype, u)
    normalized = _group_normalized(X, num_groups, epsilon, dt).reshape(X.shape)  # (N, C, D...)
    c = X.shape[1]
    _check_channel_param(scale, c, "scale", "GroupNormalization")
    _check_channel_param(bias, c, "bias", "GroupNormalization")
    shape = _channel_shape(X)
    if ctx is not None and ctx.exact:
        y = normalized * scale.astype(dt).reshape(shape) + bias.astype(dt).reshape(shape)
    else:
        y = normalized.astype(X.dtype) * scale.reshape(shape) + bias.reshape(shape)
    return y.astype(X.dtype)


# --- LRN, LpNormalization, MeanVarianceNormalization ---------------------------------------------


@op
def LRN(X, *, alpha=1e-4, beta=0.75, bias=1.0, size=None, ctx=None):
    """X / (bias + alpha/size * sum of squares over a window of `size` channels) ** beta.

    The window around channel c spans [c - floor((size-1)/2), c + ceil((size-1)/2)]. Opset 13 only
    adds bfloat16.
    """
    _float_input(X, "LRN")
    if size is None:
        raise ValueError("LRN needs the size attribute")
    if size < 1:
        raise ValueError(f"LRN: size must be >= 1, got {size}")
    if X.ndim < 2:
        raise ValueError(f"LRN needs an (N, C, ...) input, got shape {X.shape}")
    dt = _stat_dtype(ctx, X.dtype)
    sq = np.square(X.astype(dt))  # (N, C, ...)
    C = X.shape[1]
    lo = (size - 1) // 2
    hi = size - 1 - lo
    padded = np.pad(sq, [(0, 0), (lo, hi)] + [(0, 0)] * (X.ndim - 2))
    square_sum = np.zeros_like(sq)
    for k in range(size):  # one shifted window tap per step: size is small
        square_sum += padded[:, k : k + C]
    y = X.astype(dt) / (dt.type(bias) + dt.type(alpha / size) * square_sum) ** dt.type(beta)
    return y.astype(X.dtype)


@op
def LpNormalization(input, *, axis=-1, p=2, ctx=None):
    """input / ||input||_p along `axis` (p is 1 or 2); an all-zero slice stays zero."""
    _float_input(input, "LpNormalization")
    if p not in (1, 2):
        raise ValueError(f"LpNormalization: p must be 1 or 2, got {p}")
    axis = normalize_axis(axis, input.ndim)
    dt = _stat_dtype(ctx, input.dtype)
    x = input.astype(dt)
    # Divide by the slice's largest |x| first: squaring tiny (or huge) values would underflow
    # (overflow) and lose the norm, while x / max|x| is in [-1, 1].
    scale = np.abs(x).max(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.where(scale == 0, dt.type(0), x / scale)
        norm = (
            np.abs(u).sum(axis=axis, keepdims=True)
            if p == 1
            else np.sqrt(np.square(u).sum(axis=axis, keepdims=True))
        )
        y = np.where(norm == 0, dt.type(0), u / norm)
    return y.astype(input.dtype)


@op
def MeanVarianceNormalization_9(X, *, axes=(0, 2, 3), ctx=None):
    """(X - mean) / (std + 1e-9) over `axes`, std the population standard deviation.

    Opset 13 only adds bfloat16.
    """
    _float_input(X, "MeanVarianceNormalization")
    red = tuple(sorted({normalize_axis(a, X.ndim, name="axes") for a in axes}))
    if len(red) != len(axes):
        raise ValueError(f"MeanVarianceNormalization: axes {list(axes)} repeat an axis")
    dt = _stat_dtype(ctx, X.dtype)
    x = X.astype(dt)
    d = x - x.mean(axis=red, keepdims=True)
    std = np.sqrt(np.square(d).mean(axis=red, keepdims=True))
    return (d / (std + dt.type(1e-9))).astype(X.dtype)
