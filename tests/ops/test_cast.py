"""Cast, CastLike, BitCast: the spec's float8 and e8m0 tables, strings, sub-byte types, errors."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

import ember
from ember.ops import cast as cast_ops
from ember.ops.registry import lookup

E4M3FN = np.dtype(ml_dtypes.float8_e4m3fn)
E4M3FNUZ = np.dtype(ml_dtypes.float8_e4m3fnuz)
E5M2 = np.dtype(ml_dtypes.float8_e5m2)
E5M2FNUZ = np.dtype(ml_dtypes.float8_e5m2fnuz)
E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)


def run(op_type: str, inputs: list[np.ndarray], opset: int, **attrs):
    names = [f"x{i}" for i in range(len(inputs))]
    node = helper.make_node(op_type, names, ["y"], **attrs)
    ins = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in zip(names, inputs, strict=True)
    ]
    graph = helper.make_graph([node], "g", ins, [helper.make_value_info("y", onnx.TypeProto())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ember.load(model).run(dict(zip(names, inputs, strict=True)))["y"]


def f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32)


# ---------------------------------------------------------------- numpy_dtype


@pytest.mark.parametrize("code", [c for c in range(1, 29)])
def test_numpy_dtype_matches_onnx_helper(code: int) -> None:
    assert cast_ops.numpy_dtype(code) == np.dtype(helper.tensor_dtype_to_np_dtype(code))


def test_numpy_dtype_refuses_unknown_codes() -> None:
    with pytest.raises(ValueError, match=r"unknown ONNX element type 0; known: 1 \(FLOAT\)"):
        cast_ops.numpy_dtype(0)
    with pytest.raises(ValueError, match="unknown ONNX element type 99"):
        cast_ops.numpy_dtype(99)


# ---------------------------------------------------------------- float8 tables (Cast spec)

SPECIAL = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e6, -1e6, 0.3], np.float32)


@pytest.mark.parametrize("to", [E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ], ids=str)
def test_float8_saturate_table(to) -> None:
    y = cast_ops.cast_array(SPECIAL, to, saturate=True)
    assert y.dtype == to
    top = float(ml_dtypes.finfo(to).max)
    v = f32(y)
    assert v[0] == 0 and v[1] == 0 and np.isnan(v[2])
    assert np.signbit(v[1]) == (to in (E4M3FN, E5M2))  # the fnuz types have no -0
    np.testing.assert_array_equal(v[3:7], [top, -top, top, -top])
    assert v[7] == f32(np.array([0.3], np.float32).astype(to))[0]  # round to nearest even


def test_float8_no_saturate_table() -> None:
    x = SPECIAL[2:7]  # nan, inf, -inf, 1e6, -1e6
    for to in (E4M3FN, E4M3FNUZ, E5M2FNUZ):
        assert np.isnan(f32(cast_ops.cast_array(x, to, saturate=False))).all()
    np.testing.assert_array_equal(
        f32(cast_ops.cast_array(x[1:], E5M2, saturate=False)), [np.inf, -np.inf, np.inf, -np.inf]
    )


def test_cast_saturate_attribute_through_a_model() -> None:
    x = np.array([1000.0, -np.inf], np.float16)
    np.testing.assert_array_equal(
        f32(run("Cast", [x], 19, to=TensorProto.FLOAT8E4M3FN)), [448, -448]
    )
    y = run("Cast", [x], 19, to=TensorProto.FLOAT8E4M3FN, saturate=0)
    assert y.dtype == E4M3FN and np.isnan(f32(y)).all()


def test_integers_saturate_into_float8_too() -> None:
    y = cast_ops.cast_array(np.array([100000, -3, 7], np.int64), E5M2)
    np.testing.assert_array_equal(f32(y), [57344, -3, 7])


# ---------------------------------------------------------------- float8e8m0


def test_e8m0_round_modes() -> None:
    x = np.array([0.124, 0.25, 1.1, 1.5, 1.6, 3.0, 8.0], np.float32)
    up = cast_ops.cast_array(x, E8M0, round_mode="up")
    down = cast_ops.cast_array(x, E8M0, round_mode="down")
    near = cast_ops.cast_array(x, E8M0, round_mode="nearest")
    np.testing.assert_array_equal(f32(up), [0.125, 0.25, 2, 2, 2, 4, 8])
    np.testing.assert_array_equal(f32(down), [0.0625, 0.25, 1, 1, 1, 2, 8])
    np.testing.assert_array_equal(f32(near), [0.125, 0.25, 1, 2, 2, 4, 8])  # ties go up


def test_e8m0_specials_saturate_and_not() -> None:
    x = np.array([0.0, np.nan, np.inf, 1e39, 1e-45], np.float64)
    sat = cast_ops.cast_array(x, E8M0, saturate=True).view(np.uint8)
    np.testing.assert_array_equal(sat, [0, 255, 254, 254, 0])
    raw = cast_ops.cast_array(x, E8M0, saturate=False, round_mode="nearest").view(np.uint8)
    np.testing.assert_array_equal(raw, [255, 255, 255, 255, 255])


def test_e8m0_through_a_model_and_back() -> None:
    x = np.array([0.5, 3.0], np.float16)
    y = run("Cast", [x], 24, to=TensorProto.FLOAT8E8M0, round_mode="down")
    assert y.dtype == E8M0
    z = run("Cast", [y], 24, to=TensorProto.FLOAT)
    np.testing.assert_array_equal(z, [0.5, 2.0])


def test_e8m0_refuses_unknown_round_mode() -> None:
    with pytest.raises(
        ValueError, match="round_mode must be 'up', 'down' or 'nearest', got 'zero'"
    ):
        cast_ops.cast_array(np.ones(1, np.float32), E8M0, round_mode="zero")


# ---------------------------------------------------------------- sub-byte and ordinary numbers


def test_float_to_int4_truncates_and_wraps() -> None:
    x = np.array([-9.0, -8.0, -2.7, 2.7, 7.0, 8.0, 15.0], np.float32)
    y = cast_ops.cast_array(x, cast_ops.numpy_dtype(TensorProto.INT4))
    np.testing.assert_array_equal(y.astype(np.int8), [7, -8, -2, 2, 7, -8, -1])
    u = cast_ops.cast_array(
        np.array([-1.0, 16.0, 3.9], np.float32), cast_ops.numpy_dtype(TensorProto.UINT2)
    )
    np.testing.assert_array_equal(u.astype(np.uint8), [3, 0, 3])


def test_float4_saturates() -> None:
    y = cast_ops.cast_array(
        np.array([100.0, -np.inf, 0.25, 1.2], np.float32), cast_ops.numpy_dtype(23)
    )
    np.testing.assert_array_equal(f32(y), [6, -6, 0, 1])


def test_integer_narrowing_wraps_and_bool_rules() -> None:
    np.testing.assert_array_equal(
        cast_ops.cast_array(np.array([200, -1], np.int16), np.int8), [-56, -1]
    )
    b = cast_ops.cast_array(np.array([0.0, -0.0, np.nan, 0.1], np.float32), np.bool_)
    np.testing.assert_array_equal(b, [False, False, True, True])
    np.testing.assert_array_equal(cast_ops.cast_array(np.array([True, False]), np.float16), [1, 0])


def test_bfloat16_conversions_through_a_model() -> None:
    x = np.array([1.00390625, np.inf, np.nan], np.float32)
    y = run("Cast", [x], 13, to=TensorProto.BFLOAT16)
    assert y.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(f32(y)[:2], [1.0, np.inf])  # ties to even
    assert np.isnan(f32(y)[2])


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)),
    st.sampled_from([np.float16, np.float32, np.int32, np.uint8, np.bool_]),
)
def test_numeric_casts_are_numpy_astype(x, to) -> None:
    if np.dtype(to).kind in "iu":
        x = np.nan_to_num(np.clip(x, 0, 200))  # in range: out-of-range float->int is undefined
    with np.errstate(all="ignore"):
        y = cast_ops.Cast_6(x, to=helper.np_dtype_to_tensor_dtype(np.dtype(to)))
        np.testing.assert_array_equal(y, x.astype(to))
    assert y.dtype == to and y.shape == x.shape


# ---------------------------------------------------------------- strings


def test_numbers_to_strings() -> None:
    x = np.array([0.47892547, 1e-7, np.nan, np.inf, -np.inf, -2.5], np.float32)
    y = cast_ops.Cast_6(x, to=TensorProto.STRING)
    assert y.dtype == object
    assert list(y) == ["0.47892547", "1e-07", "NaN", "INF", "-INF", "-2.5"]
    assert list(cast_ops.Cast_6(np.array([-3, 70], np.int64), to=TensorProto.STRING)) == [
        "-3",
        "70",
    ]
    assert list(cast_ops.Cast_6(np.array([0.5], ml_dtypes.bfloat16), to=TensorProto.STRING)) == [
        "0.5"
    ]


def test_strings_to_numbers() -> None:
    s = np.array(["3.14", "1e-5", "1E8", "INF", "+INF", "-inf", "NaN", " 7 "], dtype=object)
    y = cast_ops.Cast_6(s, to=TensorProto.FLOAT)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(
        y[:6], np.array([3.14, 1e-5, 1e8, np.inf, np.inf, -np.inf], np.float32)
    )
    assert np.isnan(y[6]) and y[7] == 7
    ints = cast_ops.Cast_6(
        np.array(["100", "-5", "100.5", "9007199254740993"], dtype=object), to=TensorProto.INT64
    )
    np.testing.assert_array_equal(ints[:3], [100, -5, 100])
    big = cast_ops.Cast_6(np.array(["9007199254740993"], dtype=object), to=TensorProto.INT64)
    assert big[0] == 9007199254740993  # beyond float64: parsed as an integer
    b = cast_ops.Cast_6(np.array(["True", "false", "0", "2.5"], dtype=object), to=TensorProto.BOOL)
    np.testing.assert_array_equal(b, [True, False, False, True])
    f8 = cast_ops.Cast_19(np.array(["1000"], dtype=object), to=TensorProto.FLOAT8E4M3FN)
    assert f32(f8)[0] == 448


def test_bytes_strings_parse_too() -> None:
    y = cast_ops.Cast_6(np.array([b"1.5", b"-2"], dtype=object), to=TensorProto.DOUBLE)
    np.testing.assert_array_equal(y, [1.5, -2])


def test_unparseable_string_names_the_problem() -> None:
    with pytest.raises(ValueError, match="Cast: cannot parse a number from a string"):
        cast_ops.Cast_6(np.array(["hello"], dtype=object), to=TensorProto.FLOAT)


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float32, st.integers(0, 6)))
def test_float_string_round_trip_is_exact(x) -> None:
    s = cast_ops.Cast_6(x, to=TensorProto.STRING)
    back = cast_ops.Cast_6(s, to=TensorProto.FLOAT)
    np.testing.assert_array_equal(back, x)  # NaN == NaN for assert_array_equal


# ---------------------------------------------------------------- versions, CastLike, BitCast


def test_opset_1_names_the_type() -> None:
    y = run("Cast", [np.array([1.7, -1.7], np.float32)], 1, to="INT32")
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, [1, -1])
    with pytest.raises(ValueError, match="unknown type name to='FLOAT99'"):
        cast_ops.Cast(np.ones(1), to="FLOAT99")


def test_castlike_takes_the_dtype_of_its_second_input() -> None:
    x = np.array([1.5, 1000.0], np.float32)
    y = run("CastLike", [x, np.zeros(0, np.float16)], 15)
    assert y.dtype == np.float16
    y = run("CastLike", [x, np.zeros(0, E4M3FN)], 19, saturate=0)
    assert y.dtype == E4M3FN and np.isnan(f32(y)[1])
    s = cast_ops.CastLike_15(np.array([2], np.int8), np.array(["x"], dtype=object))
    assert s.dtype == object and list(s) == ["2"]


def test_versions_resolve_as_the_spec_changes() -> None:
    assert lookup("Cast", "", 5).fn is cast_ops.Cast
    assert lookup("Cast", "", 13).fn is cast_ops.Cast_6
    assert lookup("Cast", "", 21).fn is cast_ops.Cast_19
    assert lookup("Cast", "", 28).fn is cast_ops.Cast_24
    assert lookup("CastLike", "", 25).fn is cast_ops.CastLike_24


def test_bitcast_reinterprets_bits() -> None:
    x = np.array([1.0, -0.0], np.float32)
    y = run("BitCast", [x], 26, to=TensorProto.INT32)
    np.testing.assert_array_equal(y, [0x3F800000, -(2**31)])
    np.testing.assert_array_equal(
        cast_ops.BitCast_26(np.array([True, False]), to=TensorProto.UINT8), [1, 0]
    )
    s = cast_ops.BitCast_26(np.array(1.5, np.float64), to=TensorProto.INT64)
    assert s.shape == () and s == np.array(1.5).view(np.int64)


def test_bitcast_sub_byte_types() -> None:
    i4 = np.array([-1, 7, -8, 0], ml_dtypes.int4)
    u4 = cast_ops.BitCast_26(i4, to=TensorProto.UINT4)
    assert u4.dtype == np.dtype(ml_dtypes.uint4)
    np.testing.assert_array_equal(u4.astype(np.uint8), [15, 7, 8, 0])
    back = cast_ops.BitCast_26(u4, to=TensorProto.INT4)
    np.testing.assert_array_equal(back.astype(np.int8), [-1, 7, -8, 0])
    f4 = cast_ops.BitCast_26(np.array([2, 9], ml_dtypes.uint4), to=TensorProto.FLOAT4E2M1)
    np.testing.assert_array_equal(f32(f4), [1.0, -0.5])  # code 0b0010 = 1.0, 0b1001 = -0.5


def test_bitcast_refuses_width_mismatch_and_strings() -> None:
    with pytest.raises(
        ValueError, match=r"one bit width, got float32 \(32 bits\) and int64 \(64 bits\)"
    ):
        cast_ops.BitCast_26(np.ones(2, np.float32), to=TensorProto.INT64)
    with pytest.raises(ValueError, match=r"int4 \(4 bits\) and uint8 \(8 bits\)"):
        cast_ops.BitCast_26(np.ones(2, ml_dtypes.int4), to=TensorProto.UINT8)
    with pytest.raises(TypeError, match="BitCast does not take strings"):
        cast_ops.BitCast_26(np.array(["a"], dtype=object), to=TensorProto.INT64)
