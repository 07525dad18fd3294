"""Activation ops against float64 NumPy twins: every dtype, odd shapes, extreme inputs, versions."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tests.ops.node import run_node

from ember.errors import ExecutionError, UnsupportedError
from ember.ops.activation import (
    Gelu_20,
    Hardmax,
    Hardmax_13,
    LogSoftmax,
    LogSoftmax_13,
    PRelu_6,
    PRelu_7,
    Relu_6,
    Shrink_9,
    Sigmoid_6,
    Softmax,
    Softmax_13,
    Softplus,
)
from ember.ops.registry import OpContext

RNG = np.random.default_rng(0)
EXACT = OpContext(exact=True)
BF16 = np.dtype(ml_dtypes.bfloat16)


def rand(*shape: int, dtype=np.float32, scale: float = 3.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Twins: the textbook formula in float64, one element at a time where it matters
# ----------------------------------------------------------------------------------------------

_erf = np.vectorize(math.erf)


def _sig(x):
    return np.vectorize(
        lambda v: 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))
    )(x)


def _softplus(x):
    return np.vectorize(
        lambda v: v + math.log1p(math.exp(-v)) if v > 0 else math.log1p(math.exp(v))
    )(x)


SELU_A, SELU_G = 1.67326319217681884765625, 1.05070102214813232421875


def f32(v: float) -> float:
    """An attribute value as the model stores it (ONNX float attributes are float32)."""
    return float(np.float32(v))


# op type, attributes, opset, twin(x) in float64
UNARY = [
    ("Relu", {}, 14, lambda x: np.maximum(x, 0)),
    ("LeakyRelu", {}, 16, lambda x: np.where(x < 0, 0.01 * x, x)),
    ("LeakyRelu", {"alpha": 0.3}, 16, lambda x: np.where(x < 0, f32(0.3) * x, x)),
    ("Elu", {"alpha": 0.7}, 22, lambda x: np.where(x > 0, x, f32(0.7) * (np.exp(x) - 1))),
    ("Selu", {}, 22, lambda x: f32(SELU_G) * np.where(x > 0, x, f32(SELU_A) * (np.exp(x) - 1))),
    (
        "Celu",
        {"alpha": 2.0},
        12,
        lambda x: np.maximum(x, 0) + np.minimum(0, 2 * (np.exp(x / 2) - 1)),
    ),
    ("Sigmoid", {}, 13, _sig),
    (
        "HardSigmoid",
        {"alpha": 0.3, "beta": 0.4},
        22,
        lambda x: np.clip(f32(0.3) * x + f32(0.4), 0, 1),
    ),
    ("HardSwish", {}, 22, lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    ("Tanh", {}, 13, np.tanh),
    ("Softplus", {}, 22, _softplus),
    ("Softsign", {}, 22, lambda x: x / (1 + np.abs(x))),
    ("Gelu", {}, 20, lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))),
    (
        "Gelu",
        {"approximate": "tanh"},
        20,
        lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    ),
    ("Mish", {}, 22, lambda x: x * np.tanh(_softplus(x))),
    ("ThresholdedRelu", {"alpha": 0.5}, 22, lambda x: np.where(x > 0.5, x, 0)),
    (
        "Shrink",
        {"lambd": 0.7, "bias": 0.2},
        9,
        lambda x: np.where(x < -f32(0.7), x + f32(0.2), np.where(x > f32(0.7), x - f32(0.2), 0)),
    ),
    ("Swish", {"alpha": 0.8}, 24, lambda x: x * _sig(f32(0.8) * x)),
]
TOL = {
    np.dtype(np.float64): 1e-12,
    np.dtype(np.float32): 2e-6,
    np.dtype(np.float16): 2e-3,
    BF16: 1.6e-2,
}


@pytest.mark.parametrize(
    "op_type, attrs, opset, twin", UNARY, ids=lambda v: v if isinstance(v, str) else ""
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, BF16], ids=str)
@pytest.mark.parametrize("shape", [(), (1,), (3, 5), (2, 3, 7)])
def test_unary_matches_twin(op_type, attrs, opset, twin, dtype, shape) -> None:
    x = rand(*shape, dtype=dtype)
    got = run_node(op_type, [("x", x)], attrs, opset=opset)
    assert got.dtype == np.dtype(dtype) and got.shape == x.shape
    want = twin(x.astype(np.float64))
    tol = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "op_type, opset",
    [
        ("Sigmoid", 13),
        ("Softplus", 22),
        ("Swish", 24),
        ("Mish", 22),
        ("Elu", 22),
        ("Selu", 22),
        ("Celu", 12),
        ("Gelu", 20),
        ("Softsign", 22),
        ("Tanh", 13),
        ("HardSwish", 22),
    ],
)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_extreme_inputs_stay_finite(op_type, opset, dtype) -> None:
    big = 6e4 if dtype == np.float16 else 1e30
    x = np.array([-big, -1e4, -80, -1, 0, 1, 80, 1e4, big], dtype=dtype)
    # Overflow or 0 * inf inside a formula is a bug; underflow to 0 is not.
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = run_node(op_type, [("x", x)], opset=opset)
    assert np.isfinite(got.astype(np.float64)).all(), got


def test_sigmoid_and_softplus_tails_are_exact() -> None:
    x = np.array([-800.0, -40.0, 40.0, 800.0])
    np.testing.assert_allclose(
        Sigmoid_6(x), [0.0, math.exp(-40) / (1 + math.exp(-40)), 1, 1], rtol=1e-15
    )
    np.testing.assert_allclose(Softplus(x), [0.0, math.log1p(math.exp(-40)), 40, 800], rtol=1e-15)
    assert Softplus(np.array([-800.0]))[0] == 0.0 and Sigmoid_6(np.array([-80.0]))[0] > 0


def test_nan_propagates() -> None:
    x = np.array([np.nan, 1.0], np.float32)
    for op_type, opset in [
        ("Relu", 14),
        ("Sigmoid", 13),
        ("Softplus", 22),
        ("Gelu", 20),
        ("Elu", 22),
    ]:
        assert np.isnan(run_node(op_type, [("x", x)], opset=opset)[0]), op_type


# ----------------------------------------------------------------------------------------------
# erfc (behind Gelu) and hypothesis sweeps
# ----------------------------------------------------------------------------------------------


floats = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
    elements=st.floats(-1e6, 1e6, allow_nan=False),
)


@settings(max_examples=60, deadline=None)
@given(floats)
def test_gelu_matches_erf_definition(x) -> None:
    want = 0.5 * x * (1 + _erf(x / math.sqrt(2)))
    np.testing.assert_allclose(Gelu_20(x), want, rtol=1e-12, atol=1e-300)


@settings(max_examples=60, deadline=None)
@given(floats)
def test_sigmoid_bounded_monotone_and_symmetric(x) -> None:
    s = Sigmoid_6(x)
    assert ((s >= 0) & (s <= 1)).all()
    np.testing.assert_allclose(s + Sigmoid_6(-x), 1.0, rtol=0, atol=1e-15)
    order = np.argsort(x.reshape(-1), kind="stable")
    assert (np.diff(s.reshape(-1)[order]) >= 0).all()


@settings(max_examples=60, deadline=None)
@given(floats)
def test_softplus_bounds(x) -> None:
    sp = Softplus(x)
    assert (sp >= np.maximum(x, 0)).all()
    assert (sp <= np.maximum(x, 0) + math.log(2) + 1e-12).all()


# ----------------------------------------------------------------------------------------------
# Integer-typed ops, PRelu broadcasting, versioned defaults and attributes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64])
def test_relu_keeps_integer_dtype(dtype) -> None:
    x = np.array([[-3, 0, 5]], dtype=dtype)
    got = run_node("Relu", [("x", x)], opset=14)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, [[0, 0, 5]])


def test_shrink_on_integers() -> None:
    x = np.array([-5, -1, 0, 1, 5], np.int32)
    got = Shrink_9(x, lambd=1.5, bias=1.0)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, [-4, 0, 0, 0, 4])


@pytest.mark.parametrize(
    "x_shape, slope_shape",
    [
        ((2, 3, 4), ()),
        ((2, 3, 4), (1,)),
        ((2, 3, 4), (4,)),
        ((2, 3, 4), (3, 1)),
        ((2, 3, 4), (2, 3, 4)),
    ],
)
def test_prelu_unidirectional_broadcast(x_shape, slope_shape) -> None:
    x, slope = rand(*x_shape), rand(*slope_shape)
    got = run_node("PRelu", [("x", x), ("slope", slope)], opset=16)
    np.testing.assert_allclose(got, np.where(x < 0, x * slope, x), rtol=1e-6)


def test_prelu_integer_types() -> None:
    x = np.array([-4, 2, -6], np.int64)
    np.testing.assert_array_equal(PRelu_7(x, np.array([2], np.int64)), [-8, 2, -12])


def test_prelu_rejects_a_slope_that_would_grow_x() -> None:
    with pytest.raises(
        ValueError,
        match=r"slope of shape \(2, 3\) is not unidirectionally broadcastable to X of shape \(3,\)",
    ):
        PRelu_7(rand(3), rand(2, 3))
    with pytest.raises(ExecutionError, match="not unidirectionally broadcastable"):
        run_node("PRelu", [("x", rand(2, 3, 4)), ("slope", rand(3))], opset=16)


def test_prelu_before_opset_7_is_per_channel() -> None:
    x, slope = rand(2, 3, 4), np.array([0.1, 0.2, 0.3], np.float32)
    want = np.where(x < 0, x * slope[:, None], x)
    np.testing.assert_allclose(PRelu_6(x, slope), want, rtol=1e-6)
    np.testing.assert_allclose(
        run_node("PRelu", [("x", x), ("s", slope)], opset=6), want, rtol=1e-6
    )


def test_selu_opset_1_has_the_short_defaults() -> None:
    x = np.array([-1.0, 2.0])
    want_v1 = 1.0507 * np.where(x > 0, x, 1.6732 * np.expm1(x))
    np.testing.assert_allclose(run_node("Selu", [("x", x)], opset=1), want_v1, rtol=1e-15)
    want_v6 = SELU_G * np.where(x > 0, x, SELU_A * np.expm1(x))
    np.testing.assert_allclose(run_node("Selu", [("x", x)], opset=6), want_v6, rtol=1e-15)


def test_consumed_inputs_is_accepted_only_where_the_schema_had_it() -> None:
    x = rand(4)
    np.testing.assert_array_equal(
        run_node("Relu", [("x", x)], {"consumed_inputs": [0]}, opset=1), np.maximum(x, 0)
    )
    with pytest.raises(UnsupportedError, match="'consumed_inputs' is not supported"):
        run_node("Relu", [("x", x)], {"consumed_inputs": [0]}, opset=6)


def test_gelu_rejects_unknown_approximation() -> None:
    with pytest.raises(ExecutionError, match="approximate must be 'none' or 'tanh', got 'fast'"):
        run_node("Gelu", [("x", rand(3))], {"approximate": "fast"}, opset=20)


def test_float_only_ops_reject_integers() -> None:
    with pytest.raises(TypeError, match="Sigmoid needs a floating-point input, got int32"):
        Sigmoid_6(np.array([1], np.int32))


def test_swiglu() -> None:
    a, b = rand(3, 4), rand(3, 4)
    got = run_node("SwiGLU", [("a", a), ("b", b)], {"alpha": 1.7}, opset=28)
    np.testing.assert_allclose(got, a * _sig(1.7 * a.astype(np.float64)) * b, rtol=2e-6)
    with pytest.raises(
        ExecutionError, match=r"same shape \(no broadcasting\), got \(3, 4\) and \(1, 4\)"
    ):
        run_node("SwiGLU", [("a", a), ("b", b[:1])], opset=28)


# ----------------------------------------------------------------------------------------------
# Softmax family: versions, stability, exact mode
# ----------------------------------------------------------------------------------------------


def softmax_twin(x, axis):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_softmax_13_is_single_axis(axis) -> None:
    x = rand(2, 3, 5)
    np.testing.assert_allclose(
        run_node("Softmax", [("x", x)], {"axis": axis}, opset=13), softmax_twin(x, axis), rtol=1e-6
    )
    np.testing.assert_allclose(
        run_node("LogSoftmax", [("x", x)], {"axis": axis}, opset=13),
        np.log(softmax_twin(x, axis)),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
@pytest.mark.parametrize("opset", [1, 11])
def test_softmax_before_13_coerces_to_2d(axis, opset) -> None:
    x = rand(2, 3, 5)
    k = axis % 3
    flat = x.reshape(math.prod(x.shape[:k]), -1)
    want = softmax_twin(flat, 1).reshape(x.shape)
    np.testing.assert_allclose(
        run_node("Softmax", [("x", x)], {"axis": axis}, opset=opset), want, rtol=1e-6
    )
    np.testing.assert_allclose(
        run_node("LogSoftmax", [("x", x)], {"axis": axis}, opset=opset),
        np.log(want),
        rtol=1e-5,
        atol=1e-6,
    )
    hard = run_node("Hardmax", [("x", x)], {"axis": axis}, opset=opset)
    want_hard = np.zeros_like(flat)
    want_hard[np.arange(flat.shape[0]), flat.argmax(axis=1)] = 1
    np.testing.assert_array_equal(hard, want_hard.reshape(x.shape))


def test_default_axes_differ_between_versions() -> None:
    x = rand(2, 3, 4)
    old, new = Softmax(x), Softmax_13(x)
    np.testing.assert_allclose(old.reshape(2, -1).sum(axis=1), 1, rtol=1e-6)  # axis=1, coerced
    np.testing.assert_allclose(new.sum(axis=-1), 1, rtol=1e-6)  # axis=-1, single
    assert not np.allclose(old, new)


def test_softmax_and_log_softmax_large_inputs() -> None:
    x = np.array([[1000.0, 1001.0, -1000.0], [-1e30, 0.0, 1e30]], np.float32)
    s = Softmax_13(x)
    ls = LogSoftmax_13(x)
    assert np.isfinite(s).all() and np.isfinite(ls).all()
    np.testing.assert_allclose(s[0], softmax_twin(x[:1], 1)[0], rtol=1e-6)
    np.testing.assert_allclose(
        ls[0],
        [
            -1 - math.log1p(math.exp(-1)),
            -math.log1p(math.exp(-1)),
            -2001 - math.log1p(math.exp(-1)),
        ],
        rtol=1e-6,
    )
    np.testing.assert_array_equal(s[1], [0, 0, 1])
    np.testing.assert_allclose(ls[1], [-2e30, -1e30, 0], rtol=1e-6)


def test_softmax_half_precision_and_empty() -> None:
    for dtype in (np.float16, BF16):
        x = rand(3, 6, dtype=dtype)
        got = Softmax_13(x)
        assert got.dtype == dtype
        np.testing.assert_allclose(
            got.astype(np.float64), softmax_twin(x, -1), rtol=TOL[np.dtype(dtype)], atol=1e-3
        )
    for fn in (Softmax_13, LogSoftmax_13, Hardmax_13, Softmax, LogSoftmax, Hardmax):
        assert fn(np.zeros((0, 4), np.float32)).shape == (0, 4)


def test_softmax_exact_mode_is_correctly_rounded_float64() -> None:
    x = rand(4, 257, scale=20.0)
    want = softmax_twin(x, -1).astype(np.float32)
    got = Softmax_13(x, ctx=EXACT)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        run_node("LogSoftmax", [("x", x)], opset=13, exact=True),
        LogSoftmax_13(x.astype(np.float64)).astype(np.float32),
    )


def test_hardmax_picks_the_first_of_ties() -> None:
    x = np.array([[1, 3, 3, 0], [2, 2, 2, 2]], np.float32)
    np.testing.assert_array_equal(Hardmax_13(x), [[0, 1, 0, 0], [1, 0, 0, 0]])


def test_softmax_bad_axis_is_named() -> None:
    with pytest.raises(ExecutionError, match="axis=3 is out of range for a rank-2 tensor"):
        run_node("Softmax", [("x", rand(2, 3))], {"axis": 3}, opset=13)


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
        elements=st.floats(-1e3, 1e3, allow_nan=False),
    ),
    st.integers(-1, 0),
)
def test_softmax_sums_to_one_and_matches_log_softmax(x, axis) -> None:
    s = Softmax_13(x, axis=axis)
    np.testing.assert_allclose(s.sum(axis=axis), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(LogSoftmax_13(x, axis=axis)), s, rtol=1e-9, atol=1e-300)


def test_relu_direct_call_keeps_dtype() -> None:
    assert Relu_6(np.array([-1.5], BF16)).dtype == BF16
