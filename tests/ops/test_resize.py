"""Resize, Upsample, GridSample and AffineGrid against per-element twins written from the spec."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from tests.ops.node import run_node

import ember
from ember.errors import UnsupportedError
from ember.ops.registry import OpContext
from ember.ops.resize import (
    AffineGrid_20,
    GridSample_16,
    GridSample_20,
    Resize_11,
    Resize_13,
    Resize_19,
)

RNG = np.random.default_rng(2)
EXACT = OpContext(exact=True)


def rand(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def f32(*v: float) -> np.ndarray:
    return np.array(v, dtype=np.float32)


def i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# Resize twin: every output element is a weighted sum over the product of per-axis taps
# ----------------------------------------------------------------------------------------------


def source_coord(ctm, y, n_in, n_out, scale, roi):
    length = scale * n_in  # the spec's (possibly fractional) resized length
    if ctm == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if ctm == "half_pixel_symmetric":
        return n_in / 2 * (1 - n_out / length) + (y + 0.5) / scale - 0.5
    if ctm == "pytorch_half_pixel":
        return (y + 0.5) / scale - 0.5 if length > 1 else 0.0
    if ctm == "align_corners":
        return 0.0 if length == 1 else y * (n_in - 1) / (length - 1)
    if ctm == "asymmetric":
        return y / scale
    if ctm == "tf_crop_and_resize":
        a, b = roi
        if length > 1:
            return a * (n_in - 1) + y * (b - a) * (n_in - 1) / (length - 1)
        return 0.5 * (a + b) * (n_in - 1)
    raise AssertionError(ctm)


def keys(t, a):
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def axis_taps(xo, n_in, scale, mode, nearest_mode, a, exclude_outside, antialias):
    if mode == "nearest":
        fl = math.floor(xo)
        half = xo - fl == 0.5
        i = {
            "round_prefer_floor": fl if half else round(xo),
            "round_prefer_ceil": fl + 1 if half else round(xo),
            "floor": fl,
            "ceil": math.ceil(xo),
        }[nearest_mode]
        return [(min(max(i, 0), n_in - 1), 1.0)]
    s = min(scale, 1.0) if antialias else 1.0
    support = (1 if mode == "linear" else 2) / s
    taps = []
    for i in range(math.floor(xo - support) - 1, math.ceil(xo + support) + 2):
        d = (i - xo) * s
        w = max(0.0, 1 - abs(d)) if mode == "linear" else keys(d, a)
        if exclude_outside and not 0 <= i < n_in:
            w = 0.0
        taps.append((min(max(i, 0), n_in - 1), w))
    if antialias or exclude_outside:
        total = sum(w for _, w in taps)
        taps = [(i, w / total) for i, w in taps]
    return taps


def resize_twin(
    x,
    out_shape,
    scales,
    *,
    mode,
    ctm,
    nearest_mode="round_prefer_floor",
    a=-0.75,
    exclude_outside=0,
    antialias=0,
    roi=None,
    extrapolation=0.0,
):
    per_axis = []
    outside = []
    for ax, (n_in, n_out, s) in enumerate(zip(x.shape, out_shape, scales, strict=True)):
        r = None if roi is None else (roi[ax], roi[ax + x.ndim])
        coords = [source_coord(ctm, y, n_in, n_out, s, r) for y in range(n_out)]
        same = n_in == n_out and s == 1 and ctm != "tf_crop_and_resize"
        per_axis.append(
            [
                [(y, 1.0)]
                if same
                else axis_taps(c, n_in, s, mode, nearest_mode, a, exclude_outside, antialias)
                for y, c in enumerate(coords)
            ]
        )
        outside.append([ctm == "tf_crop_and_resize" and not 0 <= c <= n_in - 1 for c in coords])
    y = np.zeros(out_shape)
    for o in itertools.product(*(range(n) for n in out_shape)):
        if any(outside[ax][o[ax]] for ax in range(x.ndim)):
            y[o] = extrapolation
            continue
        acc = 0.0
        for combo in itertools.product(*(per_axis[ax][o[ax]] for ax in range(x.ndim))):
            w = math.prod(t[1] for t in combo)
            acc += w * float(x[tuple(t[0] for t in combo)])
        y[o] = acc
    return y


CTMS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"]


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("ctm", CTMS)
@pytest.mark.parametrize(
    "scales", [(1.0, 1.0, 1.7, 0.6), (1.0, 1.0, 0.45, 2.5), (1.0, 1.0, 1.0, 0.3)]
)
def test_resize_scales_match_definition(mode, ctm, scales):
    x = rand(1, 2, 5, 7)
    out = tuple(math.floor(np.float32(s) * n) for s, n in zip(scales, x.shape, strict=True))
    s32 = [float(np.float32(s)) for s in scales]
    want = resize_twin(x, out, s32, mode=mode, ctm=ctm)
    got = Resize_19(x, None, f32(*scales), mode=mode, coordinate_transformation_mode=ctm)
    assert got.shape == out and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("sizes", [(1, 2, 2, 3), (1, 2, 9, 4), (1, 2, 1, 1)])
@pytest.mark.parametrize("exclude_outside", [0, 1])
@pytest.mark.parametrize("antialias", [0, 1])
def test_resize_sizes_antialias_exclude_outside(mode, sizes, exclude_outside, antialias):
    x = rand(1, 2, 6, 8)
    scales = [o / i for o, i in zip(sizes, x.shape, strict=True)]
    want = resize_twin(
        x,
        sizes,
        scales,
        mode=mode,
        ctm="half_pixel",
        a=-0.5,
        exclude_outside=exclude_outside,
        antialias=antialias,
    )
    got = Resize_19(
        x,
        None,
        None,
        i64(*sizes),
        mode=mode,
        cubic_coeff_a=-0.5,
        exclude_outside=exclude_outside,
        antialias=antialias,
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
)
@pytest.mark.parametrize("ctm", CTMS)
def test_resize_nearest_modes(nearest_mode, ctm):
    x = rand(1, 1, 4, 6)
    for sizes in [(1, 1, 8, 9), (1, 1, 3, 4), (1, 1, 7, 3)]:
        scales = [o / i for o, i in zip(sizes, x.shape, strict=True)]
        want = resize_twin(x, sizes, scales, mode="nearest", ctm=ctm, nearest_mode=nearest_mode)
        got = Resize_19(
            x,
            None,
            None,
            i64(*sizes),
            coordinate_transformation_mode=ctm,
            nearest_mode=nearest_mode,
        )
        np.testing.assert_array_equal(got, want.astype(np.float32))


def test_nearest_ties_round_as_named():
    # asymmetric with scale 2: x_original = y / 2 = 0, 0.5, 1, 1.5, ...: a tie at every other pixel.
    x = np.arange(4, dtype=np.float32)
    floor = Resize_19(x, None, f32(2), coordinate_transformation_mode="asymmetric")
    ceil = Resize_19(
        x,
        None,
        f32(2),
        coordinate_transformation_mode="asymmetric",
        nearest_mode="round_prefer_ceil",
    )
    np.testing.assert_array_equal(floor, [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(ceil, [0, 1, 1, 2, 2, 3, 3, 3])


def test_half_pixel_symmetric_differs_only_when_the_size_is_fractional():
    x = rand(1, 1, 4, 5)
    a = Resize_19(
        x, None, f32(1, 1, 2, 2), mode="linear", coordinate_transformation_mode="half_pixel"
    )
    b = Resize_19(
        x,
        None,
        f32(1, 1, 2, 2),
        mode="linear",
        coordinate_transformation_mode="half_pixel_symmetric",
    )
    np.testing.assert_allclose(a, b, atol=1e-6)
    c = Resize_19(
        x, None, f32(1, 1, 1, 1.7), mode="linear", coordinate_transformation_mode="half_pixel"
    )
    d = Resize_19(
        x,
        None,
        f32(1, 1, 1, 1.7),
        mode="linear",
        coordinate_transformation_mode="half_pixel_symmetric",
    )
    assert c.shape == d.shape == (1, 1, 4, 8)
    assert not np.allclose(c, d)


@pytest.mark.parametrize(
    ("policy", "sizes", "out"),
    [("stretch", (7, 7), (7, 7)), ("not_larger", (7, 7), (5, 7)), ("not_smaller", (7, 7), (7, 10))],
)
def test_keep_aspect_ratio_policy(policy, sizes, out):
    x = rand(1, 1, 5, 7)
    y = Resize_19(x, None, None, i64(*sizes), axes=[2, 3], keep_aspect_ratio_policy=policy)
    assert y.shape == (1, 1, *out)


def test_axes_may_be_negative_and_in_any_order():
    x = rand(2, 3, 4, 5)
    a = Resize_19(x, None, f32(2.0, 0.6), axes=[-2, 3], mode="linear")
    b = Resize_19(x, None, f32(0.6, 2.0), axes=[3, 2], mode="linear")
    c = Resize_19(x, None, f32(1, 1, 2.0, 0.6), mode="linear")
    np.testing.assert_allclose(a, c, atol=1e-6)
    np.testing.assert_allclose(b, c, atol=1e-6)


def test_tf_crop_and_resize_extrapolates_outside_the_roi():
    x = rand(1, 1, 5, 6)
    roi = f32(0, 0, -0.2, 0.1, 1, 1, 0.6, 1.3)
    want = resize_twin(
        x,
        (1, 1, 4, 5),
        [1, 1, 0.8, 5 / 6],
        mode="linear",
        ctm="tf_crop_and_resize",
        roi=roi.tolist(),
        extrapolation=7.0,
    )
    got = Resize_19(
        x,
        roi,
        None,
        i64(1, 1, 4, 5),
        mode="linear",
        coordinate_transformation_mode="tf_crop_and_resize",
        extrapolation_value=7.0,
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert (got == 7.0).any()


def test_integer_images_round_and_saturate():
    x = np.array([[0, 255, 0, 255]], dtype=np.uint8)
    y = Resize_19(x, None, f32(1, 2), mode="cubic")  # cubic overshoots past 0 and 255
    assert y.dtype == np.uint8
    want = resize_twin(x.astype(np.float64), (1, 8), [1, 2], mode="cubic", ctm="half_pixel")
    np.testing.assert_array_equal(y, np.clip(np.rint(want), 0, 255))
    assert y.min() == 0 and y.max() == 255


def test_nearest_works_for_any_dtype():
    x = np.array([["a", "b"], ["c", "d"]])
    y = Resize_19(x, None, f32(2, 1))
    np.testing.assert_array_equal(y, [["a", "b"], ["a", "b"], ["c", "d"], ["c", "d"]])


def test_exact_mode_keeps_dtype():
    x = rand(1, 2, 3, 4).astype(np.float16)
    y = Resize_19(x, None, f32(1, 1, 2, 1.5), mode="cubic", ctx=EXACT)
    assert y.dtype == np.float16


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"scales": f32(1, 2), "sizes": i64(2, 4)}, "only one of 'scales' and 'sizes'"),
        ({}, "one of 'scales' and 'sizes' must be given"),
        ({"scales": f32(2)}, "scales has 1 values, expected 2"),
        ({"scales": f32(1, -2)}, "must be positive"),
        ({"scales": f32(1, 2), "mode": "area"}, "mode='area' is not one of"),
        ({"scales": f32(1, 2), "nearest_mode": "round"}, "nearest_mode='round' is not one of"),
        (
            {"scales": f32(1, 2), "coordinate_transformation_mode": "tf_half_pixel_for_nn"},
            "at this opset",
        ),
        (
            {"scales": f32(1, 2), "coordinate_transformation_mode": "tf_crop_and_resize"},
            "needs the roi",
        ),
        ({"sizes": i64(2, 4), "keep_aspect_ratio_policy": "fit"}, "keep_aspect_ratio_policy='fit'"),
        ({"scales": f32(2, 2), "axes": [1, -1]}, "repeated axis"),
    ],
)
def test_resize_errors(kw, message):
    x = rand(2, 2)
    with pytest.raises(ValueError) as e:
        Resize_19(x, kw.pop("roi", None), kw.pop("scales", None), kw.pop("sizes", None), **kw)
    assert message in str(e.value)


def test_tf_half_pixel_for_nn_exists_only_at_opset_11():
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    y = Resize_11(x, f32(), f32(1, 2), coordinate_transformation_mode="tf_half_pixel_for_nn")
    np.testing.assert_array_equal(y, [[0, 1, 1, 2, 2, 3, 3, 3]])  # (y + 0.5) / 2 rounded
    with pytest.raises(ValueError, match="at this opset"):
        Resize_13(x, None, f32(1, 2), coordinate_transformation_mode="tf_half_pixel_for_nn")


def test_resize_through_runtime_at_each_opset():
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    s = ("scales", f32(1, 1, 2, 2))
    r10 = run_node("Resize", [("x", x), s], opset=10)
    r11 = run_node("Resize", [("x", x), ("roi", f32()), s], opset=11)
    r13 = run_node("Resize", [("x", x), None, s], opset=13)
    r19 = run_node(
        "Resize", [("x", x), None, None, ("sizes", i64(4, 6))], {"axes": [2, 3]}, opset=19
    )
    repeat = x.repeat(2, axis=2).repeat(2, axis=3)
    np.testing.assert_array_equal(r10, repeat)
    # half_pixel + round_prefer_floor: y/2 - 0.25 rounds down on every tie -> also a pure repeat.
    for r in (r11, r13, r19):
        np.testing.assert_array_equal(r, repeat)
    with pytest.raises(UnsupportedError, match="antialias"):
        run_node("Resize", [("x", x), None, s], {"antialias": 1}, opset=13)


def test_resize_10_rounds_like_onnxruntime():
    x = np.arange(10, dtype=np.float32).reshape(1, 10)
    # Downsampling: ceil(y / scale); upsampling: floor(y / scale) (asymmetric, no nearest_mode).
    down = run_node("Resize", [("x", x), ("s", f32(1, 0.4))], opset=10)
    np.testing.assert_array_equal(down, [[0, 3, 5, 8]])
    lin = run_node("Resize", [("x", x[:, :3]), ("s", f32(1, 2))], {"mode": "linear"}, opset=10)
    np.testing.assert_allclose(lin, [[0, 0.5, 1, 1.5, 2, 2]])


def test_upsample_versions():
    x = np.array([[[[1, 2], [3, 4]]]], dtype=np.float32)
    want = x.repeat(2, axis=2).repeat(3, axis=3)
    np.testing.assert_array_equal(
        run_node("Upsample", [("x", x), ("s", f32(1, 1, 2, 3))], opset=9), want
    )
    np.testing.assert_array_equal(
        run_node("Upsample", [("x", x)], {"scales": [1.0, 1.0, 2.0, 3.0]}, opset=7), want
    )
    np.testing.assert_array_equal(
        run_node("Upsample", [("x", x)], {"height_scale": 2.0, "width_scale": 3.0}, opset=1), want
    )
    lin = run_node("Upsample", [("x", x), ("s", f32(1, 1, 1, 2))], {"mode": "linear"}, opset=9)
    np.testing.assert_allclose(lin[0, 0], [[1, 1.5, 2, 2], [3, 3.5, 4, 4]])
    with pytest.raises(ember.ExecutionError, match="must be >= 1"):
        run_node("Upsample", [("x", x), ("s", f32(1, 1, 0.5, 1))], opset=9)


# ----------------------------------------------------------------------------------------------
# GridSample and AffineGrid
# ----------------------------------------------------------------------------------------------


def grid_sample_twin(x, grid, mode, padding_mode, align_corners):
    """Per output element; taps outside read 0 / the border / the reflected pixel."""
    N, C, *S = x.shape
    r = len(S)
    out = grid.shape[1:-1]
    y = np.zeros((N, C, *out))

    def reflect(v, lo, hi):
        rng = hi - lo
        if rng <= 0:
            return lo
        while v < lo or v > hi:  # bounce until inside
            v = 2 * lo - v if v < lo else 2 * hi - v
        return v

    def bounds(L):
        return (0.0, L - 1.0) if align_corners else (-0.5, L - 0.5)

    def pixel(n, c, idx):
        idx = list(idx)
        for i, L in enumerate(S):
            if padding_mode == "border":
                idx[i] = min(max(idx[i], 0), L - 1)
            elif padding_mode == "reflection":
                idx[i] = int(reflect(idx[i], *bounds(L)))
            if not 0 <= idx[i] < L:
                return 0.0
        return float(x[(n, c, *idx)])

    for n, *o in itertools.product(range(N), *(range(v) for v in out)):
        g = grid[(n, *o)][::-1]  # (x, y, z) -> axis order
        coord = []
        for i, L in enumerate(S):
            v = float(g[i])
            c = (v + 1) / 2 * (L - 1) if align_corners else ((v + 1) * L - 1) / 2
            if mode == "nearest":
                c = float(np.rint(c))
            lo, hi = bounds(L)
            if not lo <= c <= hi:
                if padding_mode == "border":
                    c = min(max(c, 0), L - 1)
                elif padding_mode == "reflection":
                    c = reflect(c, lo, hi)
            coord.append(c)
        for ch in range(C):
            if mode == "nearest":
                y[(n, ch, *o)] = pixel(n, ch, [int(c) for c in coord])
                continue
            offs = (0, 1) if mode == "linear" else (-1, 0, 1, 2)
            acc = 0.0
            for combo in itertools.product(offs, repeat=r):
                w, idx = 1.0, []
                for i, dlt in enumerate(combo):
                    base = math.floor(coord[i])
                    t = coord[i] - base
                    w *= (1 - t if dlt == 0 else t) if mode == "linear" else keys(t - dlt, -0.75)
                    idx.append(base + dlt)
                acc += w * pixel(n, ch, idx)
            y[(n, ch, *o)] = acc
    return y


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [0, 1])
def test_grid_sample_2d(mode, padding_mode, align_corners):
    x = rand(2, 2, 4, 5)
    grid = RNG.uniform(-1.6, 1.6, (2, 3, 4, 2)).astype(np.float32)
    grid[0, 0, 0] = [-1.0, 1.0]
    grid[0, 0, 1] = [0.25, -0.5]  # tie points for nearest
    want = grid_sample_twin(x, grid, mode, padding_mode, align_corners)
    got = GridSample_20(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    old = {"linear": "bilinear", "cubic": "bicubic", "nearest": "nearest"}[mode]
    np.testing.assert_array_equal(
        GridSample_16(x, grid, mode=old, padding_mode=padding_mode, align_corners=align_corners),
        got,
    )


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflection"])
def test_grid_sample_3d_and_1d(mode, padding_mode):
    x = rand(1, 2, 3, 4, 2)
    grid = RNG.uniform(-1.4, 1.4, (1, 2, 3, 2, 3)).astype(np.float32)
    want = grid_sample_twin(x, grid, mode, padding_mode, 0)
    np.testing.assert_allclose(
        GridSample_20(x, grid, mode=mode, padding_mode=padding_mode), want, rtol=1e-4, atol=1e-5
    )
    x1 = rand(2, 1, 6)
    g1 = RNG.uniform(-1.2, 1.2, (2, 5, 1)).astype(np.float32)
    want1 = grid_sample_twin(x1, g1, mode, padding_mode, 1)
    got1 = GridSample_20(x1, g1, mode=mode, padding_mode=padding_mode, align_corners=1)
    np.testing.assert_allclose(got1, want1, rtol=1e-4, atol=1e-5)


def test_grid_sample_errors():
    x = rand(1, 1, 3, 3)
    with pytest.raises(ValueError, match="mode='linear' is not one of bilinear"):
        GridSample_16(x, rand(1, 2, 2, 2), mode="linear")
    with pytest.raises(ValueError, match="takes a 4-D"):
        GridSample_16(rand(1, 1, 2, 3, 3), rand(1, 2, 2, 2, 3))
    with pytest.raises(ValueError, match="grid must have shape"):
        GridSample_20(x, rand(1, 2, 2, 3))
    with pytest.raises(ValueError, match="padding_mode='wrap'"):
        GridSample_20(x, rand(1, 2, 2, 2), padding_mode="wrap")


@pytest.mark.parametrize("align_corners", [0, 1])
@pytest.mark.parametrize("size", [(2, 3, 4, 5), (1, 1, 3, 2, 4)])
def test_affine_grid_matches_formula(align_corners, size):
    r = len(size) - 2
    theta = rand(size[0], r, r + 1)
    got = AffineGrid_20(theta, i64(*size), align_corners=align_corners)
    spatial = size[2:]
    assert got.shape == (size[0], *spatial, r) and got.dtype == np.float32

    def base(L, i):
        if align_corners:
            return -1 + 2 * i / (L - 1) if L > 1 else 0.0
        return (2 * i + 1) / L - 1

    for n, *o in itertools.product(range(size[0]), *(range(v) for v in spatial)):
        pt = [*[base(spatial[a], o[a]) for a in range(r)][::-1], 1.0]  # (x, y[, z], 1)
        np.testing.assert_allclose(got[(n, *o)], theta[n] @ np.array(pt), rtol=1e-5, atol=1e-6)


def test_identity_affine_grid_samples_the_image_back():
    x = rand(1, 2, 5, 4)
    theta = np.array([[[1, 0, 0], [0, 1, 0]]], dtype=np.float32)
    for ac in (0, 1):
        grid = AffineGrid_20(theta, i64(1, 2, 5, 4), align_corners=ac)
        np.testing.assert_allclose(GridSample_20(x, grid, align_corners=ac), x, atol=1e-5)


def test_affine_grid_rejects_mismatched_theta():
    with pytest.raises(ValueError, match="theta must have shape"):
        AffineGrid_20(rand(1, 2, 3), i64(1, 1, 2, 3, 4))
