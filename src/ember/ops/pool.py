"""Pooling ops: MaxPool, AveragePool, LpPool, their Global forms, MaxUnpool and MaxRoiPool.

Windowed pools reduce the strided window view of conv.py (`extract_windows`) along its kernel axes;
the window arithmetic (auto_pad, pads, ceil_mode) is conv.py's `window_geometry`.
"""

from __future__ import annotations

import math

import numpy as np

from ember.ops.common import as_int_list, work_arrays
from ember.ops.conv import Window, extract_windows, window_geometry
from ember.ops.registry import op


def _window(x: np.ndarray, kernel_shape, **kw) -> Window:
    if x.ndim < 3:
        raise ValueError(f"X must have rank >= 3 (N, C, spatial...), got shape {x.shape}")
    if kernel_shape is None:
        raise ValueError("kernel_shape is required")
    return window_geometry(x.shape[2:], tuple(kernel_shape), **kw)


def _window_sum(x: np.ndarray, win: Window, fn=None) -> np.ndarray:
    """Sum of fn(tap) over each window (padding reads 0), one strided slice per kernel tap."""
    v = extract_windows(x, win, 0)
    total = np.zeros(v.shape[: x.ndim], dtype=x.dtype)
    for tap in np.ndindex(*win.kernel):  # a loop over kernel taps
        t = v[(..., *tap)]
        total += fn(t) if fn is not None else t
    return total


def _tap_counts(win: Window, in_shape: tuple[int, ...], count_pad: bool) -> np.ndarray:
    """Per output position, how many taps read the input (or the explicit padding if count_pad).

    Separable: the count is a product of one count per axis. Taps past the explicit end padding
    (added by ceil_mode) never count.
    """
    counts = np.ones((), dtype=np.int64)
    for i, n in enumerate(in_shape):
        pos = (
            np.arange(win.out_shape[i])[:, None] * win.strides[i]
            - win.pads_begin[i]
            + np.arange(win.kernel[i])[None, :] * win.dilations[i]
        )  # (O_i, K_i)
        lo, hi = (-win.pads_begin[i], n + win.pads_end[i]) if count_pad else (0, n)
        c = ((pos >= lo) & (pos < hi)).sum(axis=1)
        counts = np.multiply.outer(counts, c)
    return counts


# ----------------------------------------------------------------------------------------------
# MaxPool
# ----------------------------------------------------------------------------------------------


def _lowest(dtype: np.dtype):
    """The padding value of MaxPool: it never wins against a real input value."""
    if dtype.kind in "iu":
        return np.iinfo(dtype).min
    return False if dtype.kind == "b" else -np.inf  # floats, ml_dtypes bfloat16/float8


def _max_pool(X, win: Window, *, storage_order: int, want_indices: bool):
    if storage_order not in (0, 1):
        raise ValueError(f"storage_order={storage_order} must be 0 (row major) or 1 (column major)")
    v = extract_windows(X, win, _lowest(X.dtype))  # (N, C, *O, *K)
    taps = list(np.ndindex(*win.kernel))
    y = v[(..., *taps[0])].copy()
    arg = np.zeros(y.shape, dtype=np.int64)  # the first maximum in row-major tap order
    for j, tap in enumerate(taps[1:], start=1):  # a loop over kernel taps
        t = v[(..., *tap)]
        if not want_indices:
            np.maximum(y, t, out=y)
            continue
        better = t > y
        if X.dtype.kind == "f":
            better |= np.isnan(t)  # NaN wins, as in np.maximum
        arg[better] = j
        np.copyto(y, t, where=better)
    if not want_indices:
        return y
    N, C, *S = X.shape
    nd = len(S)
    tap_pos = np.unravel_index(arg, win.kernel)  # per axis: (N, C, *O) tap coordinate
    # Input coordinate of the maximum along each spatial axis, then the flat index into X.
    # NOTE: storage_order=1 flattens the spatial axes column-major; N and C stay outermost.
    flat = np.zeros(arg.shape, dtype=np.int64)
    inside = np.ones(arg.shape, dtype=bool)
    strides_sp = np.cumprod([1, *S[:-1]]) if storage_order else np.cumprod([1, *S[::-1]])[:-1][::-1]
    for i in range(nd):
        o = np.arange(win.out_shape[i]).reshape((-1,) + (1,) * (nd - 1 - i))
        coord = o * win.strides[i] - win.pads_begin[i] + tap_pos[i] * win.dilations[i]
        inside &= (coord >= 0) & (coord < S[i])
        flat += coord * int(strides_sp[i])
    plane = math.prod(S)
    nc = (np.arange(N)[:, None] * C + np.arange(C)[None, :]) * plane
    flat += nc.reshape(N, C, *([1] * nd))
    # A window entirely in the padding (pads >= kernel) has no maximum in X: index -1.
    return y, np.where(inside, flat, -1)


