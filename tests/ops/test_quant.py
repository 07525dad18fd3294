"""Quantization ops and the pure quantization math: granularities, rounding, saturation, every
quantized dtype, the integer compute ops against float twins, and the errors a user reads."""

from __future__ import annotations

import functools

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto
from tests.ops.node import run_node as _run_node

from ember.errors import ExecutionError
from ember.ops.quant import (
    ConvInteger_10,
    DequantizeLinear_10,
    DequantizeLinear_23,
    DynamicQuantizeLinear_11,
    MatMulInteger_10,
    QLinearConv_10,
    QLinearMatMul_10,
    QuantizeLinear_10,
    QuantizeLinear_19,
    QuantizeLinear_23,
    dequantize,
    expand_qparam,
    quantize,
    saturate_cast,
)

run_node = functools.partial(_run_node, opset=21)

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------------------------
# expand_qparam: one path for per-tensor, per-axis and blocked
# ----------------------------------------------------------------------------------------------


def test_expand_per_tensor_per_axis_and_blocked():
    assert expand_qparam(np.array(2.0), (3, 4), axis=1).shape == ()
    assert expand_qparam(np.array([2.0]), (3, 4), axis=1).shape == ()
    assert expand_qparam(np.arange(4.0), (3, 4), axis=1).shape == (1, 4)
    assert expand_qparam(np.arange(3.0), (3, 4), axis=-2).shape == (3, 1)
    blocked = expand_qparam(np.array([[1.0, 2.0, 3.0]]), (1, 5), axis=1, block_size=2)
    # The last block is partial: ceil(5 / 2) = 3 blocks cover 2 + 2 + 1 elements.
    np.testing.assert_array_equal(blocked, [[1, 1, 2, 2, 3]])
    # A blocked parameter along axis 0 of a 3-D input.
    p = RNG.standard_normal((2, 3, 4))
    e = expand_qparam(p, (6, 3, 4), axis=0, block_size=3)
    np.testing.assert_array_equal(e[0:3], np.broadcast_to(p[0], (3, 3, 4)))
    np.testing.assert_array_equal(e[3:6], np.broadcast_to(p[1], (3, 3, 4)))


def test_expand_errors_say_what_granularity_failed():
    with pytest.raises(ValueError, match="needs a positive block_size"):
        expand_qparam(np.ones((3, 2)), (3, 4), axis=1)
    with pytest.raises(ValueError, match=r"needs ceil\(4/3\) = 2"):
        expand_qparam(np.ones((3, 3)), (3, 4), axis=1, block_size=3)
    with pytest.raises(ValueError, match=r"per-axis scale has 5 values but axis 1 of the input"):
        expand_qparam(np.ones(5), (3, 4), axis=1)
    with pytest.raises(ValueError, match="does not broadcast to the input shape"):
        expand_qparam(np.ones((2, 4)), (3, 4), axis=1)
    with pytest.raises(ValueError, match="fits neither per-tensor"):
        expand_qparam(np.ones((2, 2)), (2, 2, 2), axis=0)
    with pytest.raises(ValueError, match="out of range"):
        expand_qparam(np.ones(3), (3, 4), axis=2)


# ----------------------------------------------------------------------------------------------
# quantize / dequantize / saturate_cast
# ----------------------------------------------------------------------------------------------


def test_quantize_rounds_half_to_even_and_saturates():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0], np.float32)
    y = quantize(x, np.array(1.0, np.float32), None, np.dtype(np.int8))
    np.testing.assert_array_equal(y, [0, 2, 2, 0, -2, 127, -128])
    y = quantize(x, np.array(1.0, np.float32), np.array(10, np.uint8), np.dtype(np.uint8))
    np.testing.assert_array_equal(y, [10, 12, 12, 10, 8, 255, 0])


@pytest.mark.parametrize(
    ("dtype", "lo", "hi"),
    [
        (np.uint8, 0, 255),
        (np.int8, -128, 127),
        (np.uint16, 0, 65535),
        (np.int16, -32768, 32767),
        (ml_dtypes.uint4, 0, 15),
        (ml_dtypes.int4, -8, 7),
        (ml_dtypes.uint2, 0, 3),
        (ml_dtypes.int2, -2, 1),
    ],
)
def test_integer_types_clip_to_their_range(dtype, lo, hi):
    x = np.array([-1e6, lo - 1, lo, 0, hi, hi + 1, 1e6], np.float32)
    y = quantize(x, np.array(1.0, np.float32), None, np.dtype(dtype))
    assert y.dtype == dtype
    np.testing.assert_array_equal(y.astype(np.int64), np.clip(x, lo, hi).astype(np.int64))


