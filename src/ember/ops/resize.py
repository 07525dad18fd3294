"""Resampling ops: Resize (opsets 10-19), Upsample (1, 7, 9), GridSample (16, 20) and AffineGrid.

Resize is separable: each resized axis is one gather of a few taps per output position and a
weighted sum (`_resample_axis`). GridSample gathers the 2**r (linear) or 4**r (cubic) neighbours
of every sampling point and sums them with their weights. Both loop only over taps.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ember.ops.common import as_int_list, normalize_axis, work_arrays
from ember.ops.registry import op

_COORD_MODES_11 = (
    "half_pixel",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_half_pixel_for_nn",
    "tf_crop_and_resize",
)
_COORD_MODES_13 = tuple(m for m in _COORD_MODES_11 if m != "tf_half_pixel_for_nn")
_COORD_MODES_19 = (*_COORD_MODES_13, "half_pixel_symmetric")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


# ----------------------------------------------------------------------------------------------
# 1-D resampling along one axis
# ----------------------------------------------------------------------------------------------


def _source_coords(
    mode: str, n_in: int, n_out: int, scale: float, roi: tuple[float, float] | None
) -> np.ndarray:
    """x_original for every output index along one axis (float64).

    `scale` is the user's scale (or n_out / n_in when sizes were given); like the spec's
    `length_resized`, the resized length in align_corners/pytorch_half_pixel/tf_crop_and_resize is
    the fractional `scale * n_in`, which differs from n_out when a scale was given.
    """
    y = np.arange(n_out, dtype=np.float64)
    length = scale * n_in
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / length)
        return offset + (y + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (y + 0.5) / scale - 0.5 if length > 1 else np.zeros(n_out)
    if mode == "align_corners":
        return y * (n_in - 1) / (length - 1) if length != 1 else np.zeros(n_out)
    if mode == "asymmetric":
        return y / scale
    if mode == "tf_half_pixel_for_nn":
        return (y + 0.5) / scale
    if mode == "tf_crop_and_resize":
        start, end = roi if roi is not None else (0.0, 1.0)
        if length > 1:
            return start * (n_in - 1) + y * (end - start) * (n_in - 1) / (length - 1)
        return np.full(n_out, 0.5 * (start + end) * (n_in - 1))
    raise ValueError(f"coordinate_transformation_mode={mode!r} is not supported")


def _nearest_index(x: np.ndarray, nearest_mode: str, scale: float) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":
        return np.ceil(x - 0.5)
    if nearest_mode == "round_prefer_ceil":
        return np.floor(x + 0.5)
    if nearest_mode == "floor":
        return np.floor(x)
    if nearest_mode == "ceil":
        return np.ceil(x)
    if nearest_mode == "simple":  # Resize-10 / Upsample: truncate, but ceil when downsampling (ORT)
        return np.ceil(x) if scale < 1 else np.trunc(x)
    raise ValueError(f"nearest_mode={nearest_mode!r} is not one of {', '.join(_NEAREST_MODES)}")


def _cubic_kernel(d: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel at distance |d|."""
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _taps(
    x: np.ndarray,
    n_in: int,
    *,
    mode: str,
    scale: float,
    cubic_coeff_a: float,
    antialias: bool,
    exclude_outside: bool,
    nearest_mode: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Input indices (O, T) and weights (O, T) that produce each output position."""
    if mode == "nearest":
        idx = _nearest_index(x, nearest_mode, scale)
        return np.clip(idx, 0, n_in - 1).astype(np.intp)[:, None], np.ones((x.size, 1))
    base = np.floor(x)
    ratio = x - base
    stretch = min(scale, 1.0) if antialias else 1.0  # antialias widens the filter when downsampling
    if mode == "linear":
        start = math.floor(-1 / stretch) + 1
        offsets = np.arange(start, 2 - start)
        w = np.clip(1 - np.abs((offsets[None, :] - ratio[:, None]) * stretch), 0, 1)
    elif mode == "cubic":
        start = math.floor(-2 / stretch) + 1
        offsets = np.arange(start, 2 - start)
        w = _cubic_kernel((offsets[None, :] - ratio[:, None]) * stretch, cubic_coeff_a)
    else:
        raise ValueError(f"mode={mode!r} is not one of nearest, linear, cubic")
    if antialias:
        w = w / w.sum(axis=1, keepdims=True)
    idx = base[:, None].astype(np.int64) + offsets[None, :]
    if exclude_outside:
        w = np.where((idx >= 0) & (idx < n_in), w, 0.0)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    # Edge padding: taps past the border read the border pixel.
    return np.clip(idx, 0, n_in - 1).astype(np.intp), w


def _resample_axis(data: np.ndarray, axis: int, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    """out[..., o, ...] = sum_t w[o, t] * data[..., idx[o, t], ...]."""
    if idx.shape[1] == 1 and np.all(w == 1):
        return np.take(data, idx[:, 0], axis=axis)
    shape = [1] * data.ndim
    shape[axis] = idx.shape[0]
    out = np.take(data, idx[:, 0], axis=axis) * w[:, 0].reshape(shape)
    for t in range(1, idx.shape[1]):  # a loop over the filter taps
        out += np.take(data, idx[:, t], axis=axis) * w[:, t].reshape(shape)
    return out


def _cast_result(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if y.dtype == dtype:
        return y
    if dtype.kind in "iu":  # integer images: round to nearest, saturate
        info = np.iinfo(dtype)
        return np.clip(np.rint(y), info.min, info.max).astype(dtype)
    if dtype.kind == "b":
        return y != 0
    return y.astype(dtype)


def _resize(
    X,
    roi,
    scales,
    sizes,
    *,
    mode,
    coordinate_transformation_mode,
    cubic_coeff_a,
    exclude_outside,
    extrapolation_value,
    nearest_mode,
    antialias=0,
    axes=None,
    keep_aspect_ratio_policy="stretch",
    coord_modes=_COORD_MODES_19,
    ctx=None,
):
    r = X.ndim
    if mode not in ("nearest", "linear", "cubic"):
        raise ValueError(f"mode={mode!r} is not one of nearest, linear, cubic")
    if coordinate_transformation_mode not in coord_modes:
        raise ValueError(
            f"coordinate_transformation_mode={coordinate_transformation_mode!r} is not one of "
            f"{', '.join(coord_modes)} at this opset"
        )
    if mode == "nearest" and nearest_mode not in (*_NEAREST_MODES, "simple"):
        raise ValueError(f"nearest_mode={nearest_mode!r} is not one of {', '.join(_NEAREST_MODES)}")
    if axes is None:
        axes = list(range(r))
    else:
        axes = [normalize_axis(a, r, name="axes") for a in axes]
        if len(set(axes)) != len(axes):
            raise ValueError(f"axes={axes} has a repeated axis")
    scales = None if scales is None or scales.size == 0 else [float(s) for s in scales.reshape(-1)]
    sizes = None if sizes is None or sizes.size == 0 else as_int_list(sizes)
    in_shape = X.shape

    if sizes is not None:
        if scales is not None:
            raise ValueError("only one of 'scales' and 'sizes' can be given")
        if len(sizes) != len(axes):
            raise ValueError(
                f"sizes has {len(sizes)} values, expected {len(axes)} (one per resized axis)"
            )
        if any(s < 0 for s in sizes):
            raise ValueError(f"sizes={sizes} must be non-negative")
        if keep_aspect_ratio_policy not in ("stretch", "not_larger", "not_smaller"):
            raise ValueError(
                f"keep_aspect_ratio_policy={keep_aspect_ratio_policy!r} is not supported"
            )
        ratios = [s / in_shape[a] if in_shape[a] else 1.0 for s, a in zip(sizes, axes, strict=True)]
        if keep_aspect_ratio_policy == "stretch":
            axis_scale = ratios
            axis_out = sizes
        else:
            one = min(ratios) if keep_aspect_ratio_policy == "not_larger" else max(ratios)
            axis_scale = [one] * len(axes)
            axis_out = [int(one * in_shape[a] + 0.5) for a in axes]  # round half up
    elif scales is not None:
        if len(scales) != len(axes):
            raise ValueError(
                f"scales has {len(scales)} values, expected {len(axes)} (one per resized axis)"
            )
        if any(s <= 0 for s in scales):
            raise ValueError(f"scales={scales} must be positive")
        axis_scale = scales
        # NOTE: like onnxruntime and the ONNX reference, the roi does not shrink the output size.
        axis_out = [math.floor(s * in_shape[a]) for s, a in zip(scales, axes, strict=True)]
    else:
        raise ValueError("one of 'scales' and 'sizes' must be given (non-empty)")

    rois: list[tuple[float, float] | None] = [None] * len(axes)
    if coordinate_transformation_mode == "tf_crop_and_resize":
        if roi is None or roi.size == 0:
            raise ValueError(
                "coordinate_transformation_mode='tf_crop_and_resize' needs the roi input"
            )
        rv = [float(v) for v in roi.reshape(-1)]
        k = len(axes)
        if len(rv) != 2 * k:
            raise ValueError(f"roi has {len(rv)} values, expected {2 * k} (starts then ends)")
        rois = [(rv[i], rv[k + i]) for i in range(k)]

    numeric = X.dtype.kind in "fiu" or X.dtype.name.startswith("bfloat16")
    if mode == "nearest" or not numeric:
        y = X
    else:
        (y,) = work_arrays(ctx, X)
        if y.dtype.kind in "iu":
            y = y.astype(np.float64 if ctx is not None and ctx.exact else np.float32)
    for a, s, n_out, roi_a in zip(axes, axis_scale, axis_out, rois, strict=True):
        n_in = y.shape[a]
        if n_out == n_in and s == 1 and roi_a is None:
            continue  # identity along this axis (tf_crop_and_resize always has an roi)
        if n_in == 0 or n_out == 0:
            shape = list(y.shape)
            shape[a] = n_out
            y = np.zeros(shape, dtype=y.dtype)
            continue
        x = _source_coords(coordinate_transformation_mode, n_in, n_out, s, roi_a)
        idx, w = _taps(
            x,
            n_in,
            mode=mode,
            scale=s,
            cubic_coeff_a=cubic_coeff_a,
            antialias=bool(antialias),
            exclude_outside=bool(exclude_outside),
            nearest_mode=nearest_mode,
        )
        y = _resample_axis(y, a, idx, w.astype(y.dtype) if y.dtype.kind == "f" else w)
        if coordinate_transformation_mode == "tf_crop_and_resize":
            outside = (x < 0) | (x > n_in - 1)
            if outside.any():
                shape = [1] * y.ndim
                shape[a] = n_out
                fill = np.asarray(extrapolation_value).astype(y.dtype)
                y = np.where(outside.reshape(shape), fill, y)
    return _cast_result(y, X.dtype)


# ----------------------------------------------------------------------------------------------
# Resize
# ----------------------------------------------------------------------------------------------


@op
def Resize_10(X, scales, *, mode="nearest", ctx=None):
    # Opset 10 had no coordinate modes: asymmetric, and onnxruntime's original nearest rounding.
    if mode not in ("nearest", "linear"):
        raise ValueError(f"Resize-10 mode={mode!r} is not one of nearest, linear")
    return _resize(
        X,
        None,
        scales,
        None,
        mode=mode,
        coordinate_transformation_mode="asymmetric",
        cubic_coeff_a=-0.75,
        exclude_outside=0,
        extrapolation_value=0.0,
        nearest_mode="simple",
        coord_modes=("asymmetric",),
        ctx=ctx,
    )


@op
def Resize_11(
    X,
    roi,
    scales,
    sizes=None,
    *,
    coordinate_transformation_mode="half_pixel",
    cubic_coeff_a=-0.75,
    exclude_outside=0,
    extrapolation_value=0.0,
    mode="nearest",
    nearest_mode="round_prefer_floor",
    ctx=None,
):
    return _resize(
        X,
        roi,
        scales,
        sizes,
        mode=mode,
        coordinate_transformation_mode=coordinate_transformation_mode,
        cubic_coeff_a=cubic_coeff_a,
        exclude_outside=exclude_outside,
        extrapolation_value=extrapolation_value,
        nearest_mode=nearest_mode,
        coord_modes=_COORD_MODES_11,
        ctx=ctx,
    )


@op
def Resize_13(
    X,
    roi=None,
    scales=None,
    sizes=None,
    *,
    coordinate_transformation_mode="half_pixel",
    cubic_coeff_a=-0.75,
    exclude_outside=0,
    extrapolation_value=0.0,
    mode="nearest",
    nearest_mode="round_prefer_floor",
    ctx=None,
):
    return _resize(
        X,
        roi,
        scales,
        sizes,
        mode=mode,
        coordinate_transformation_mode=coordinate_transformation_mode,
        cubic_coeff_a=cubic_coeff_a,
        exclude_outside=exclude_outside,
        extrapolation_value=extrapolation_value,
        nearest_mode=nearest_mode,
        coord_modes=_COORD_MODES_13,
        ctx=ctx,
    )


@op
def Resize_18(
    X,
    roi=None,
    scales=None,
    sizes=None,
    *,
    antialias=0,
    axes=None,
    coordinate_transformation_mode="half_pixel",
    cubic_coeff_a=-0.75,
    exclude_outside=0,
    extrapolation_value=0.0,
    keep_aspect_ratio_policy="stretch",
    mode="nearest",
    nearest_mode="round_prefer_floor",
    ctx=None,
):
    return _resize(
        X,
        roi,
        scales,
        sizes,
        mode=mode,
        coordinate_transformation_mode=coordinate_transformation_mode,
        cubic_coeff_a=cubic_coeff_a,
        exclude_outside=exclude_outside,
        extrapolation_value=extrapolation_value,
        nearest_mode=nearest_mode,
        antialias=antialias,
        axes=axes,
        keep_aspect_ratio_policy=keep_aspect_ratio_policy,
        coord_modes=_COORD_MODES_13,
        ctx=ctx,
    )


@op
def Resize_19(
    X,
    roi=None,
    scales=None,
    sizes=None,
    *,
    antialias=0,
    axes=None,
    coordinate_transformation_mode="half_pixel",
    cubic_coeff_a=-0.75,
    exclude_outside=0,
    extrapolation_value=0.0,
    keep_aspect_ratio_policy="stretch",
    mode="nearest",
    nearest_mode="round_prefer_floor",
    ctx=None,
):
    return _resize(
        X,
        roi,
        scales,
        sizes,
        mode=mode,
        coordinate_transformation_mode=coordinate_transformation_mode,
        cubic_coeff_a=cubic_coeff_a,
        exclude_outside=exclude_outside,
        extrapolation_value=extrapolation_value,
        nearest_mode=nearest_mode,
        antialias=antialias,
        axes=axes,
        keep_aspect_ratio_policy=keep_aspect_ratio_policy,
        coord_modes=_COORD_MODES_19,
        ctx=ctx,
    )


# ----------------------------------------------------------------------------------------------
# Upsample (deprecated since opset 10)
# ----------------------------------------------------------------------------------------------


def _upsample(X, scales, mode: str, ctx) -> np.ndarray:
    if mode not in ("nearest", "linear"):
        raise ValueError(f"Upsample mode={mode!r} is not one of nearest, linear")
    s = np.asarray(scales, dtype=np.float32).reshape(-1)
    if s.size != X.ndim:
        raise ValueError(f"scales has {s.size} values, expected {X.ndim} (the rank of X)")
    if np.any(s < 1):
        raise ValueError(f"Upsample scales={s.tolist()} must be >= 1")
    return _resize(
        X,
        None,
        s,
        None,
        mode=mode,
        coordinate_transformation_mode="asymmetric",
        cubic_coeff_a=-0.75,
        exclude_outside=0,
        extrapolation_value=0.0,
        nearest_mode="simple",
        coord_modes=("asymmetric",),
        ctx=ctx,
    )


@op
def Upsample(X, *, height_scale=None, mode="nearest", width_scale=None, ctx=None):
    # Opset 1 (experimental): NCHW only, scales as two attributes, "bilinear" for linear.
    if X.ndim != 4:
        raise ValueError(f"Upsample-1 takes an (N, C, H, W) input, got shape {X.shape}")
    if height_scale is None or width_scale is None:
        raise ValueError("Upsample-1 needs both height_scale and width_scale")
    modes = {"nearest": "nearest", "bilinear": "linear"}
    if mode not in modes:
        raise ValueError(f"Upsample-1 mode={mode!r} is not one of nearest, bilinear")
    return _upsample(X, [1.0, 1.0, height_scale, width_scale], modes[mode], ctx)


@op
def Upsample_7(X, *, mode="nearest", scales=None, ctx=None):
    if scales is None:
        raise ValueError("Upsample-7 needs the scales attribute")
    return _upsample(X, scales, mode, ctx)


@op
def Upsample_9(X, scales, *, mode="nearest", ctx=None):
    return _upsample(X, scales, mode, ctx)


# ----------------------------------------------------------------------------------------------
# GridSample and AffineGrid
# ----------------------------------------------------------------------------------------------


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect coordinates off the borders lo/hi until they fall inside [lo, hi]."""
    rng = hi - lo
    if rng <= 0:
        return np.full_like(x, lo)
    below, above = x < lo, x > hi
    d = np.where(below, lo - x, np.where(above, x - hi, 0))
    flips = np.trunc(d / rng)
    rem = d - flips * rng
    even = flips % 2 == 0
    from_lo = np.where(even, lo + rem, hi - rem)  # bounced off lo an even/odd number of times
    from_hi = np.where(even, hi - rem, lo + rem)
    return np.where(below, from_lo, np.where(above, from_hi, x))


def _grid_sample(X, grid, *, mode: str, padding_mode: str, align_corners: int, ctx) -> np.ndarray:
    if padding_mode not in ("zeros", "border", "reflection"):
        raise ValueError(f"padding_mode={padding_mode!r} is not one of zeros, border, reflection")
    if X.ndim < 3:
        raise ValueError(f"X must have rank >= 3 (N, C, spatial...), got shape {X.shape}")
    r = X.ndim - 2
    N, C, *S = X.shape
    if grid.ndim != r + 2 or grid.shape[0] != N or grid.shape[-1] != r:
        raise ValueError(f"grid must have shape (N={N}, *output, {r}) for this X, got {grid.shape}")
    out = grid.shape[1:-1]
    Q = math.prod(out)
    x_work, g = work_arrays(ctx, X, grid)
    if g.dtype.kind != "f":
        g = g.astype(np.float32)
    g = g.reshape(N, Q, r)
    # grid's last axis lists (x, y, z...): the fastest-varying spatial axis first.
    coords, lows, highs = [], [], []
    for i in range(r):
        n = g[:, :, r - 1 - i]
        L = S[i]
        c = (n + 1) / 2 * (L - 1) if align_corners else ((n + 1) * L - 1) / 2
        if mode == "nearest":
            c = np.rint(c)  # ties to even, like PyTorch
        lo, hi = (0.0, L - 1.0) if align_corners else (-0.5, L - 0.5)
        if padding_mode == "border":
            c = np.where((c < lo) | (c > hi), np.clip(c, 0, L - 1), c)
        elif padding_mode == "reflection":
            c = np.where((c < lo) | (c > hi), _reflect(c, lo, hi), c)
        coords.append(c)
        lows.append(lo)
        highs.append(hi)

    def tap_index(i: int, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index (clipped into range) and in-range mask of integer tap positions t on axis i."""
        L = S[i]
        if padding_mode == "border":
            t = np.clip(t, 0, L - 1)
        elif padding_mode == "reflection":
            t = np.trunc(_reflect(t.astype(np.float64), lows[i], highs[i]))
        inside = (t >= 0) & (t < L)
        return np.clip(t, 0, L - 1).astype(np.int64), inside

    offsets = {"nearest": (0,), "linear": (0, 1), "cubic": (-1, 0, 1, 2)}[mode]
    per_axis = []  # per axis: list over taps of (index, weight*inside)
    for i, c in enumerate(coords):
        base = np.floor(c)
        frac = c - base
        taps = []
        for o in offsets:
            idx, inside = tap_index(i, base + o)
            if mode == "nearest":
                w = np.ones_like(c)
            elif mode == "linear":
                w = 1 - frac if o == 0 else frac
            else:
                w = _cubic_kernel(frac - o, -0.75)
            taps.append((idx, np.where(inside, w, 0).astype(x_work.dtype)))
        per_axis.append(taps)
    xf = x_work.reshape(N, C, -1)
    y = np.zeros((N, C, Q), dtype=x_work.dtype)
    for combo in itertools.product(*per_axis):  # a loop over the 1, 2**r or 4**r neighbours
        flat = np.zeros((N, Q), dtype=np.int64)
        w = np.ones((N, Q), dtype=x_work.dtype)
        for i, (idx, wi) in enumerate(combo):
            flat = flat * S[i] + idx
            w = w * wi
        y += np.take_along_axis(xf, flat[:, None, :], axis=2) * w[:, None, :]
    return y.reshape(N, C, *out).astype(X.dtype, copy=False)


@op
def GridSample_16(X, grid, *, align_corners=0, mode="bilinear", padding_mode="zeros", ctx=None):
    modes = {"bilinear": "linear", "nearest": "nearest", "bicubic": "cubic"}
    if mode not in modes:
        raise ValueError(f"GridSample-16 mode={mode!r} is not one of bilinear, nearest, bicubic")
    if X.ndim != 4:
        raise ValueError(f"GridSample-16 takes a 4-D (N, C, H, W) input, got shape {X.shape}")
    return _grid_sample(
        X, grid, mode=modes[mode], padding_mode=padding_mode, align_corners=align_corners, ctx=ctx
    )


@op
def GridSample_20(X, grid, *, align_corners=0, mode="linear", padding_mode="zeros", ctx=None):
    if mode not in ("linear", "nearest", "cubic"):
        raise ValueError(f"GridSample mode={mode!r} is not one of linear, nearest, cubic")
    return _grid_sample(
        X, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners, ctx=ctx
    )


def _base_coords(L: int, align_corners: int) -> np.ndarray:
    if align_corners:
        return np.linspace(-1.0, 1.0, L) if L > 1 else np.zeros(L)
    return (2 * np.arange(L) + 1) / L - 1


@op
def AffineGrid_20(theta, size, *, align_corners=0, ctx=None):
    dims = as_int_list(size)
    if len(dims) not in (4, 5):
        raise ValueError(f"size must be (N, C, H, W) or (N, C, D, H, W), got {dims}")
    r = len(dims) - 2
    N = dims[0]
    if theta.shape != (N, r, r + 1):
        raise ValueError(
            f"theta must have shape {(N, r, r + 1)} for size {dims}, got {theta.shape}"
        )
    spatial = dims[2:]
    (t,) = work_arrays(ctx, theta)
    axes = [_base_coords(L, align_corners) for L in spatial]
    mesh = np.meshgrid(*axes, indexing="ij")  # per spatial axis (D, H, W order)
    # Homogeneous points list (x, y[, z], 1): the fastest-varying axis first.
    pts = np.stack([*mesh[::-1], np.ones(spatial)], axis=-1).reshape(-1, r + 1).astype(t.dtype)
    grid = np.einsum("pk,njk->npj", pts, t)  # (N, P, r)
    return grid.reshape(N, *spatial, r).astype(theta.dtype, copy=False)
