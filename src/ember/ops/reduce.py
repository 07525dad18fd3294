"""Reductions (Reduce*, ArgMax/ArgMin), TopK and cumulative sums and products.

Sums, means, norms and products accumulate in float64 in exact mode and in float32 for 16-bit
floats otherwise; outputs keep the input dtype. A reduction over an empty set gives the identity
of the reduction (0 for sums, 1 for products, -inf for max and log-sums, +inf for min).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ember.ops.common import as_int_list, is_float, normalize_axis, work_arrays
from ember.ops.registry import OpContext, op


def _reduce_axes(data: np.ndarray, axes: Any, noop_with_empty_axes: int) -> tuple[int, ...]:
    """Normalized axes to reduce; () when nothing is reduced (noop_with_empty_axes)."""
    axes = None if axes is None else as_int_list(axes)
    if not axes:
        return () if noop_with_empty_axes else tuple(range(data.ndim))
    norm = tuple(normalize_axis(a, data.ndim, name="axes") for a in axes)
    if len(set(norm)) != len(norm):
        raise ValueError(f"axes {axes} repeat an axis")
    return tuple(sorted(norm))


def _reduced_shape(shape: tuple[int, ...], axes: tuple[int, ...], keepdims: int) -> tuple[int, ...]:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _sum(x, axes, kd):
    return np.sum(x, axis=axes, keepdims=kd)


def _mean(x, axes, kd):
    # sum / count rather than np.mean: an empty set gives NaN without a warning.
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    total = np.sum(x, axis=axes, keepdims=kd, dtype=None if is_float(x.dtype) else np.float64)
    return total / np.asarray(count, dtype=total.dtype)


def _prod(x, axes, kd):
    return np.prod(x, axis=axes, keepdims=kd)


def _l1(x, axes, kd):
    return np.sum(np.abs(x), axis=axes, keepdims=kd)


def _l2(x, axes, kd):
    return np.sqrt(np.sum(np.square(x), axis=axes, keepdims=kd))


def _sum_square(x, axes, kd):
    return np.sum(np.square(x), axis=axes, keepdims=kd)


def _log_sum(x, axes, kd):
    return np.log(np.sum(x, axis=axes, keepdims=kd))


def _log_sum_exp(x, axes, kd):
    # Shift by the max so exp never overflows; an infinite max (all -inf, or some +inf) is not a
    # usable shift, and 0 gives the right limit there (log 0 = -inf, log inf = inf).
    m = (
        np.max(x, axis=axes, keepdims=True, initial=-np.inf)
        if x.size
        else np.zeros(_reduced_shape(x.shape, axes, 1), x.dtype)
    )
    m = np.where(np.isfinite(m), m, 0).astype(x.dtype, copy=False)
    s = np.sum(np.exp(x - m), axis=axes, keepdims=True)
    out = np.log(s) + m
    return out if kd else out.reshape(_reduced_shape(x.shape, axes, 0))


_KERNELS: dict[str, Callable[..., np.ndarray]] = {
    "ReduceSum": _sum,
    "ReduceMean": _mean,
    "ReduceProd": _prod,
    "ReduceL1": _l1,
    "ReduceL2": _l2,
    "ReduceSumSquare": _sum_square,
    "ReduceLogSum": _log_sum,
    "ReduceLogSumExp": _log_sum_exp,
}


def _reduce(op_type: str, data, axes, keepdims, noop, ctx) -> np.ndarray:
    ax = _reduce_axes(data, axes, noop)
    (w,) = work_arrays(ctx, data)
    # Integer inputs (allowed before opset 28 for the log reductions) go through float64.
    if op_type in ("ReduceLogSum", "ReduceLogSumExp", "ReduceL2") and not is_float(w.dtype):
        w = w.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = _KERNELS[op_type](w, ax, bool(keepdims))
    return np.asarray(out).astype(data.dtype, copy=False)


def _extreme(data: np.ndarray, axes, keepdims, noop, largest: bool) -> np.ndarray:
    ax = _reduce_axes(data, axes, noop)
    if data.size == 0 and ax:
        # The identity of max/min: the lowest (highest) value the dtype holds.
        if data.dtype == np.bool_:
            fill: Any = not largest
        elif data.dtype.kind in "iu":
            info = np.iinfo(data.dtype)
            fill = info.min if largest else info.max
        else:
            fill = -np.inf if largest else np.inf
        return np.full(_reduced_shape(data.shape, ax, keepdims), fill, dtype=data.dtype)
    fn = np.max if largest else np.min
    return np.asarray(fn(data, axis=ax, keepdims=bool(keepdims))).astype(data.dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# Reduce*: opset 1 (axes attribute), and axes as an input from 13 (ReduceSum) or 18 (the others)


@op
def ReduceSum(data, *, axes=None, keepdims=1, ctx: OpContext):
    return _reduce("ReduceSum", data, axes, keepdims, 0, ctx)


@op
def ReduceSum_13(data, axes=None, *, keepdims=1, noop_with_empty_axes=0, ctx: OpContext):
    return _reduce("ReduceSum", data, axes, keepdims, noop_with_empty_axes, ctx)


@op
def ReduceMean(data, *, axes=None, keepdims=1, ctx: OpContext):
    return _reduce("ReduceMean", data, axes, keepdims, 0, ctx)


@op
def ReduceMean_18(data, axes=None, *, keepdims=1, noop_with_empty_axes=0, ctx: OpContext):
    return _reduce("ReduceMean", data, axes, keepdims, noop_with_empty_axes, ctx)


@op
def ReduceProd(data, *, axes=None, keepdims=1, ctx: OpContext):
    return _reduce("ReduceProd", data, axes, keepdims, 0, ctx)


@op
def ReduceProd_18(data, axes=None, *, keepdims=1, noop_with_empty_axes=0, ctx: OpContext):
    return _reduce("ReduceProd", data, axes, keepdims, noop_with_empty_axes, ctx)


@op
def ReduceL1(data, *, axes=None, keepdims=1, ctx: OpContext):
    return _reduce("ReduceL1", data, axes, keepdims, 0, ctx)


@op
def ReduceL1_18(data, axes=None, *, keepdims=1, noop_with_empty_axes=0, ctx: OpContext):
    return _reduce("ReduceL1", data, axes, keepdims, noop_with_empty_axes, ctx)


@op
def ReduceL2(data, *, axes=None, keepdims=1, ctx: OpContext):
    return _reduce("ReduceL2", data, axes, keepdims, 0, ctx)


@op
def ReduceL2_18(data, axes=None, *, keepdims=1, noop_with_empty_axes=0, ctx: OpContext):
    return _reduce("ReduceL2", data, axes, keepdims, noop_with_empty_axes, ctx)


@op
def ReduceSumSquare(data, *, axes=None, keepdims=1, ctx: OpContext):
    return _reduce("ReduceSumSquare", data, axes, keepdims, 0, ctx)


@op
def ReduceSumSquare_18(data, axes=None, *, keepdims=1, noop_with_empty_axes=0, ctx: OpContext):
    return _reduce("ReduceSumSquare", data, axes, keepdims, noop_with_empty_axes, ctx)


@op
def ReduceLogSum(data, *, axes=None, keepdims=1, ctx: OpContext):
    return _reduce("ReduceLogSum", data, axes, keepdims, 0, ctx)


@op
def ReduceLogSum_18(data, axes=None, *, keepdims=1, noop_with_empty_axes=0, ctx: OpContext):
    return _reduce("ReduceLogSum", data, axes, keepdims, noop_with_empty_axes, ctx)


@op
def ReduceLogSumExp(data, *, axes=None, keepdims=1, ctx: OpContext):
    return _reduce("ReduceLogSumExp", data, axes, keepdims, 0, ctx)


@op
def ReduceLogSumExp_18(data, axes=None, *, keepdims=1, noop_with_empty_axes=0, ctx: OpContext):
    return _reduce("ReduceLogSumExp", data, axes, keepdims, noop_with_empty_axes, ctx)


@op
def ReduceMax(data, *, axes=None, keepdims=1):
    return _extreme(data, axes, keepdims, 0, largest=True)


@op
def ReduceMax_18(data, axes=None, *, keepdims=1, noop_with_empty_axes=0):
    return _extreme(data, axes, keepdims, noop_with_empty_axes, largest=True)


@op
def ReduceMin(data, *, axes=None, keepdims=1):
    return _extreme(data, axes, keepdims, 0, largest=False)


@op
def ReduceMin_18(data, axes=None, *, keepdims=1, noop_with_empty_axes=0):
    return _extreme(data, axes, keepdims, noop_with_empty_axes, largest=False)


# ---------------------------------------------------------------------------------------------
# ArgMax / ArgMin (select_last_index since opset 12)


def _arg(op_type: str, fn, data: np.ndarray, axis: int, keepdims: int, select_last_index: int):
    a = normalize_axis(axis, data.ndim)
    n = data.shape[a] if data.ndim else 1
    if n == 0:
        raise ValueError(f"{op_type}: axis {axis} has size 0; there is no element to pick")
    if data.ndim == 0:
        return np.zeros((), dtype=np.int64)
    if select_last_index:
        # The first hit in the reversed axis is the last hit in the original one.
        idx = n - 1 - fn(np.flip(data, a), axis=a, keepdims=bool(keepdims))
    else:
        idx = fn(data, axis=a, keepdims=bool(keepdims))
    return np.asarray(idx, dtype=np.int64)


@op
def ArgMax(data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg("ArgMax", np.argmax, data, axis, keepdims, select_last_index)


@op
def ArgMin(data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg("ArgMin", np.argmin, data, axis, keepdims, select_last_index)


# ---------------------------------------------------------------------------------------------
# TopK


def _top_k(X: np.ndarray, k: int, axis: int, largest: int) -> tuple[np.ndarray, np.ndarray]:
    if X.ndim == 0:
        raise ValueError("TopK: input must have rank >= 1")
    a = normalize_axis(axis, X.ndim)
    n = X.shape[a]
    if not 0 <= k <= n:
        raise ValueError(f"TopK: k={k} is out of range for axis {axis} of size {n}")
    if largest:
        # A stable ascending sort of the reversed axis, read backwards, is descending with ties
        # in increasing index order.
        order = np.flip(np.argsort(np.flip(X, a), axis=a, kind="stable"), a)
        order = n - 1 - order
    else:
        order = np.argsort(X, axis=a, kind="stable")
    idx = np.take(order, np.arange(k), axis=a)
    return np.take_along_axis(X, idx, axis=a), idx.astype(np.int64, copy=False)


def _k_value(K: Any) -> int:
    k = np.asarray(K).reshape(-1)
    if k.size != 1:
        raise ValueError(f"TopK: K must hold one value, got {k.size}")
    return int(k[0])


@op
def TopK(X, *, k, axis=-1):
    return _top_k(X, k, axis, 1)


@op
def TopK_10(X, K, *, axis=-1):
    return _top_k(X, _k_value(K), axis, 1)


@op
def TopK_11(X, K, *, axis=-1, largest=1, sorted=1):
    """The k largest (smallest) values along `axis` and their indices; ties go to the lower index.

    >>> values, indices = TopK_11(np.array([1, 3, 3, 2]), np.array([2]))
    >>> values.tolist(), indices.tolist()
    ([3, 3], [1, 2])
    """
    # sorted=0 leaves the order unspecified, so a sorted result is conformant.
    return _top_k(X, _k_value(K), axis, largest)


# ---------------------------------------------------------------------------------------------
# CumSum / CumProd


def _cumulative(op_type, fn, identity, x, axis, exclusive, reverse, ctx) -> np.ndarray:
    ax = np.asarray(axis).reshape(-1)
    if ax.size != 1:
        raise ValueError(f"{op_type}: axis must be a scalar, got {ax.size} values")
    a = normalize_axis(int(ax[0]), x.ndim)
    if x.shape[a] == 0:
        return x.copy()
    (w,) = work_arrays(ctx, x)
    if reverse:
        w = np.flip(w, a)
    out = fn(w, axis=a, dtype=w.dtype)
    if exclusive:
        # Element j is the result over the first j-1 elements: shift by one, identity first.
        first = np.full_like(np.take(out, [0], axis=a), identity)
        out = np.concatenate([first, np.take(out, np.arange(x.shape[a] - 1), axis=a)], axis=a)
    if reverse:
        out = np.flip(out, a)
    return out.astype(x.dtype, copy=False)


@op
def CumSum_11(x, axis, *, exclusive=0, reverse=0, ctx: OpContext):
    return _cumulative("CumSum", np.cumsum, 0, x, axis, exclusive, reverse, ctx)


@op
def CumProd_26(x, axis, *, exclusive=0, reverse=0, ctx: OpContext):
    return _cumulative("CumProd", np.cumprod, 1, x, axis, exclusive, reverse, ctx)