def test_float8_saturation_follows_the_spec_table():
    x = np.array([np.inf, -np.inf, 1e6, np.nan, 0.3], np.float32)
    e4 = np.dtype(ml_dtypes.float8_e4m3fn)
    sat = saturate_cast(x, e4).astype(np.float32)
    np.testing.assert_array_equal(sat[:3], [448.0, -448.0, 448.0])
    assert np.isnan(sat[3]) and sat[4] == np.float32(ml_dtypes.float8_e4m3fn(0.3))
    raw = saturate_cast(x, e4, saturate=False).astype(np.float32)
    assert np.isnan(raw[:4]).all()  # e4m3fn has no infinity: overflow is NaN
    e5 = np.dtype(ml_dtypes.float8_e5m2)
    np.testing.assert_array_equal(
        saturate_cast(x[:3], e5, saturate=False).astype(np.float32), [np.inf, -np.inf, np.inf]
    )
    np.testing.assert_array_equal(
        saturate_cast(x[:3], e5).astype(np.float32), [57344.0, -57344.0, 57344.0]
    )


def test_float4_quantize_saturates_without_a_flag():
    x = np.array([100.0, -100.0, 1.2, 2.6], np.float32)
    y = quantize(x, np.array(1.0, np.float32), None, np.dtype(ml_dtypes.float4_e2m1fn))
    np.testing.assert_array_equal(y.astype(np.float32), [6.0, -6.0, 1.0, 3.0])


def test_dequantize_subtracts_the_zero_point_exactly():
    x = np.array([2**31 - 1, -(2**31)], np.int32)
    y = dequantize(x, np.array(1.0, np.float32), None, np.dtype(np.float32))
    np.testing.assert_array_equal(y, np.array([2**31 - 1, -(2**31)], np.float64).astype(np.float32))
    x = np.array([0, 255], np.uint8)
    y = dequantize(x, np.array(0.5, np.float32), np.array(128, np.uint8), np.dtype(np.float16))
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, [-64.0, 63.5])


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.floats(-100, 100, width=32), min_size=1, max_size=20),
    scale=st.floats(0.015625, 4.0, width=32),
    zero_point=st.integers(0, 255),
)
def test_round_trip_error_is_at_most_half_a_step(data, scale, zero_point):
    x = np.array(data, np.float32)
    s = np.array(scale, np.float32)
    zp = np.array(zero_point, np.uint8)
    q = quantize(x, s, zp, np.dtype(np.uint8))
    back = dequantize(q, s, zp, np.dtype(np.float32))
    lo, hi = (0 - zero_point) * scale, (255 - zero_point) * scale
    inside = (x >= lo) & (x <= hi)
    np.testing.assert_array_less(np.abs(back - x)[inside], scale / 2 * (1 + 1e-5) + 1e-6)
    # Outside the representable range the value saturates to the nearest end.
    assert np.all(back[x < lo] == np.float32((0 - zero_point) * np.float32(scale)))


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.integers(-8, 7), min_size=1, max_size=16),
    scale=st.sampled_from([0.25, 0.5, 1.0, 3.0]),
)
def test_int4_dequantize_then_quantize_is_identity(values, scale):
    q = np.array(values, np.int8).astype(ml_dtypes.int4)
    s = np.array(scale, np.float32)
    x = dequantize(q, s, None, np.dtype(np.float32))
    back = quantize(x, s, None, np.dtype(ml_dtypes.int4))
    np.testing.assert_array_equal(back.astype(np.int8), q.astype(np.int8))


# ----------------------------------------------------------------------------------------------
# QuantizeLinear / DequantizeLinear through the runtime, per opset
# ----------------------------------------------------------------------------------------------


