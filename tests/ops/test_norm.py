"""Normalization ops against float64 loop-light twins: versions, odd shapes, dtypes, exact mode."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tests.ops.node import run_node

from ember.errors import ExecutionError
from ember.ops.norm import (
    LRN,
    BatchNormalization_14,
    GroupNormalization_18,
    GroupNormalization_21,
    InstanceNormalization_6,
    LayerNormalization_17,
    LpNormalization,
    MeanVarianceNormalization_9,
    RMSNormalization_23,
)
from ember.ops.registry import OpContext

RNG = np.random.default_rng(0)
EXACT = OpContext(exact=True, n_outputs=3)
BF16 = np.dtype(ml_dtypes.bfloat16)


def rand(*shape: int, dtype=np.float32, loc: float = 0.0) -> np.ndarray:
    return (RNG.standard_normal(shape) + loc).astype(dtype)


def f32(v: float) -> float:
    """An attribute value as the model stores it (ONNX float attributes are float32)."""
    return float(np.float32(v))


def standardize(x, axes, eps):
    x = x.astype(np.float64)
    m = x.mean(axis=axes, keepdims=True)
    v = ((x - m) ** 2).mean(axis=axes, keepdims=True)
    return (x - m) / np.sqrt(v + eps), m, 1 / np.sqrt(v + eps)


def per_channel(p, ndim):
    return p.astype(np.float64).reshape((-1,) + (1,) * (ndim - 2))


# ----------------------------------------------------------------------------------------------
# BatchNormalization
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3), (1, 3, 5), (2, 3, 4, 5), (2, 1, 2, 3, 2)])
@pytest.mark.parametrize("opset", [6, 7, 9, 14, 15])
def test_batchnorm_inference(shape, opset) -> None:
    C = shape[1]
    x, s, b, m = rand(*shape), rand(C), rand(C), rand(C)
    v = np.abs(rand(C)) + 0.1
    attrs = {"epsilon": 1e-3}
    if opset == 6:
        attrs["is_test"] = 1
    got = run_node(
        "BatchNormalization", [("x", x), ("s", s), ("b", b), ("m", m), ("v", v)], attrs, opset=opset
    )
    nd = x.ndim
    want = (x - per_channel(m, nd)) / np.sqrt(per_channel(v, nd) + f32(1e-3)) * per_channel(
        s, nd
    ) + per_channel(b, nd)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_batchnorm_one_dimensional_input_has_one_channel() -> None:
    x = rand(6)
    one = np.ones(1, np.float32)
    got = BatchNormalization_14(x, one * 2, one, one * 0.5, one * 4)
    np.testing.assert_allclose(got, (x - 0.5) / np.sqrt(4 + 1e-5) * 2 + 1, rtol=1e-6)


@pytest.mark.parametrize("opset", [14, 15])
def test_batchnorm_training_mode(opset) -> None:
    x = rand(3, 2, 4, 5, loc=2.0)
    s, b, m, v = rand(2), rand(2), rand(2), np.abs(rand(2))
    y, rm, rv = run_node(
        "BatchNormalization",
        [("x", x), ("s", s), ("b", b), ("m", m), ("v", v)],
        {"training_mode": 1, "momentum": 0.8},
        opset=opset,
        n_outputs=3,
    )
    bm = x.astype(np.float64).mean(axis=(0, 2, 3))
    bv = x.astype(np.float64).var(axis=(0, 2, 3))  # population variance
    want = (x - per_channel(bm, 4)) / np.sqrt(per_channel(bv, 4) + f32(1e-5)) * per_channel(
        s, 4
    ) + per_channel(b, 4)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rm, m * f32(0.8) + bm * (1 - f32(0.8)), rtol=1e-5)
    np.testing.assert_allclose(rv, v * f32(0.8) + bv * (1 - f32(0.8)), rtol=1e-5)
    assert y.dtype == rm.dtype == rv.dtype == np.float32


def test_batchnorm_opset_15_keeps_each_output_type() -> None:
    x = rand(2, 3, 4, dtype=np.float16)
    s, b, m, v = rand(3), rand(3), rand(3, dtype=np.float64), np.abs(rand(3, dtype=np.float64))
    y, rm, rv = BatchNormalization_14(x, s, b, m, v, training_mode=1, ctx=OpContext(n_outputs=3))
    assert (y.dtype, rm.dtype, rv.dtype) == (np.float16, np.float64, np.float64)
    assert BatchNormalization_14(x, s, b, m, v + 1).dtype == np.float16


def test_batchnorm_opset_9_training_outputs_saved_statistics() -> None:
    x = rand(4, 3, 5)
    s, b, m, v = rand(3), rand(3), rand(3), np.abs(rand(3))
    outs = run_node(
        "BatchNormalization",
        [("x", x), ("s", s), ("b", b), ("m", m), ("v", v)],
        opset=9,
        n_outputs=5,
    )
    y, rm, rv, sm, sv = outs
    bm, bv = x.astype(np.float64).mean(axis=(0, 2)), x.astype(np.float64).var(axis=(0, 2))
    np.testing.assert_allclose(sm, bm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sv, bv, rtol=1e-5)
    np.testing.assert_allclose(rm, m * f32(0.9) + bm * (1 - f32(0.9)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, v * f32(0.9) + bv * (1 - f32(0.9)), rtol=1e-5)
    np.testing.assert_allclose(y.mean(axis=(0, 2)), b, rtol=1e-4, atol=1e-5)


def test_batchnorm_non_spatial_opset_7() -> None:
    x = rand(4, 2, 3)
    s, b, m = rand(2, 3), rand(2, 3), rand(2, 3)
    v = np.abs(rand(2, 3)) + 0.1
    got = run_node(
        "BatchNormalization",
        [("x", x), ("s", s), ("b", b), ("m", m), ("v", v)],
        {"spatial": 0},
        opset=7,
    )
    np.testing.assert_allclose(got, (x - m) / np.sqrt(v + f32(1e-5)) * s + b, rtol=1e-5, atol=1e-6)


def test_batchnorm_exact_mode_and_errors() -> None:
    x = rand(2, 3, 7, loc=1e3)
    s, b, m, v = rand(3), rand(3), rand(3, loc=1e3), np.abs(rand(3)) + 1
    want = (x - per_channel(m, 3)) / np.sqrt(per_channel(v, 3) + f32(1e-5)) * per_channel(
        s, 3
    ) + per_channel(b, 3)
    got = BatchNormalization_14(x, s, b, m, v, ctx=EXACT)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    with pytest.raises(ValueError, match=r"scale has 2 values, expected one per channel \(3\)"):
        BatchNormalization_14(x, s[:2], b, m, v)


# ----------------------------------------------------------------------------------------------
# InstanceNormalization
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 1, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_instancenorm(shape, dtype) -> None:
    x, s, b = (
        rand(*shape, dtype=dtype, loc=3.0),
        rand(shape[1], dtype=dtype),
        rand(shape[1], dtype=dtype),
    )
    got = run_node(
        "InstanceNormalization", [("x", x), ("s", s), ("b", b)], {"epsilon": 1e-2}, opset=22
    )
    norm, _, _ = standardize(x, tuple(range(2, x.ndim)), f32(1e-2))
    want = norm * per_channel(s, x.ndim) + per_channel(b, x.ndim)
    tol = 5e-3 if dtype == np.float16 else 1e-5
    assert got.dtype == dtype
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol)


def test_instancenorm_opset_1_accepts_consumed_inputs_and_rejects_rank_2() -> None:
    x, s, b = rand(2, 3, 4), rand(3), rand(3)
    np.testing.assert_allclose(
        run_node(
            "InstanceNormalization",
            [("x", x), ("s", s), ("b", b)],
            {"consumed_inputs": [0]},
            opset=1,
        ),
        InstanceNormalization_6(x, s, b),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match=r"needs an \(N, C, D1, ...\) input, got shape \(2, 3\)"):
        InstanceNormalization_6(rand(2, 3), s, b)


# ----------------------------------------------------------------------------------------------
# LayerNormalization / RMSNormalization
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, axis", [((5,), 0), ((2, 3), -1), ((2, 3), 0), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), -2)]
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_normalization(shape, axis, with_bias) -> None:
    x = rand(*shape, loc=5.0)
    k = axis % len(shape)
    scale = rand(*shape[k:])
    bias = rand(*shape[-1:]) if with_bias else None  # B broadcasts from the right
    inputs = [("x", x), ("s", scale)] + ([("b", bias)] if with_bias else [])
    y, mean, inv_std = run_node(
        "LayerNormalization", inputs, {"axis": axis, "epsilon": 1e-3}, opset=17, n_outputs=3
    )
    norm, m, r = standardize(x, tuple(range(k, x.ndim)), f32(1e-3))
    want = norm * scale + (bias if with_bias else 0)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert mean.shape == inv_std.shape == shape[:k] + (1,) * (len(shape) - k)
    np.testing.assert_allclose(mean, m, rtol=1e-6)
    np.testing.assert_allclose(inv_std, r, rtol=1e-5)


def test_layer_normalization_statistics_have_the_stash_type() -> None:
    x, s = rand(3, 8, dtype=np.float16), rand(8, dtype=np.float16)
    y, mean, inv_std = LayerNormalization_17(x, s, ctx=OpContext(n_outputs=3))
    assert (y.dtype, mean.dtype, inv_std.dtype) == (np.float16, np.float32, np.float32)
    assert LayerNormalization_17(x, s, ctx=OpContext(n_outputs=1)).dtype == np.float16
    x64 = rand(3, 8, dtype=np.float64)
    y64, mean64, _ = LayerNormalization_17(x64, np.ones(8), ctx=OpContext(n_outputs=3))
    assert mean64.dtype == np.float32
    norm, _, _ = standardize(x64, (1,), f32(1e-5))
    np.testing.assert_allclose(y64, norm, rtol=1e-12)  # a float64 X is not squeezed through float32
    with pytest.raises(ValueError, match=r"stash_type=7 is not a floating-point type"):
        LayerNormalization_17(x, s, stash_type=7)


def test_layer_and_rms_normalization_scale_must_not_grow_x() -> None:
    with pytest.raises(ValueError, match=r"Scale and B must broadcast to X's shape \(3, 4\)"):
        LayerNormalization_17(rand(3, 4), rand(2, 3, 4))
    with pytest.raises(ValueError, match=r"RMSNormalization: scale must broadcast to X's shape"):
        RMSNormalization_23(rand(3, 4), rand(2, 1, 4))


def test_layer_normalization_exact_mode() -> None:
    x, s, b = rand(4, 33, loc=1e4), rand(33), rand(33)
    norm, _, _ = standardize(x, (1,), f32(1e-5))
    y = LayerNormalization_17(x, s, b, ctx=OpContext(exact=True, n_outputs=1))
    np.testing.assert_array_equal(y, (norm * s + b).astype(np.float32))


@pytest.mark.parametrize(
    "shape, axis", [((7,), 0), ((2, 3), -1), ((2, 3, 4), 1), ((2, 3, 4, 5), -3)]
)
def test_rms_normalization(shape, axis) -> None:
    x = rand(*shape)
    k = axis % len(shape)
    scale = rand(*shape[k:])
    got = run_node(
        "RMSNormalization", [("x", x), ("s", scale)], {"axis": axis, "epsilon": 1e-3}, opset=23
    )
    x64 = x.astype(np.float64)
    rms = np.sqrt((x64**2).mean(axis=tuple(range(k, x.ndim)), keepdims=True) + f32(1e-3))
    np.testing.assert_allclose(got, x64 / rms * scale, rtol=1e-5, atol=1e-6)


def test_rms_normalization_output_has_scale_type() -> None:
    x, s = rand(2, 6, dtype=np.float16), rand(6, dtype=np.float32)
    assert RMSNormalization_23(x, s).dtype == np.float32
    xb = rand(2, 6, dtype=BF16)
    assert RMSNormalization_23(xb, np.ones(6, BF16)).dtype == BF16


# ----------------------------------------------------------------------------------------------
# GroupNormalization: opset 18 scales per group, opset 21 per channel
# ----------------------------------------------------------------------------------------------


def group_twin(x, G, eps):
    xg = x.astype(np.float64).reshape(x.shape[0], G, -1)
    norm, _, _ = standardize(xg, (2,), eps)
    return norm.reshape(x.shape)


@pytest.mark.parametrize(
    "shape, G", [((2, 4, 3), 2), ((1, 6, 2, 2), 3), ((2, 6, 5), 6), ((3, 4), 1)]
)
def test_group_normalization_21_per_channel(shape, G) -> None:
    x, s, b = rand(*shape, loc=2.0), rand(shape[1]), rand(shape[1])
    got = run_node(
        "GroupNormalization",
        [("x", x), ("s", s), ("b", b)],
        {"num_groups": G, "epsilon": 1e-3},
        opset=21,
    )
    want = group_twin(x, G, f32(1e-3)) * per_channel(s, x.ndim) + per_channel(b, x.ndim)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, G", [((2, 4, 3), 2), ((1, 6, 2, 2), 3)])
def test_group_normalization_18_per_group(shape, G) -> None:
    x, s, b = rand(*shape), rand(G), rand(G)
    got = run_node(
        "GroupNormalization", [("x", x), ("s", s), ("b", b)], {"num_groups": G}, opset=18
    )
    ch = shape[1] // G
    want = group_twin(x, G, f32(1e-5)) * per_channel(np.repeat(s, ch), x.ndim) + per_channel(
        np.repeat(b, ch), x.ndim
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_group_normalization_errors() -> None:
    x = rand(2, 6, 3)
    with pytest.raises(ValueError, match="num_groups=4 does not divide the 6 channels"):
        GroupNormalization_21(x, rand(6), rand(6), num_groups=4)
    with pytest.raises(
        ValueError,
        match=r"scale has 3 values, expected one per group \(2\); opset 21 takes one per channel",
    ):
        GroupNormalization_18(x, rand(3), rand(3), num_groups=2)
    with pytest.raises(ValueError, match=r"scale has 3 values, expected one per channel \(6\)"):
        GroupNormalization_21(x, rand(3), rand(3), num_groups=3)
    with pytest.raises(ValueError, match="needs the num_groups attribute"):
        GroupNormalization_21(x, rand(6), rand(6))


def test_group_normalization_half_precision() -> None:
    x, s, b = (
        rand(2, 4, 8, dtype=np.float16, loc=100.0),
        np.ones(4, np.float16),
        np.zeros(4, np.float16),
    )
    got = GroupNormalization_21(x, s, b, num_groups=2)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), group_twin(x, 2, f32(1e-5)), atol=5e-3)


# ----------------------------------------------------------------------------------------------
# LRN, LpNormalization, MeanVarianceNormalization
# ----------------------------------------------------------------------------------------------


def lrn_twin(x, size, alpha, beta, bias):
    C = x.shape[1]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = np.zeros(x.shape)
    for c in range(C):
        sq[:, c] = (x[:, max(0, c - lo) : min(C, c + hi + 1)].astype(np.float64) ** 2).sum(axis=1)
    return x / (bias + alpha / size * sq) ** beta


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("shape", [(2, 5, 3, 3), (1, 3, 4), (2, 4, 1, 2, 3)])
def test_lrn(size, shape) -> None:
    x = rand(*shape)
    attrs = {"size": size, "alpha": 0.01, "beta": 0.6, "bias": 2.0}
    got = run_node("LRN", [("x", x)], attrs, opset=13)
    np.testing.assert_allclose(got, lrn_twin(x, size, f32(0.01), f32(0.6), 2.0), rtol=1e-5)


def test_lrn_errors() -> None:
    with pytest.raises(ValueError, match="LRN needs the size attribute"):
        LRN(rand(1, 2, 3))
    with pytest.raises(ValueError, match="size must be >= 1, got 0"):
        LRN(rand(1, 2, 3), size=0)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_lp_normalization(p, axis) -> None:
    x = rand(3, 4, 5)
    x[1, :, 2] = 0  # an all-zero slice along axis 1
    x[:, 0, 0] = 0  # ... and along axis 0
    got = run_node("LpNormalization", [("x", x)], {"p": p, "axis": axis}, opset=22)
    norm = np.linalg.norm(x.astype(np.float64), ord=p, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore"):
        want = np.where(norm == 0, 0, x / norm)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.isfinite(got).all()


def test_lp_normalization_rejects_other_p() -> None:
    with pytest.raises(ExecutionError, match="p must be 1 or 2, got 3"):
        run_node("LpNormalization", [("x", rand(2, 2))], {"p": 3}, opset=22)


@pytest.mark.parametrize("axes", [None, [0, 2, 3], [1], [-1, -2], [0, 1, 2, 3]])
def test_mean_variance_normalization(axes) -> None:
    x = rand(2, 3, 4, 5, loc=10.0)
    attrs = {} if axes is None else {"axes": axes}
    got = run_node("MeanVarianceNormalization", [("x", x)], attrs, opset=13)
    red = tuple(a % 4 for a in (axes or [0, 2, 3]))
    x64 = x.astype(np.float64)
    d = x64 - x64.mean(axis=red, keepdims=True)
    want = d / (np.sqrt((d**2).mean(axis=red, keepdims=True)) + 1e-9)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_mean_variance_normalization_rejects_repeated_axes() -> None:
    with pytest.raises(ValueError, match="repeat an axis"):
        MeanVarianceNormalization_9(rand(2, 3), axes=[1, -1])


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=4, min_side=2, max_side=5),
        elements=st.floats(-1e3, 1e3),
    ),
    st.floats(1e-6, 1e-1),
)
def test_normalized_rows_have_zero_mean_and_unit_variance(x, eps) -> None:
    y, _, inv_std = LayerNormalization_17(
        x, np.ones(x.shape[-1]), epsilon=eps, ctx=OpContext(n_outputs=3)
    )
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-9)
    var = x.var(axis=-1, keepdims=True)
    np.testing.assert_allclose(
        y.var(axis=-1, keepdims=True), var / (var + eps), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(inv_std, 1 / np.sqrt(var + eps), rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
        elements=st.floats(-1e3, 1e3),
    )
)
def test_lp_normalized_slices_have_unit_norm(x) -> None:
    y = LpNormalization(x, axis=-1, p=2)
    n = np.linalg.norm(y, axis=-1)
    nonzero = (x != 0).any(axis=-1)
    np.testing.assert_allclose(n[nonzero], 1, rtol=1e-12)
    assert (n[~nonzero] == 0).all()


def test_lp_normalization_survives_tiny_and_huge_values() -> None:
    # Squaring 1e-162 underflows and 1e200 overflows; the norm must not.
    np.testing.assert_allclose(LpNormalization(np.array([9.07e-162]), axis=-1, p=2), [1.0])
    np.testing.assert_allclose(
        LpNormalization(np.array([3e200, 4e200]), axis=-1, p=2), [0.6, 0.8], rtol=1e-15
    )
