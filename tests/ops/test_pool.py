"""Pooling ops against loop-by-definition twins: odd windows, asymmetric pads, ceil_mode."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from tests.ops.node import run_node

from ember.errors import UnsupportedError
from ember.ops.conv import window_geometry
from ember.ops.pool import (
    AveragePool_19,
    GlobalAveragePool,
    GlobalLpPool,
    GlobalMaxPool,
    LpPool_18,
    MaxPool_10,
    MaxRoiPool,
    MaxUnpool_9,
)
from ember.ops.registry import OpContext

RNG = np.random.default_rng(1)
EXACT = OpContext(exact=True)
TWO_OUTPUTS = OpContext(n_outputs=2)


def rand(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def pool_twin(x, kernel, kind, *, count_include_pad=0, p=2, storage_order=0, **kw):
    """One output element at a time; returns (y, flat indices of the max) for kind='max'."""
    N, C, *S = x.shape
    win = window_geometry(tuple(S), tuple(kernel), **kw)
    y = np.zeros((N, C, *win.out_shape))
    idx = np.zeros(y.shape, dtype=np.int64)
    for n, c, *o in itertools.product(range(N), range(C), *(range(v) for v in win.out_shape)):
        vals, where, padded = [], [], 0
        for k in itertools.product(*(range(v) for v in kernel)):
            pos = [
                o[i] * win.strides[i] - win.pads_begin[i] + k[i] * win.dilations[i]
                for i in range(len(S))
            ]
            if all(0 <= q < s for q, s in zip(pos, S, strict=True)):
                vals.append(float(x[(n, c, *pos)]))
                where.append(pos)
            elif all(
                -b <= q < s + e
                for q, s, b, e in zip(pos, S, win.pads_begin, win.pads_end, strict=True)
            ):
                padded += 1
        if kind == "max":
            j = int(np.argmax(vals))
            y[(n, c, *o)] = vals[j]
            sp = where[j] if storage_order == 0 else where[j][::-1]
            dims = S if storage_order == 0 else S[::-1]
            idx[(n, c, *o)] = (n * C + c) * math.prod(S) + int(np.ravel_multi_index(sp, dims))
        elif kind == "avg":
            y[(n, c, *o)] = sum(vals) / (len(vals) + (padded if count_include_pad else 0))
        else:
            y[(n, c, *o)] = sum(abs(v) ** p for v in vals) ** (1 / p)
    return y, idx


CASES = [
    ((2, 3, 9), [3], {"strides": [2]}),
    ((1, 2, 7), [2], {"strides": [3], "pads": [1, 0], "dilations": [2], "ceil_mode": 1}),
    ((1, 2, 7, 6), [3, 2], {}),
    ((1, 2, 8, 7), [2, 3], {"strides": [3, 2], "pads": [1, 0, 0, 2]}),
    ((1, 1, 9, 9), [2, 2], {"strides": [4, 3]}),  # stride > kernel
    ((1, 2, 7, 8), [3, 3], {"strides": [2, 2], "ceil_mode": 1, "pads": [1, 1, 1, 0]}),
    ((1, 1, 4, 4), [3, 3], {"strides": [3, 3], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    ((1, 2, 9, 8), [2, 3], {"dilations": [3, 2], "strides": [1, 2], "ceil_mode": 1}),
    ((1, 2, 5, 6), [3, 2], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 2, 5, 6), [3, 2], {"auto_pad": "SAME_LOWER", "strides": [2, 1]}),
    ((1, 2, 6, 5), [2, 2], {"auto_pad": "VALID", "strides": [2, 3]}),
    (
        (1, 1, 5, 4, 6),
        [2, 3, 2],
        {"strides": [2, 1, 3], "pads": [0, 1, 1, 1, 0, 0], "ceil_mode": 1},
    ),
]


@pytest.mark.parametrize(("xs", "kernel", "kw"), CASES)
@pytest.mark.parametrize("storage_order", [0, 1])
def test_max_pool_values_and_indices(xs, kernel, kw, storage_order):
    x = rand(*xs)
    want, want_idx = pool_twin(x, kernel, "max", storage_order=storage_order, **kw)
    y, idx = MaxPool_10(x, kernel_shape=kernel, storage_order=storage_order, ctx=TWO_OUTPUTS, **kw)
    np.testing.assert_array_equal(y, want.astype(np.float32))
    np.testing.assert_array_equal(idx, want_idx)
    assert idx.dtype == np.int64


@pytest.mark.parametrize(("xs", "kernel", "kw"), CASES)
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool_matches_definition(xs, kernel, kw, count_include_pad):
    x = rand(*xs)
    want, _ = pool_twin(x, kernel, "avg", count_include_pad=count_include_pad, **kw)
    got = AveragePool_19(x, kernel_shape=kernel, count_include_pad=count_include_pad, **kw)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("xs", "kernel", "kw"), CASES)
@pytest.mark.parametrize("p", [1, 2, 3])
def test_lp_pool_matches_definition(xs, kernel, kw, p):
    x = rand(*xs)
    want, _ = pool_twin(x, kernel, "lp", p=p, **kw)
    np.testing.assert_allclose(
        LpPool_18(x, kernel_shape=kernel, p=p, **kw), want, rtol=1e-5, atol=1e-6
    )


def test_max_pool_through_runtime_with_and_without_indices():
    x = rand(1, 2, 5, 5)
    y, i = run_node(
        "MaxPool", [("x", x)], {"kernel_shape": [2, 2], "storage_order": 1}, opset=12, n_outputs=2
    )
    want, want_i = pool_twin(x, [2, 2], "max", storage_order=1)
    np.testing.assert_array_equal(y, want.astype(np.float32))
    np.testing.assert_array_equal(i, want_i)
    y1 = run_node("MaxPool", [("x", x)], {"kernel_shape": [2, 2]}, opset=7)
    np.testing.assert_array_equal(y1, y)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.float16])
def test_max_pool_keeps_integer_and_half_dtypes_and_padding_never_wins(dtype):
    x = (
        RNG.integers(-100, -1, (1, 1, 4, 5))
        if dtype == np.int8
        else RNG.integers(1, 200, (1, 1, 4, 5))
    )
    x = x.astype(dtype)
    got = MaxPool_10(x, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    assert got.dtype == dtype
    want, _ = pool_twin(x.astype(np.float64), [3, 3], "max", pads=[1, 1, 1, 1])
    np.testing.assert_array_equal(got.astype(np.float64), want)


def test_max_pool_window_entirely_in_padding_has_index_minus_one():
    x = rand(1, 1, 3)
    y, idx = MaxPool_10(x, kernel_shape=[2], pads=[2, 0], ctx=TWO_OUTPUTS)
    assert y[0, 0, 0] == -np.inf and idx[0, 0, 0] == -1
    pairs = [int(np.argmax(x[0, 0, :2])), 1 + int(np.argmax(x[0, 0, 1:]))]
    np.testing.assert_array_equal(idx[0, 0, 1:], [0, *pairs])


def test_average_pool_exact_mode_and_float16():
    x = rand(2, 3, 7, 6)
    want, _ = pool_twin(x, [3, 2], "avg", pads=[1, 0, 1, 1])
    exact = AveragePool_19(x, kernel_shape=[3, 2], pads=[1, 0, 1, 1], ctx=EXACT)
    assert exact.dtype == np.float32
    np.testing.assert_allclose(exact, want, rtol=1e-6)
    half = AveragePool_19(x.astype(np.float16), kernel_shape=[3, 2], pads=[1, 0, 1, 1])
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float64), want, rtol=3e-3, atol=3e-3)


def test_attributes_of_later_opsets_are_rejected_at_earlier_ones():
    x = rand(1, 1, 5, 5)
    with pytest.raises(UnsupportedError, match="dilations"):
        run_node("AveragePool", [("x", x)], {"kernel_shape": [2, 2], "dilations": [2, 2]}, opset=11)
    with pytest.raises(UnsupportedError, match="ceil_mode"):
        run_node("MaxPool", [("x", x)], {"kernel_shape": [2, 2], "ceil_mode": 1}, opset=8)


def test_average_pool_opset_1_excludes_padding():
    x = np.ones((1, 1, 3, 3), dtype=np.float32)
    got = run_node(
        "AveragePool", [("x", x)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, opset=1
    )
    np.testing.assert_array_equal(got, np.ones((1, 1, 3, 3)))
    counted = run_node(
        "AveragePool",
        [("x", x)],
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        opset=7,
    )
    assert counted[0, 0, 0, 0] == pytest.approx(4 / 9)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({}, "kernel_shape is required"),
        ({"kernel_shape": [2]}, "kernel_shape has 1 values, expected 2"),
        ({"kernel_shape": [2, 2], "storage_order": 2}, "storage_order=2 must be 0"),
        (
            {"kernel_shape": [7, 2]},
            "window extent 7 (kernel 7, dilation 1) is larger than the padded input 5",
        ),
        ({"kernel_shape": [2, 2], "auto_pad": "same"}, "auto_pad='same' is not one of"),
    ],
)
def test_max_pool_errors(kw, message):
    with pytest.raises(ValueError) as e:
        MaxPool_10(rand(1, 1, 5, 5), ctx=TWO_OUTPUTS, **kw)
    assert message in str(e.value)


# ----------------------------------------------------------------------------------------------
# Global pools
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 2, 4, 3), (1, 2, 3, 2, 4)])
def test_global_pools(shape):
    x = rand(*shape)
    axes = tuple(range(2, len(shape)))
    np.testing.assert_allclose(GlobalAveragePool(x), x.mean(axis=axes, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(GlobalMaxPool(x), x.max(axis=axes, keepdims=True))
    for p in (1, 2, 3):
        want = (np.abs(x.astype(np.float64)) ** p).sum(axis=axes, keepdims=True) ** (1 / p)
        np.testing.assert_allclose(GlobalLpPool(x, p=p), want, rtol=1e-5)
    assert GlobalAveragePool(x, ctx=EXACT).dtype == np.float32


def test_global_pool_rejects_rank_2():
    with pytest.raises(ValueError, match="rank >= 3"):
        GlobalMaxPool(rand(2, 3))


# ----------------------------------------------------------------------------------------------
# MaxUnpool and MaxRoiPool
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "kernel", "kw"),
    [
        ((1, 2, 5, 5), [2, 2], {"strides": [2, 2]}),
        ((2, 1, 7, 6), [3, 2], {"strides": [2, 2], "pads": [1, 0, 1, 0]}),
    ],
)
def test_max_unpool_inverts_max_pool_with_output_shape(shape, kernel, kw):
    x = (
        np.abs(rand(*shape)) + 0.1
    )  # positive, so re-pooling the zero-filled result finds the maxima
    y, idx = MaxPool_10(x, kernel_shape=kernel, ctx=TWO_OUTPUTS, **kw)
    up = MaxUnpool_9(y, idx, np.array(shape), kernel_shape=kernel, **kw)
    assert up.shape == shape
    flat = up.reshape(-1)
    np.testing.assert_array_equal(flat[idx.reshape(-1)], y.reshape(-1))
    np.testing.assert_array_equal(x.reshape(-1)[idx.reshape(-1)], y.reshape(-1))
    assert np.count_nonzero(flat) == len(np.unique(idx))
    again = MaxPool_10(up, kernel_shape=kernel, **kw)
    np.testing.assert_array_equal(again, y)


def test_max_unpool_infers_its_shape():
    y = np.array([[[[1, 2], [3, 4]]]], dtype=np.float32)
    idx = np.array([[[[5, 7], [13, 15]]]], dtype=np.int64)
    got = MaxUnpool_9(y, idx, kernel_shape=[2, 2], strides=[2, 2])
    np.testing.assert_array_equal(got, [[[[0, 0, 0, 0], [0, 1, 0, 2], [0, 0, 0, 0], [0, 3, 0, 4]]]])


def test_max_unpool_errors():
    y = np.ones((1, 1, 2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="outside the output of 16 elements"):
        MaxUnpool_9(
            y,
            np.array([[[[0, 1, 2, 16]]]]).reshape(1, 1, 2, 2),
            kernel_shape=[2, 2],
            strides=[2, 2],
        )
    with pytest.raises(ValueError, match="output_shape \\[4, 4\\] must have 4 values"):
        MaxUnpool_9(y, np.zeros((1, 1, 2, 2), np.int64), np.array([4, 4]), kernel_shape=[2, 2])


def roi_pool_twin(x, rois, ph, pw, scale):
    out = np.zeros((len(rois), x.shape[1], ph, pw), dtype=x.dtype)
    H, W = x.shape[2:]

    def rnd(v):
        return math.floor(v + 0.5) if v >= 0 else math.ceil(v - 0.5)

    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        xs, ys, xe, ye = rnd(x1 * scale), rnd(y1 * scale), rnd(x2 * scale), rnd(y2 * scale)
        bh, bw = max(ye - ys + 1, 1) / ph, max(xe - xs + 1, 1) / pw
        for i, j in itertools.product(range(ph), range(pw)):
            h0 = min(max(math.floor(i * bh) + ys, 0), H)
            h1 = min(max(math.ceil((i + 1) * bh) + ys, 0), H)
            w0 = min(max(math.floor(j * bw) + xs, 0), W)
            w1 = min(max(math.ceil((j + 1) * bw) + xs, 0), W)
            if h1 > h0 and w1 > w0:
                out[r, :, i, j] = x[int(b), :, h0:h1, w0:w1].max(axis=(1, 2))
    return out


def test_max_roi_pool_matches_definition():
    x = rand(2, 3, 9, 11)
    rois = np.array(
        [
            [0, 0, 0, 10, 8],
            [1, 2.4, 1.6, 7.5, 5.5],
            [1, -3, -3, 2, 2],
            [0, 20, 20, 30, 30],
            [0, 4, 4, 4, 4],
        ],
        dtype=np.float32,
    )
    got = MaxRoiPool(x, rois, pooled_shape=[3, 2], spatial_scale=0.9)
    np.testing.assert_array_equal(got, roi_pool_twin(x, rois, 3, 2, 0.9))
    with pytest.raises(ValueError, match="batch index 5"):
        MaxRoiPool(x, np.array([[5, 0, 0, 1, 1]], dtype=np.float32), pooled_shape=[1, 1])