def test_quantize_linear_per_axis_and_blocked_through_models():
    x = RNG.standard_normal((2, 6)).astype(np.float32) * 10
    s = np.array([0.5, 2.0], np.float32)
    zp = np.array([100, 3], np.uint8)
    y = run_node("QuantizeLinear", [("x", x), ("s", s), ("zp", zp)], {"axis": 0}, opset=13)
    expected = np.clip(np.rint(x / s[:, None]) + zp[:, None], 0, 255)
    np.testing.assert_array_equal(y, expected)

    sb = np.abs(RNG.standard_normal((2, 2))).astype(np.float32) + 0.1
    y = run_node(
        "QuantizeLinear",
        [("x", x), ("s", sb)],
        {"axis": 1, "block_size": 3, "output_dtype": TensorProto.INT8},
        opset=21,
    )
    assert y.dtype == np.int8
    np.testing.assert_array_equal(y, np.clip(np.rint(x / np.repeat(sb, 3, axis=1)), -128, 127))
    back = run_node(
        "DequantizeLinear", [("q", y), ("s", sb)], {"axis": 1, "block_size": 3}, opset=21
    )
    np.testing.assert_allclose(back, y * np.repeat(sb, 3, axis=1), rtol=1e-6)


def test_default_output_is_uint8_and_output_dtype_must_match_zero_point():
    y = QuantizeLinear_10(np.array([1.0, -1.0], np.float32), np.array(0.5, np.float32))
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(y, [2, 0])
    with pytest.raises(ValueError, match=r"output_dtype \(int8\) and y_zero_point \(uint8\)"):
        QuantizeLinear_23(
            np.ones(2, np.float32),
            np.array(1.0, np.float32),
            np.array(0, np.uint8),
            output_dtype=TensorProto.INT8,
        )
    with pytest.raises(ValueError, match="cannot produce float32"):
        QuantizeLinear_23(
            np.ones(2, np.float32), np.array(1.0, np.float32), output_dtype=TensorProto.FLOAT
        )


def test_old_opsets_refuse_blocked_scales():
    with pytest.raises(ValueError, match="scalar or 1-D at this opset"):
        QuantizeLinear_19(np.ones((2, 4), np.float32), np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="scalar or 1-D at this opset"):
        DequantizeLinear_10(np.ones((2, 4), np.uint8), np.ones((2, 2), np.float32))


def test_quantize_precision_attribute_sets_the_division_dtype():
    # 2.5 + 2**-10 is a tie in float16 (ulp 2**-9 there) that rounds to 2.5, then to 2 (even);
    # in float32 it stays above 2.5 and rounds to 3.
    x = np.array([2.5 + 2.0**-10], np.float32)
    s = np.array(1.0, np.float32)
    assert QuantizeLinear_23(x, s, precision=TensorProto.FLOAT16)[0] == 2
    assert QuantizeLinear_23(x, s)[0] == 3
    with pytest.raises(ValueError, match="precision=999 is not an ONNX tensor data type"):
        QuantizeLinear_23(x, s, precision=999)


def test_float8_quantize_through_a_model_honours_saturate():
    x = np.array([1000.0, -3.0], np.float32)
    zp = np.zeros(1, ml_dtypes.float8_e4m3fn)
    s = np.array(1.0, np.float32)
    y = run_node("QuantizeLinear", [("x", x), ("s", s), ("zp", zp)], opset=19)
    np.testing.assert_array_equal(y.astype(np.float32), [448.0, -3.0])
    y = run_node("QuantizeLinear", [("x", x), ("s", s), ("zp", zp)], {"saturate": 0}, opset=19)
    assert np.isnan(y.astype(np.float32)[0])


def test_dequantize_output_dtype_and_scale_dtype():
    x = np.array([0, 4], np.int8)
    y = DequantizeLinear_23(x, np.array(0.5, np.float16))
    assert y.dtype == np.float16
    y = DequantizeLinear_23(x, np.array(0.5, np.float32), output_dtype=TensorProto.BFLOAT16)
    assert y.dtype == ml_dtypes.bfloat16
    e8 = np.array(4.0, ml_dtypes.float8_e8m0fnu)
    np.testing.assert_array_equal(
        DequantizeLinear_23(x, e8, output_dtype=TensorProto.FLOAT), [0, 16]
    )
    with pytest.raises(ValueError, match="set output_dtype when x_scale is float8e8m0"):
        DequantizeLinear_23(x, e8)
    with pytest.raises(ValueError, match=r"x_zero_point \(uint8\) must have x's type \(int8\)"):
        DequantizeLinear_23(x, np.array(1.0, np.float32), np.array(0, np.uint8))
    with pytest.raises(ValueError, match="int32 x has no zero point"):
        DequantizeLinear_23(np.ones(2, np.int32), np.array(1.0, np.float32), np.array(3, np.int32))