@op
def MaxPool(X, *, auto_pad="NOTSET", kernel_shape=None, pads=None, strides=None):
    win = _window(X, kernel_shape, strides=strides, pads=pads, auto_pad=auto_pad)
    return _max_pool(X, win, storage_order=0, want_indices=False)


@op
def MaxPool_8(
    X, *, auto_pad="NOTSET", kernel_shape=None, pads=None, storage_order=0, strides=None, ctx=None
):
    win = _window(X, kernel_shape, strides=strides, pads=pads, auto_pad=auto_pad)
    return _max_pool(
        X, win, storage_order=storage_order, want_indices=ctx is not None and ctx.n_outputs > 1
    )


@op
def MaxPool_10(
    X,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    dilations=None,
    kernel_shape=None,
    pads=None,
    storage_order=0,
    strides=None,
    ctx=None,
):
    win = _window(
        X,
        kernel_shape,
        strides=strides,
        dilations=dilations,
        pads=pads,
        auto_pad=auto_pad,
        ceil_mode=ceil_mode,
    )
    return _max_pool(
        X, win, storage_order=storage_order, want_indices=ctx is not None and ctx.n_outputs > 1
    )


# ----------------------------------------------------------------------------------------------
# AveragePool and LpPool
# ----------------------------------------------------------------------------------------------


def _avg_pool(X, win: Window, count_include_pad: int, ctx) -> np.ndarray:
    (x,) = work_arrays(ctx, X)
    total = _window_sum(x, win)  # (N, C, *O)
    counts = _tap_counts(win, X.shape[2:], bool(count_include_pad))
    return (total / counts).astype(X.dtype, copy=False)


@op
def AveragePool(X, *, auto_pad="NOTSET", kernel_shape=None, pads=None, strides=None, ctx=None):
    win = _window(X, kernel_shape, strides=strides, pads=pads, auto_pad=auto_pad)
    return _avg_pool(X, win, 0, ctx)


@op
def AveragePool_7(
    X,
    *,
    auto_pad="NOTSET",
    count_include_pad=0,
    kernel_shape=None,
    pads=None,
    strides=None,
    ctx=None,
):
    win = _window(X, kernel_shape, strides=strides, pads=pads, auto_pad=auto_pad)
    return _avg_pool(X, win, count_include_pad, ctx)


@op
def AveragePool_10(
    X,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    count_include_pad=0,
    kernel_shape=None,
    pads=None,
    strides=None,
    ctx=None,
):
    win = _window(
        X, kernel_shape, strides=strides, pads=pads, auto_pad=auto_pad, ceil_mode=ceil_mode
    )
    return _avg_pool(X, win, count_include_pad, ctx)


@op
def AveragePool_19(
    X,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    count_include_pad=0,
    dilations=None,
    kernel_shape=None,
    pads=None,
    strides=None,
    ctx=None,
):
    win = _window(
        X,
        kernel_shape,
        strides=strides,
        dilations=dilations,
        pads=pads,
        auto_pad=auto_pad,
        ceil_mode=ceil_mode,
    )
    return _avg_pool(X, win, count_include_pad, ctx)


def _lp_pool(X, win: Window, p, ctx) -> np.ndarray:
    # Padding contributes zeros to the sum: the Lp norm of the window's input values.
    (x,) = work_arrays(ctx, X)
    total = _window_sum(x, win, lambda t: np.abs(t) ** p)
    return (total ** (1.0 / p)).astype(X.dtype, copy=False)


@op
def LpPool(X, *, auto_pad="NOTSET", kernel_shape=None, p=2, pads=None, strides=None, ctx=None):
    win = _window(X, kernel_shape, strides=strides, pads=pads, auto_pad=auto_pad)
    return _lp_pool(X, win, p, ctx)


@op
def LpPool_18(
    X,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    dilations=None,
    kernel_shape=None,
    p=2,
    pads=None,
    strides=None,
    ctx=None,
):
    win = _window(
        X,
        kernel_shape,
        strides=strides,
        dilations=dilations,
        pads=pads,
        auto_pad=auto_pad,
        ceil_mode=ceil_mode,
    )
    return _lp_pool(X, win, p, ctx)


# ----------------------------------------------------------------------------------------------
# Global pools
# ----------------------------------------------------------------------------------------------


def _spatial_axes(X) -> tuple[int, ...]:
    if X.ndim < 3:
        raise ValueError(f"X must have rank >= 3 (N, C, spatial...), got shape {X.shape}")
    return tuple(range(2, X.ndim))


@op
def GlobalAveragePool(X, *, ctx=None):
    axes = _spatial_axes(X)
    (x,) = work_arrays(ctx, X)
    return x.mean(axis=axes, keepdims=True).astype(X.dtype, copy=False)


