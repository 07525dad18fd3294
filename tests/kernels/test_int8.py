"""The int8 kernels (ember.kernels.cpu.int8) against ember.ops.quant's reference ops.

The accumulation is exact int32 in both; the kernels rescale it in float32 where the references use
float64, so a requantized value may land 1 LSB away when the float64 value sits within float32
rounding of a .5 tie. Every comparison allows that 1 LSB and checks that such cases are rare.
"""

from __future__ import annotations

import numpy as np
import pytest

from ember.kernels.cpu import int8
from ember.ops import fused, quant

RNG = np.random.default_rng(0)


def _close_int(got: np.ndarray, want: np.ndarray) -> None:
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert diff.max() <= 1, f"off by {diff.max()} LSB"
    assert (diff != 0).mean() < 0.01  # ties only


def _x(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, shape).astype(dtype)


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


CONV_CASES = [
    # (N, C, H, W, K, kernel, group, strides, pads, x dtype, per_channel)
    (1, 3, 13, 11, 7, 3, 1, [1, 1], [1, 1, 1, 1], np.uint8, True),
    (2, 5, 9, 7, 6, 3, 1, [2, 2], [1, 0, 2, 1], np.uint8, False),
    (2, 8, 10, 9, 8, 3, 8, [2, 2], [1, 1, 1, 1], np.uint8, True),  # depthwise
    (1, 17, 7, 5, 33, 1, 1, [1, 1], [0, 0, 0, 0], np.int8, True),
    (3, 6, 6, 6, 4, 2, 2, [1, 1], [0, 0, 0, 0], np.int8, False),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("channels_last", [True, False])
def test_qconv_matches_qlinearconv(case: tuple, channels_last: bool) -> None:
    N, C, H, W, K, k, group, strides, pads, xdt, per_channel = case
    x = _x((N, C, H, W), xdt)
    w = _x((K, C // group, k, k), np.int8)
    w[w == -128] = -127
    x_scale, x_zp = np.float32(0.02), np.array(17 if xdt == np.uint8 else -3, xdt)
    w_scale = (RNG.random(K if per_channel else 1) * 0.01 + 0.001).astype(np.float32)
    y_scale, y_zp = np.float32(0.05), np.array(100, np.uint8)
    b32 = RNG.integers(-2000, 2000, K).astype(np.int32)
    want = quant.QLinearConv_10(
        x,
        x_scale,
        x_zp,
        w,
        w_scale,
        np.zeros(w_scale.shape, np.int8),
        y_scale,
        y_zp,
        b32,
        group=group,
        strides=strides,
        pads=pads,
    )
    bias = (b32 * (np.float64(x_scale) * w_scale.astype(np.float64))).astype(np.float32)
    conv = int8.QConv(
        w,
        w_scale,
        bias,
        x_scale=x_scale,
        x_zero_point=int(x_zp),
        x_dtype=xdt,
        y_scale=y_scale,
        y_zero_point=100,
        y_dtype=np.uint8,
        strides=strides,
        pads=pads,
        group=group,
        channels_last=channels_last,
    )
    got = conv(_nhwc(x) if channels_last else x)
    assert got.dtype == np.uint8
    _close_int(np.moveaxis(got, -1, 1) if channels_last else got, want)


def _qconv_reference(x, w, w_scale, bias, z, **kw):  # NHWC in and out, through the ai.ember op
    return fused.QConv(
        x,
        np.float32(0.02),
        np.array(9, np.uint8),
        w,
        w_scale,
        kw.pop("y_scale", None),
        kw.pop("y_zero_point", None),
        bias,
        z,
        kw.pop("z_scale", None),
        kw.pop("z_zero_point", None),
        channels_last=1,
        **kw,
    )


def test_qconv_residual_and_activation_match_the_fused_op() -> None:
    x = _x((2, 11, 9, 4), np.uint8)
    w = _x((6, 4, 3, 3), np.int8)
    w_scale = (RNG.random(6) * 0.01).astype(np.float32)
    bias = RNG.standard_normal(6).astype(np.float32)
    z = _x((2, 11, 9, 6), np.uint8)
    conv = int8.QConv(
        w,
        w_scale,
        bias,
        x_scale=0.02,
        x_zero_point=9,
        y_scale=0.04,
        y_zero_point=20,
        y_dtype=np.uint8,
        z_scale=0.03,
        z_zero_point=50,
        pads=[1, 1, 1, 1],
        activation="Relu",
    )
    want = _qconv_reference(
        x,
        w,
        w_scale,
        bias,
        z,
        y_scale=np.float32(0.04),
        y_zero_point=np.array(20, np.uint8),
        z_scale=np.float32(0.03),
        z_zero_point=np.array(50, np.uint8),
        pads=[1, 1, 1, 1],
        activation="Relu",
    )
    _close_int(conv(x, z), want)
    out = z.copy()  # in place over the residual: the sum reads it from the output buffer
    conv(x, out, out=out)
    _close_int(out, want)


# Scales with no simple ratio to the output's 0.04: with 0.05, every fourth intermediate step
# would land exactly halfway between two output steps, where float32 vs float64 decides.
@pytest.mark.parametrize("requantize", [(0.0517, 128.0, 0.0, 255.0), (0.0213, 0.0, -128.0, 127.0)])
def test_qconv_requantize_before_the_residual_matches_the_fused_op(requantize) -> None:
    """The conv's own Q -> DQ before a residual Add, done in the kernel: rounding to the
    intermediate's steps and saturating at its range (a narrow range here, so both happen)."""
    x = _x((1, 7, 5, 4), np.uint8)
    w = _x((5, 4, 3, 3), np.int8)
    w_scale = (RNG.random(5) * 0.01).astype(np.float32)
    bias = RNG.standard_normal(5).astype(np.float32)
    z = _x((1, 7, 5, 5), np.uint8)
    kw = dict(pads=[1, 1, 1, 1], requantize=requantize)
    conv = int8.QConv(
        w,
        w_scale,
        bias,
        x_scale=0.02,
        x_zero_point=9,
        y_scale=0.04,
        y_zero_point=20,
        y_dtype=np.uint8,
        z_scale=0.03,
        z_zero_point=50,
        **kw,
    )
    want = _qconv_reference(
        x,
        w,
        w_scale,
        bias,
        z,
        y_scale=np.float32(0.04),
        y_zero_point=np.array(20, np.uint8),
        z_scale=np.float32(0.03),
        z_zero_point=np.array(50, np.uint8),
        **kw,
    )
    without = _qconv_reference(
        x,
        w,
        w_scale,
        bias,
        z,
        y_scale=np.float32(0.04),
        y_zero_point=np.array(20, np.uint8),
        z_scale=np.float32(0.03),
        z_zero_point=np.array(50, np.uint8),
        pads=[1, 1, 1, 1],
    )
    assert np.abs(want.astype(int) - without.astype(int)).max() > 1  # requantize matters here
    _close_int(conv(x, z), want)


def test_qconv_float_output() -> None:
    x = _x((1, 5, 6, 3), np.uint8)
    w = _x((4, 3, 3, 3), np.int8)
    w_scale = np.full(4, 0.01, np.float32)
    conv = int8.QConv(
        w,
        w_scale,
        None,
        x_scale=0.02,
        x_zero_point=9,
        activation="Clip",
        activation_params=[0.0, 0.5],
    )
    want = _qconv_reference(
        x, w, w_scale, None, None, activation="Clip", activation_params=[0.0, 0.5]
    )
    got = conv(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("shape", [(1, 7), (5, 33), (2, 3, 64)])
def test_qmatmul_matches_qlinearmatmul(a_dtype: type, per_channel: bool, shape: tuple) -> None:
    K, N = shape[-1], 19
    a = _x(shape, a_dtype)
    b = _x((K, N), np.int8)
    b_scale = (RNG.random(N if per_channel else 1) * 0.01 + 1e-3).astype(np.float32)
    a_zp = np.array(3 if a_dtype == np.uint8 else -5, a_dtype)
    y_zp = np.array(-7, np.int8)
    want = quant.QLinearMatMul_10(
        a,
        np.float32(0.02),
        a_zp,
        b,
        b_scale,
        np.zeros(b_scale.shape, np.int8),
        np.float32(0.3),
        y_zp,
    )
    mm = int8.QMatMul(
        b,
        b_scale,
        a_scale=0.02,
        a_zero_point=int(a_zp),
        a_dtype=a_dtype,
        y_scale=0.3,
        y_zero_point=-7,
        y_dtype=np.int8,
    )
    got = mm(a)
    assert got.dtype == np.int8 and got.shape == want.shape
    _close_int(got, want)
    # Gemm's transB: B given as (N, K)
    mm_t = int8.QMatMul(
        np.ascontiguousarray(b.T),
        b_scale,
        trans_b=True,
        a_scale=0.02,
        a_zero_point=int(a_zp),
        a_dtype=a_dtype,
        y_scale=0.3,
        y_zero_point=-7,
        y_dtype=np.int8,
    )
    _close_int(mm_t(a), want)


def test_qmatmul_float_output_with_bias() -> None:
    a = _x((6, 40), np.uint8)
    b = _x((40, 12), np.int8)
    b_scale = (RNG.random(12) * 0.01).astype(np.float32)
    bias = RNG.standard_normal(12).astype(np.float32)
    mm = int8.QMatMul(b, b_scale, bias, a_scale=0.02, a_zero_point=128, activation="Relu")
    want = fused.QMatMul(
        a,
        np.float32(0.02),
        np.array(128, np.uint8),
        b,
        b_scale,
        None,
        None,
        bias,
        activation="Relu",
    )
    np.testing.assert_allclose(mm(a), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 16), (7, 33), (2, 5, 64)])
def test_dynamic_qmatmul_matches_ort_pattern(shape: tuple) -> None:
    a = (RNG.standard_normal(shape) * 3).astype(np.float32)
    K, N = shape[-1], 21
    b = _x((K, N), np.int8)
    b_scale = (RNG.random(N) * 0.01).astype(np.float32)
    bias = RNG.standard_normal(N).astype(np.float32)
    want = fused.DynamicQMatMul(a, b, b_scale, bias)
    got = int8.QMatMul(b, b_scale, bias, dynamic=True)(a)
    assert got.dtype == np.float32
    # exact int32 accumulators; only the order of the float32 scale products differs
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "values",
    [
        lambda: RNG.standard_normal(1000).astype(np.float32),
        lambda: np.abs(RNG.standard_normal((3, 77))).astype(np.float32),  # min 0
        lambda: -np.abs(RNG.standard_normal(50)).astype(np.float32),  # max 0
        lambda: np.zeros(9, np.float32),  # one value: scale 1
        lambda: (RNG.standard_normal(200_000) * 100).astype(np.float32),  # threaded
    ],
)
def test_dynamic_quantize_is_exactly_the_onnx_op(values) -> None:
    x = values()
    want_y, want_scale, want_zp = quant.DynamicQuantizeLinear_11(x)
    y, scale, zp = int8.dynamic_quantize(x)
    assert scale == want_scale and zp == want_zp
    np.testing.assert_array_equal(y, want_y)


@pytest.mark.parametrize("dtype,zp", [(np.uint8, 128), (np.int8, -3)])
def test_quantize_dequantize_are_exactly_the_onnx_ops(dtype: type, zp: int) -> None:
    x = (RNG.standard_normal((2, 3, 7, 5)) * 2).astype(np.float32)
    x[0, 0, 0, :3] = [0.005, 0.015, -0.025]  # ties: round half to even
    scale = np.float32(0.01)
    want = quant.QuantizeLinear_13(x, scale, np.array(zp, dtype))
    np.testing.assert_array_equal(int8.quantize(x, scale, zp, dtype), want)
    np.testing.assert_array_equal(
        int8.quantize(x, scale, zp, dtype, channels_last=True), _nhwc(want)
    )
    want_f = quant.DequantizeLinear_13(want, scale, np.array(zp, dtype))
    np.testing.assert_array_equal(int8.dequantize(want, scale, zp), want_f)
    np.testing.assert_array_equal(
        int8.dequantize(_nhwc(want), scale, zp, channels_last=True), want_f
    )


def test_int8_max_pool_matches_reference() -> None:
    x = _x((2, 5, 11, 9), np.uint8)
    want = fused.MaxPool(x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    got = int8.max_pool(x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    np.testing.assert_array_equal(got, want)
    got_last = int8.max_pool(
        _nhwc(x), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], channels_last=True
    )
    np.testing.assert_array_equal(got_last, _nhwc(want))


def test_bad_inputs_say_what_is_wrong() -> None:
    w = _x((4, 3, 3, 3), np.int8)
    with pytest.raises(TypeError, match="weight must be int8, got float32"):
        int8.QConv(w.astype(np.float32), 0.1, x_scale=0.1)
    with pytest.raises(ValueError, match="weight scale has 2 values, expected 1 or one per"):
        int8.QConv(w, np.ones(2, np.float32), x_scale=0.1)
    with pytest.raises(ValueError, match="y_dtype must be uint8, int8 or float32, got 'int16'"):
        int8.QConv(w, 0.1, x_scale=0.1, y_dtype=np.int16)
    with pytest.raises(ValueError, match="residual z needs an int8 output"):
        int8.QConv(w, 0.1, x_scale=0.1, z_scale=0.5)
    conv = int8.QConv(w, 0.1, x_scale=0.1, y_scale=0.2, y_dtype=np.uint8)
    with pytest.raises(TypeError, match="x must be uint8, got int8"):
        conv(_x((1, 5, 5, 3), np.int8))
    with pytest.raises(ValueError, match="5 channels, expected 3"):
        conv(_x((1, 5, 5, 5), np.uint8))
    with pytest.raises(ValueError, match="z given, but the convolution was built without"):
        conv(_x((1, 5, 5, 3), np.uint8), _x((1, 3, 3, 4), np.uint8))
    with pytest.raises(ValueError, match="out has shape"):
        conv(_x((1, 5, 5, 3), np.uint8), out=np.empty((1, 2, 2, 4), np.uint8))
    mm = int8.QMatMul(_x((8, 4), np.int8), 0.1, a_scale=0.1)
    with pytest.raises(ValueError, match=r"a must be \(\.\.\., 8\)"):
        mm(_x((2, 7), np.uint8))
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        int8.quantize(np.ones(3, np.float32), 0.0)
    with pytest.raises(ValueError, match="must not be empty"):
        int8.dynamic_quantize(np.ones(0, np.float32))