def test_quantize_error_surfaces_with_the_node_name():
    with pytest.raises(ExecutionError, match=r"QuantizeLinear.*needs a positive block_size"):
        run_node(
            "QuantizeLinear",
            [("x", np.ones((2, 4), np.float32)), ("s", np.ones((2, 2), np.float32))],
            {"axis": 1},
            opset=21,
        )


def test_dynamic_quantize_linear():
    x = np.array([0.0, 2.0, -3.0, -2.5, 1.34, 0.5], np.float32)
    y, scale, zp = run_node("DynamicQuantizeLinear", [("x", x)], opset=11, n_outputs=3)
    assert (y.dtype, scale.dtype, zp.dtype) == (np.uint8, np.float32, np.uint8)
    assert scale.shape == () and zp.shape == ()
    np.testing.assert_allclose(scale, (2.0 + 3.0) / 255, rtol=1e-6)
    assert zp == 153  # rint(3 / scale)
    np.testing.assert_array_equal(y, np.clip(np.rint(x / scale) + zp, 0, 255))
    y, scale, zp = DynamicQuantizeLinear_11(np.zeros(3, np.float32))  # max == min: scale 1/255
    assert zp == 0 and np.all(y == 0)
    _, _, zp = DynamicQuantizeLinear_11(np.array([1.0, 2.0], np.float32))  # range includes 0
    assert zp == 0


# ----------------------------------------------------------------------------------------------
# Integer compute ops against float twins
# ----------------------------------------------------------------------------------------------


def conv_twin(x, w, strides, pads, dilations, group):
    """Direct 2-D grouped convolution, one output element at a time."""
    N, _, H, W = x.shape
    M, Cg, KH, KW = w.shape
    xp = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    OH = (H + pads[0] + pads[2] - dilations[0] * (KH - 1) - 1) // strides[0] + 1
    OW = (W + pads[1] + pads[3] - dilations[1] * (KW - 1) - 1) // strides[1] + 1
    y = np.zeros((N, M, OH, OW))
    Mg = M // group
    for n in range(N):
        for m in range(M):
            g = m // Mg
            for i in range(OH):
                for j in range(OW):
                    patch = xp[
                        n,
                        g * Cg : (g + 1) * Cg,
                        i * strides[0] : i * strides[0] + dilations[0] * (KH - 1) + 1 : dilations[
                            0
                        ],
                        j * strides[1] : j * strides[1] + dilations[1] * (KW - 1) + 1 : dilations[
                            1
                        ],
                    ]
                    y[n, m, i, j] = np.sum(patch * w[m])
    return y


