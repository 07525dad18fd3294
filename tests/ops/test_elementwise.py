"""Elementwise ops against NumPy twins: exact dtypes, legacy broadcasting, edge values, errors."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import helper

import ember
from ember.errors import ExecutionError
from ember.ops import elementwise as ew
from ember.ops.registry import OpContext, lookup

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64), BF16]
INTS = [
    np.dtype(t)
    for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
]


def run(op_type: str, inputs: list[np.ndarray], opset: int, *, exact: bool = False, **attrs):
    """Run one node through ember.load(...).run; returns its single output."""
    names = [f"x{i}" for i in range(len(inputs))]
    node = helper.make_node(op_type, names, ["y"], **attrs)
    ins = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in zip(names, inputs, strict=True)
    ]
    out = helper.make_value_info("y", onnx.TypeProto())
    graph = helper.make_graph([node], "g", ins, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ember.load(model, exact=exact).run(dict(zip(names, inputs, strict=True)))["y"]


def tol(dtype: np.dtype) -> float:
    return {2: 2e-2 if dtype == BF16 else 2e-3, 4: 2e-6, 8: 1e-13}[dtype.itemsize]


# ---------------------------------------------------------------- unary math (table-driven)

UNARY = [
    # (op, NumPy twin, domain lo, hi)
    ("Sqrt", np.sqrt, 0.0, 9.0),
    ("Exp", np.exp, -5.0, 5.0),
    ("Log", np.log, 0.01, 9.0),
    ("Reciprocal", np.reciprocal, 0.5, 4.0),
    ("Sin", np.sin, -3.0, 3.0),
    ("Cos", np.cos, -3.0, 3.0),
    ("Tan", np.tan, -1.2, 1.2),
    ("Asin", np.arcsin, -0.99, 0.99),
    ("Acos", np.arccos, -0.99, 0.99),
    ("Atan", np.arctan, -5.0, 5.0),
    ("Sinh", np.sinh, -3.0, 3.0),
    ("Cosh", np.cosh, -3.0, 3.0),
    ("Asinh", np.arcsinh, -5.0, 5.0),
    ("Acosh", np.arccosh, 1.0, 5.0),
    ("Atanh", np.arctanh, -0.95, 0.95),
    ("Ceil", np.ceil, -5.0, 5.0),
    ("Floor", np.floor, -5.0, 5.0),
    ("Round", np.rint, -5.0, 5.0),
    ("Abs", np.abs, -5.0, 5.0),
    ("Neg", np.negative, -5.0, 5.0),
    ("Sign", np.sign, -5.0, 5.0),
    ("Erf", np.vectorize(math.erf), -4.0, 4.0),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize(("op_type", "twin", "lo", "hi"), UNARY, ids=[u[0] for u in UNARY])
def test_unary_matches_numpy_twin_and_keeps_dtype(op_type, twin, lo, hi, dtype) -> None:
    x = np.linspace(lo, hi, 3 * 5 * 7).reshape(3, 5, 7).astype(dtype)  # odd shape
    y = run(op_type, [x], 22)
    assert y.dtype == dtype and y.shape == x.shape
    want = twin(x.astype(np.float64)).astype(dtype).astype(np.float64)
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=tol(dtype), atol=tol(dtype))


def test_unary_ops_accept_non_contiguous_and_scalar_inputs() -> None:
    x = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2].T  # a strided view
    np.testing.assert_array_equal(ew.Sqrt_6(x), np.sqrt(x))
    s = ew.Exp_6(np.array(1.0, np.float32))
    assert isinstance(s, np.ndarray) and s.shape == () and s.dtype == np.float32


def test_round_is_half_to_even_and_keeps_specials() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -4.5, 2.3, -0.0, np.inf, np.nan], np.float32)
    y = ew.Round_11(x)
    np.testing.assert_array_equal(y[:7], [0, 2, 2, -0, -2, -4, 2])
    assert np.signbit(y[7]) and np.isposinf(y[8]) and np.isnan(y[9])


def test_integer_abs_neg_sign_keep_their_dtype() -> None:
    for dtype in INTS:
        x = np.array([0, 1, 5], dtype)
        assert ew.Abs_6(x).dtype == dtype
        assert ew.Sign_9(x).dtype == dtype
    np.testing.assert_array_equal(ew.Sign_9(np.array([-3, 0, 7], np.int8)), [-1, 0, 1])


def test_isnan_and_isinf_with_detect_flags() -> None:
    x = np.array([1.0, np.nan, np.inf, -np.inf, 0.0], np.float16)
    np.testing.assert_array_equal(ew.IsNaN_9(x), [False, True, False, False, False])
    np.testing.assert_array_equal(ew.IsInf_10(x), [False, False, True, True, False])
    np.testing.assert_array_equal(ew.IsInf_10(x, detect_negative=0), [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(ew.IsInf_10(x, detect_positive=0), [0, 0, 0, 1, 0])
    f8 = np.array([np.nan, 1.0], ml_dtypes.float8_e4m3fn)
    np.testing.assert_array_equal(run("IsNaN", [f8], 20), [True, False])


def test_float_only_ops_refuse_integers_by_name() -> None:
    with pytest.raises(TypeError, match="Sqrt needs a floating-point input, got int32"):
        ew.Sqrt_6(np.array([4], np.int32))
    with pytest.raises(
        ExecutionError, match=r"\(Log\) failed: TypeError: Log needs a floating-point"
    ):
        run("Log", [np.array([4], np.int64)], 13)


def test_legacy_consumed_inputs_is_accepted() -> None:
    x = np.array([-1.0, 2.0], np.float32)
    np.testing.assert_array_equal(run("Abs", [x], 1, consumed_inputs=[0]), [1, 2])


# ---------------------------------------------------------------- binary arithmetic

shapes = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(INTS + FLOATS[:3]), shapes, st.data())
def test_add_sub_mul_broadcast_and_keep_dtype(dtype, bshapes, data) -> None:
    a_shape, b_shape = bshapes.input_shapes
    elements = (
        (st.integers(-50, 50) if dtype.kind == "i" else st.integers(0, 50))
        if dtype.kind in "iu"
        else st.floats(-100, 100, width=dtype.itemsize * 8)
    )
    a = data.draw(hnp.arrays(dtype, a_shape, elements=elements))
    b = data.draw(hnp.arrays(dtype, b_shape, elements=elements))
    for fn, twin in ((ew.Add_7, np.add), (ew.Sub_7, np.subtract), (ew.Mul_7, np.multiply)):
        y = fn(a, b)
        assert isinstance(y, np.ndarray) and y.dtype == dtype and y.shape == bshapes.result_shape
        np.testing.assert_array_equal(y, twin(a, b))


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([np.int8, np.int16, np.int32, np.int64]),
    st.lists(st.tuples(st.integers(-100, 100), st.integers(-100, 100).filter(bool)), min_size=1),
)
def test_integer_div_truncates_toward_zero(dtype, pairs) -> None:
    a = np.array([p[0] for p in pairs], dtype)
    b = np.array([p[1] for p in pairs], dtype)
    want = [int(x / y) if x * y >= 0 else -(abs(x) // abs(y)) for x, y in pairs]
    y = ew.Div_7(a, b)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, want)


def test_div_of_floats_gives_ieee_specials_without_warnings() -> None:
    with np.errstate(all="raise"):
        y = ew.Div_7(np.array([1.0, -1.0, 0.0], np.float16), np.array([0.0, 0.0, 0.0], np.float16))
    assert y.dtype == np.float16
    assert np.isposinf(y[0]) and np.isneginf(y[1]) and np.isnan(y[2])


def test_binary_ops_refuse_mixed_dtypes() -> None:
    with pytest.raises(TypeError, match="Add needs inputs of one dtype, got float32 and float64"):
        ew.Add_7(np.ones(2, np.float32), np.ones(2, np.float64))


def test_legacy_broadcast_aligns_b_at_axis() -> None:
    a = np.zeros((2, 3, 4, 5), np.float32)
    b = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = run("Add", [a, b], 6, broadcast=1, axis=1)
    np.testing.assert_array_equal(y, np.broadcast_to(b[None, :, :, None], a.shape))
    y = run("Mul", [np.ones((2, 3), np.float32), np.array([2, 3, 4], np.float32)], 1, broadcast=1)
    np.testing.assert_array_equal(y, [[2, 3, 4], [2, 3, 4]])


def test_legacy_broadcast_off_needs_equal_shapes() -> None:
    with pytest.raises(ValueError, match=r"Sub: shapes \[2, 3\] and \[3\] differ and broadcast=0"):
        ew.Sub_6(np.ones((2, 3), np.float32), np.ones(3, np.float32))


def test_pow_output_follows_the_base() -> None:
    x = np.array([1, 2, 3], np.int64)
    np.testing.assert_array_equal(ew.Pow_7(x, np.array([4.0, 5.0, 6.0], np.float32)), [1, 32, 729])
    assert ew.Pow_7(x, np.array([2.0], np.float32)).dtype == np.int64
    y = ew.Pow_7(np.array([1.0, 2.0, 3.0], np.float32), np.array([2, 3, 0], np.int64))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [1, 8, 1])
    h = ew.Pow_7(np.array([2.0], np.float16), np.array([3.0], np.float64))
    assert h.dtype == np.float16 and h[0] == 8
    # Negative integer exponents truncate: 2^-1 -> 0, (-1)^-3 -> -1, 1^-5 -> 1.
    np.testing.assert_array_equal(
        ew.Pow_7(np.array([2, -1, 1], np.int32), np.array([-1, -3, -5], np.int32)), [0, -1, 1]
    )
    u = ew.Pow_7(np.array([2], np.uint8), np.array([9], np.int64))
    assert u.dtype == np.uint8 and u[0] == (2**9) % 256


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([np.int8, np.int32, np.int64]),
    st.lists(st.tuples(st.integers(-100, 100), st.integers(-100, 100).filter(bool)), min_size=1),
)
def test_integer_mod_floor_and_fmod(dtype, pairs) -> None:
    a = np.array([p[0] for p in pairs], dtype)
    b = np.array([p[1] for p in pairs], dtype)
    np.testing.assert_array_equal(ew.Mod_10(a, b), [x % y for x, y in pairs])
    np.testing.assert_array_equal(ew.Mod_10(a, b, fmod=1), [int(math.fmod(x, y)) for x, y in pairs])
    assert ew.Mod_10(a, b).dtype == dtype


def test_float_mod_special_cases_follow_opset_28() -> None:
    inf, nan = np.inf, np.nan
    a = np.array([-0.0, 0.0, inf, 3.0, 3.0, -3.0, 3.0, nan, 5.5], np.float32)
    b = np.array([3.0, -3.0, 2.0, 0.0, inf, inf, -inf, 1.0, -2.0], np.float32)
    y = run("Mod", [a, b], 28)
    assert y.dtype == np.float32
    assert y[0] == 0 and not np.signbit(y[0]) and y[1] == 0 and np.signbit(y[1])
    assert np.isnan(y[2]) and np.isnan(y[3]) and np.isnan(y[7])
    assert y[4] == 3.0 and y[5] == inf and y[6] == -inf and y[8] == -0.5
    f = ew.Mod_10(np.array([5.5, -5.5], np.float16), np.array([-2.0, 2.0], np.float16), fmod=1)
    assert f.dtype == np.float16
    np.testing.assert_array_equal(f, [1.5, -1.5])


def test_mod_refuses_bad_fmod() -> None:
    with pytest.raises(ValueError, match="fmod must be 0 or 1, got 2"):
        ew.Mod_10(np.ones(1, np.int32), np.ones(1, np.int32), fmod=2)


# ---------------------------------------------------------------- variadic


def test_max_min_variadic_broadcast_and_nan() -> None:
    a = np.array([[1.0], [np.nan]], np.float32)
    b = np.array([0.0, 5.0, -1.0], np.float32)
    c = np.array(2.0, np.float32)
    y = run("Max", [a, b, c], 13)
    assert y.shape == (2, 3) and y.dtype == np.float32
    np.testing.assert_array_equal(y[0], [2, 5, 2])
    assert np.isnan(y[1]).all()
    np.testing.assert_array_equal(
        ew.Min_8(np.array([3, 9], np.uint8), np.array([4], np.uint8)), [3, 4]
    )


def test_variadic_before_opset_8_needs_one_shape() -> None:
    with pytest.raises(ValueError, match=r"Sum before opset 8 needs inputs of one shape"):
        ew.Sum_6(np.ones(3, np.float32), np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="Max needs at least one input"):
        ew.Max_8()


def test_single_input_variadic_returns_a_copy() -> None:
    x = np.array([1.0, 2.0], np.float32)
    for y in (ew.Max_8(x), ew.Sum_8(x), ew.Mean_8(x)):
        assert y is not x and not np.shares_memory(x, y)
        np.testing.assert_array_equal(y, x)


def test_sum_and_mean_exact_mode_accumulate_in_float64() -> None:
    a = np.array([1.0], np.float32)
    b = np.array([1e-8], np.float32)
    c = np.array([-1.0], np.float32)
    assert run("Sum", [a, b, c], 13)[0] == 0.0  # float32 loses 1e-8
    exact = run("Sum", [a, b, c], 13, exact=True)
    assert exact.dtype == np.float32 and exact[0] == np.float32(1e-8)
    m = ew.Mean_8(a, b, c, ctx=OpContext(exact=True))
    assert m.dtype == np.float32 and m[0] == np.float32(1e-8 / 3)


def test_mean_of_half_floats_keeps_dtype() -> None:
    for dtype in (np.float16, BF16):
        y = ew.Mean_8(np.array([1, 2], dtype), np.array([2, 4], dtype))
        assert y.dtype == dtype
        np.testing.assert_array_equal(y.astype(np.float32), [1.5, 3])


# ---------------------------------------------------------------- comparison, logic, bitwise


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(INTS + FLOATS), shapes, st.data())
def test_comparisons_match_numpy(dtype, bshapes, data) -> None:
    a_shape, b_shape = bshapes.input_shapes
    a = data.draw(hnp.arrays(np.int8, a_shape, elements=st.integers(0, 5))).astype(dtype)
    b = data.draw(hnp.arrays(np.int8, b_shape, elements=st.integers(0, 5))).astype(dtype)
    for fn, twin in (
        (ew.Equal_7, np.equal),
        (ew.Greater_7, np.greater),
        (ew.Less_7, np.less),
        (ew.GreaterOrEqual_12, np.greater_equal),
        (ew.LessOrEqual_12, np.less_equal),
    ):
        y = fn(a, b)
        assert y.dtype == np.bool_ and y.shape == bshapes.result_shape
        np.testing.assert_array_equal(y, twin(a, b))


def test_equal_compares_strings_of_any_representation() -> None:
    a = np.array(["ab", "c"], dtype=object)
    b = np.array([b"ab"], dtype=object)
    np.testing.assert_array_equal(ew.Equal_7(a, b), [True, False])
    np.testing.assert_array_equal(ew.Equal_7(a, np.array(["c"])), [False, True])


def test_logic_ops_need_bools() -> None:
    a = np.array([True, True, False, False])
    b = np.array([True, False, True, False])
    np.testing.assert_array_equal(ew.And_7(a, b), [1, 0, 0, 0])
    np.testing.assert_array_equal(ew.Or_7(a, b), [1, 1, 1, 0])
    np.testing.assert_array_equal(ew.Xor_7(a, b), [0, 1, 1, 0])
    np.testing.assert_array_equal(ew.Not(a), [0, 0, 1, 1])
    with pytest.raises(TypeError, match="And needs bool inputs, got int32"):
        ew.And_7(np.ones(2, np.int32), b[:2])


@pytest.mark.parametrize("dtype", INTS, ids=str)
def test_bitshift_matches_python_ints(dtype) -> None:
    bits = dtype.itemsize * 8
    info = np.iinfo(dtype)
    xs = [info.min, -5, -1, 0, 1, 5, info.max] if dtype.kind == "i" else [0, 1, 5, info.max]
    ys = [-1, 0, 1, 3, bits - 1, bits, bits + 3] if dtype.kind == "i" else [0, 1, 3, bits - 1, bits]
    X = np.array(xs, dtype)[:, None]
    Y = np.array(ys, dtype)[None, :]
    for direction in ("LEFT", "RIGHT"):
        got = ew.BitShift_11(X, Y, direction=direction)
        assert got.dtype == dtype
        for i, x in enumerate(xs):
            for j, y in enumerate(ys):
                if 0 <= y < bits:
                    v = x << y if direction == "LEFT" else x >> y
                    v %= 2**bits
                    if dtype.kind == "i" and v >= 2 ** (bits - 1):
                        v -= 2**bits
                else:
                    v = -1 if direction == "RIGHT" and x < 0 else 0
                assert got[i, j] == v, (direction, x, y)


def test_bitshift_refuses_a_bad_direction() -> None:
    with pytest.raises(ValueError, match="direction must be 'LEFT' or 'RIGHT', got 'UP'"):
        ew.BitShift_11(np.ones(1, np.uint8), np.ones(1, np.uint8), direction="UP")


def test_bitwise_ops() -> None:
    a = np.array([0b1100, -1], np.int16)
    b = np.array([0b1010, 3], np.int16)
    np.testing.assert_array_equal(ew.BitwiseAnd_18(a, b), [0b1000, 3])
    np.testing.assert_array_equal(ew.BitwiseOr_18(a, b), [0b1110, -1])
    np.testing.assert_array_equal(ew.BitwiseXor_18(a, b), [0b0110, -4])
    np.testing.assert_array_equal(ew.BitwiseNot_18(np.array([0, 255], np.uint8)), [255, 0])
    with pytest.raises(TypeError, match="BitwiseNot needs an integer input, got float32"):
        ew.BitwiseNot_18(np.ones(1, np.float32))


# ---------------------------------------------------------------- Where, Clip


def test_where_broadcasts_and_keeps_dtype() -> None:
    cond = np.array([[True], [False]])
    y = ew.Where_9(cond, np.array([1, 2, 3], np.int8), np.array(0, np.int8))
    assert y.dtype == np.int8
    np.testing.assert_array_equal(y, [[1, 2, 3], [0, 0, 0]])
    s = ew.Where_9(
        np.array([True, False]), np.array(["a", "b"], object), np.array(["c", "d"], object)
    )
    np.testing.assert_array_equal(s, ["a", "d"])
    with pytest.raises(TypeError, match="Where needs bool inputs, got int64"):
        ew.Where_9(np.array([1]), np.ones(1), np.ones(1))


def test_clip_versions() -> None:
    x = np.array([-5.0, -1.0, 0.5, 3.0, np.nan], np.float16)
    y = run("Clip", [x], 6, min=-2.0, max=2.0)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y[:4], [-2, -1, 0.5, 2])
    assert np.isnan(y[4])
    np.testing.assert_array_equal(run("Clip", [x[:4]], 6, max=0.0), [-5, -1, 0, 0])
    i8 = np.array([-128, 0, 127], np.int8)
    np.testing.assert_array_equal(ew.Clip_11(i8, np.array(-3, np.int8)), [-3, 0, 127])
    np.testing.assert_array_equal(ew.Clip_11(i8, None, np.array(5, np.int8)), [-128, 0, 5])
    assert ew.Clip_11(i8).dtype == np.int8


def test_clip_min_above_max_gives_max() -> None:
    x = np.array([-1.0, 5.0, 20.0], np.float32)
    np.testing.assert_array_equal(
        ew.Clip_11(x, np.array(10.0, np.float32), np.array(2.0, np.float32)), [2, 2, 2]
    )


def test_clip_bounds_must_be_scalars_of_the_input_dtype() -> None:
    x = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"Clip: min must be a scalar, got shape \[2\]"):
        ew.Clip_11(x, np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="Clip: max has dtype float64, the input float32"):
        ew.Clip_11(x, None, np.array(1.0))


def test_versions_resolve_as_the_spec_changes() -> None:
    assert lookup("Add", "", 6).fn is ew.Add_6
    assert lookup("Add", "", 14).fn is ew.Add_7
    assert lookup("Clip", "", 10).fn is ew.Clip_6
    assert lookup("Clip", "", 13).fn is ew.Clip_11
    assert lookup("Max", "", 7).fn is ew.Max_6
    assert lookup("Mod", "", 28).fn is ew.Mod_10
    assert lookup("BitShift", "", 28).fn is ew.BitShift_11