@op
def GlobalMaxPool(X):
    return X.max(axis=_spatial_axes(X), keepdims=True)


@op
def GlobalLpPool(X, *, p=2, ctx=None):
    axes = _spatial_axes(X)
    (x,) = work_arrays(ctx, X)
    return ((np.abs(x) ** p).sum(axis=axes, keepdims=True) ** (1.0 / p)).astype(X.dtype, copy=False)


# ----------------------------------------------------------------------------------------------
# MaxUnpool and MaxRoiPool
# ----------------------------------------------------------------------------------------------


@op
def MaxUnpool_9(X, I, output_shape=None, *, kernel_shape=None, pads=None, strides=None):
    if X.ndim < 3:
        raise ValueError(f"X must have rank >= 3 (N, C, spatial...), got shape {X.shape}")
    if I.shape != X.shape:
        raise ValueError(f"indices I have shape {I.shape}, expected the shape of X {X.shape}")
    nd = X.ndim - 2
    if kernel_shape is None or len(kernel_shape) != nd:
        raise ValueError(f"kernel_shape must have {nd} values, got {kernel_shape}")
    s = strides if strides is not None else [1] * nd
    p = pads if pads is not None else [0] * (2 * nd)
    if len(s) != nd or len(p) != 2 * nd:
        raise ValueError(f"strides {s} / pads {p} do not match {nd} spatial axes")
    shape = [*X.shape[:2]] + [
        (X.shape[2 + i] - 1) * s[i] - (p[i] + p[nd + i]) + kernel_shape[i] for i in range(nd)
    ]
    if output_shape is not None:
        shape = as_int_list(output_shape)
        if len(shape) != X.ndim:
            raise ValueError(f"output_shape {shape} must have {X.ndim} values (the rank of X)")
    # Indices are flat positions in the output tensor (what MaxPool's Indices output holds for the
    # tensor it pooled), so an explicit output_shape re-creates exactly that tensor.
    size = math.prod(shape)
    flat = I.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= size):
        raise ValueError(f"an index in I is outside the output of {size} elements (shape {shape})")
    y = np.zeros(size, dtype=X.dtype)
    y[flat] = X.reshape(-1)
    return y.reshape(shape)


def _round_half_away(v: float) -> int:
    return math.floor(v + 0.5) if v >= 0 else math.ceil(v - 0.5)


@op
def MaxRoiPool(X, rois, *, pooled_shape=None, spatial_scale=1.0):
    if X.ndim != 4:
        raise ValueError(f"X must have shape (N, C, H, W), got {X.shape}")
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"rois must have shape (num_rois, 5) [batch, x1, y1, x2, y2], got {rois.shape}"
        )
    if pooled_shape is None or len(pooled_shape) != 2:
        raise ValueError(f"pooled_shape must be [height, width], got {pooled_shape}")
    N, C, H, W = X.shape
    PH, PW = (int(v) for v in pooled_shape)
    y = np.zeros((rois.shape[0], C, PH, PW), dtype=X.dtype)
    low = _lowest(X.dtype)
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):  # a loop over boxes
        b = int(b)
        if not 0 <= b < N:
            raise ValueError(f"roi {r} has batch index {b}, outside [0, {N})")
        xs, ys = _round_half_away(x1 * spatial_scale), _round_half_away(y1 * spatial_scale)
        xe, ye = _round_half_away(x2 * spatial_scale), _round_half_away(y2 * spatial_scale)
        bin_h = max(ye - ys + 1, 1) / PH
        bin_w = max(xe - xs + 1, 1) / PW
        hs = [min(max(math.floor(i * bin_h) + ys, 0), H) for i in range(PH)]
        he = [min(max(math.ceil((i + 1) * bin_h) + ys, 0), H) for i in range(PH)]
        ws = [min(max(math.floor(j * bin_w) + xs, 0), W) for j in range(PW)]
        we = [min(max(math.ceil((j + 1) * bin_w) + xs, 0), W) for j in range(PW)]
        # Separable max over each bin: rows first (PH slices), then columns (PW slices).
        rows = np.stack(
            [
                X[b, :, a:e, :].max(axis=1) if e > a else np.full((C, W), low, X.dtype)
                for a, e in zip(hs, he, strict=True)
            ],
            axis=1,
        )  # (C, PH, W)
        for j, (a, e) in enumerate(zip(ws, we, strict=True)):
            if e > a:
                y[r, :, :, j] = rows[:, :, a:e].max(axis=2)
        empty_h = np.array([e <= a for a, e in zip(hs, he, strict=True)])
        empty_w = np.array([e <= a for a, e in zip(ws, we, strict=True)])
        y[r][:, empty_h[:, None] | empty_w[None, :]] = 0  # an empty bin pools to 0
    return y