@pytest.mark.parametrize(
    ("strides", "pads", "dilations", "group"),
    [
        ([1, 1], [0, 0, 0, 0], [1, 1], 1),
        ([2, 1], [1, 0, 2, 1], [1, 2], 2),
        ([1, 2], [1, 1, 1, 1], [2, 1], 4),
    ],
)
def test_conv_integer_matches_twin(strides, pads, dilations, group):
    x = RNG.integers(0, 256, (2, 4, 7, 6)).astype(np.uint8)
    w = RNG.integers(-128, 128, (4, 4 // group, 3, 2)).astype(np.int8)
    x_zp = np.array(131, np.uint8)
    w_zp = RNG.integers(-5, 5, 4).astype(np.int8)
    attrs = {"strides": strides, "pads": pads, "dilations": dilations, "group": group}
    y = run_node("ConvInteger", [("x", x), ("w", w), ("xz", x_zp), ("wz", w_zp)], attrs, opset=10)
    xs = x.astype(np.int64) - 131
    ws = w.astype(np.int64) - w_zp.astype(np.int64)[:, None, None, None]
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, conv_twin(xs, ws, strides, pads, dilations, group))


def test_conv_integer_same_padding_and_errors():
    x = RNG.integers(0, 256, (1, 1, 5, 5)).astype(np.uint8)
    w = np.ones((1, 1, 3, 3), np.uint8)
    y = ConvInteger_10(x, w, auto_pad="SAME_UPPER", strides=[2, 2])
    assert y.shape == (1, 1, 3, 3)
    assert y[0, 0, 0, 0] == int(x[0, 0, :2, :2].astype(np.int64).sum())
    with pytest.raises(ValueError, match="group=2 does not fit"):
        ConvInteger_10(x, w, group=2)
    with pytest.raises(ValueError, match="x_zero_point must be a scalar"):
        ConvInteger_10(x, w, np.zeros(2, np.uint8))


def test_qlinear_conv_per_channel_with_bias():
    x = RNG.integers(0, 256, (1, 3, 5, 5)).astype(np.uint8)
    w = RNG.integers(-128, 128, (2, 3, 3, 3)).astype(np.int8)
    b = np.array([100, -2000], np.int32)
    xs, xz = np.array(0.02, np.float32), np.array(120, np.uint8)
    ws, wz = np.array([0.01, 0.003], np.float32), np.array([0, 3], np.int8)
    ys, yz = np.array(0.5, np.float32), np.array(10, np.uint8)
    y = QLinearConv_10(x, xs, xz, w, ws, wz, ys, yz, b, pads=[1, 1, 1, 1])
    acc = (
        conv_twin(
            x.astype(np.int64) - 120,
            w.astype(np.int64) - wz.astype(np.int64)[:, None, None, None],
            [1, 1],
            [1, 1, 1, 1],
            [1, 1],
            1,
        )
        + b[None, :, None, None]
    )
    real = acc * (xs * ws / ys).astype(np.float64)[None, :, None, None] + 10
    assert y.dtype == np.uint8 and y.shape == (1, 2, 5, 5)
    np.testing.assert_array_equal(y, np.clip(np.rint(real), 0, 255))
    with pytest.raises(ValueError, match="w_scale has 3 values; expected 1 or one per output"):
        QLinearConv_10(x, xs, xz, w, np.ones(3, np.float32), wz, ys, yz)


def test_matmul_integer_per_row_and_per_column_zero_points():
    a = RNG.integers(0, 256, (2, 3, 4)).astype(np.uint8)
    b = RNG.integers(-128, 128, (4, 5)).astype(np.int8)
    a_zp = np.array([1, 2, 3], np.uint8)  # per row of A
    b_zp = RNG.integers(-3, 3, 5).astype(np.int8)  # per column of B
    y = run_node("MatMulInteger", [("a", a), ("b", b), ("az", a_zp), ("bz", b_zp)], opset=10)
    expected = (a.astype(np.int64) - a_zp[:, None]) @ (b.astype(np.int64) - b_zp)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(MatMulInteger_10(a, b), a.astype(np.int64) @ b.astype(np.int64))
    with pytest.raises(ValueError, match="inner dimensions differ"):
        MatMulInteger_10(a, b.T)


@pytest.mark.parametrize("scale_dtype", [np.float32, np.float16])
def test_qlinear_matmul_requantizes(scale_dtype):
    a = RNG.integers(-128, 128, (3, 4)).astype(np.int8)
    b = RNG.integers(-128, 128, (4, 2)).astype(np.int8)
    a_s, b_s, y_s = (np.array(v, scale_dtype) for v in (0.05, 0.02, 0.3))
    a_z, b_z, y_z = np.array(3, np.int8), np.array(-1, np.int8), np.array(-5, np.int8)
    y = run_node(
        "QLinearMatMul",
        [
            ("a", a),
            ("as", a_s),
            ("az", a_z),
            ("b", b),
            ("bs", b_s),
            ("bz", b_z),
            ("ys", y_s),
            ("yz", y_z),
        ],
        opset=21,
    )
    acc = (a.astype(np.int64) - 3) @ (b.astype(np.int64) + 1)
    real = acc * np.float64(a_s * b_s / y_s) - 5
    assert y.dtype == np.int8
    np.testing.assert_array_equal(y, np.clip(np.rint(real), -128, 127))


def test_qlinear_matmul_float8_operands():
    a = np.array([[1.0, 2.0], [0.5, -4.0]], np.float32).astype(ml_dtypes.float8_e4m3fn)
    b = np.eye(2, dtype=np.float32).astype(ml_dtypes.float8_e4m3fn)
    one = np.array(1.0, np.float32)
    z = np.zeros((), ml_dtypes.float8_e4m3fn)
    y = QLinearMatMul_10(a, one, z, b, one, z, np.array(0.5, np.float32), z)
    assert y.dtype == ml_dtypes.float8_e4m3fn
    np.testing.assert_array_equal(y.astype(np.float32), [[2.0, 4.0], [1.0, -8.0]])
