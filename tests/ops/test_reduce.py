"""Reductions, ArgMax/ArgMin, TopK and cumulative ops against float64 NumPy twins.

Hypothesis sweeps shapes, axes and keepdims; the table covers every Reduce* op; edge cases are
empty sets, noop_with_empty_axes, ties, exact-mode accumulation and the legacy attribute forms.
"""

from __future__ import annotations

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
from ember.ops import reduce
from ember.ops.registry import OpContext, lookup

EXACT = OpContext(exact=True)


def run(op_type, inputs, opset=18, *, n_outputs=1, exact=False, **attrs):
    names = [f"x{i}" if a is not None else "" for i, a in enumerate(inputs)]
    outs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, **attrs)
    given_inputs = [(n, a) for n, a in zip(names, inputs, strict=True) if a is not None]
    ins = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in given_inputs
    ]
    graph = helper.make_graph(
        [node], "g", ins, [helper.make_value_info(o, onnx.TypeProto()) for o in outs]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    result = ember.load(model, exact=exact).run(dict(given_inputs))
    return [result[o] for o in outs] if n_outputs > 1 else result[outs[0]]


def i64(v):
    return np.array(v, dtype=np.int64)


def _lse(x, axis, keepdims):
    m = np.max(x, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


# (op, float64 twin)
TWINS = {
    "ReduceSum": lambda x, a, k: np.sum(x, axis=a, keepdims=k),
    "ReduceMean": lambda x, a, k: np.mean(x, axis=a, keepdims=k),
    "ReduceMax": lambda x, a, k: np.max(x, axis=a, keepdims=k),
    "ReduceMin": lambda x, a, k: np.min(x, axis=a, keepdims=k),
    "ReduceProd": lambda x, a, k: np.prod(x, axis=a, keepdims=k),
    "ReduceL1": lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k),
    "ReduceL2": lambda x, a, k: np.sqrt(np.sum(x * x, axis=a, keepdims=k)),
    "ReduceSumSquare": lambda x, a, k: np.sum(x * x, axis=a, keepdims=k),
    "ReduceLogSum": lambda x, a, k: np.log(np.sum(x, axis=a, keepdims=k)),
    "ReduceLogSumExp": _lse,
}


@settings(max_examples=25, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5),
        elements=st.floats(0.5, 2.0, width=32),  # positive: keeps LogSum defined, Prod tame
    ),
    data=st.data(),
    keepdims=st.sampled_from([0, 1]),
    op_type=st.sampled_from(sorted(TWINS)),
)
def test_reduce_matches_float64_twin(x, data, keepdims, op_type) -> None:
    axes = data.draw(
        st.lists(st.integers(-x.ndim, x.ndim - 1), unique_by=lambda a: a % x.ndim, max_size=x.ndim)
    )
    axes_in = i64(axes) if axes else None
    y = run(op_type, [x, axes_in], 18, keepdims=keepdims)
    want_axes = tuple(a % x.ndim for a in axes) if axes else None
    want = TWINS[op_type](x.astype(np.float64), want_axes, bool(keepdims))
    assert y.dtype == np.float32
    assert y.shape == np.shape(want)
    np.testing.assert_allclose(y, want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("op_type", "want"),
    [
        ("ReduceSum", 0.0),
        ("ReduceMean", np.nan),
        ("ReduceProd", 1.0),
        ("ReduceL1", 0.0),
        ("ReduceL2", 0.0),
        ("ReduceSumSquare", 0.0),
        ("ReduceLogSum", -np.inf),
        ("ReduceLogSumExp", -np.inf),
        ("ReduceMax", -np.inf),
        ("ReduceMin", np.inf),
    ],
)
def test_reduce_over_an_empty_set_gives_the_identity(op_type, want) -> None:
    x = np.zeros((2, 0, 4), np.float32)
    y = run(op_type, [x, i64([1])], 18, keepdims=1)
    assert y.shape == (2, 1, 4) and y.dtype == np.float32
    np.testing.assert_array_equal(y, np.full((2, 1, 4), want, np.float32))


@pytest.mark.parametrize(
    ("dtype", "largest", "want"),
    [
        (np.int32, True, np.iinfo(np.int32).min),
        (np.uint8, False, 255),
        (np.bool_, True, False),
        (np.bool_, False, True),
    ],
)
def test_max_min_empty_set_for_integers_and_bools(dtype, largest, want) -> None:
    op_type = "ReduceMax" if largest else "ReduceMin"
    y = run(op_type, [np.zeros((0, 3), dtype), i64([0])], 20, keepdims=0)
    assert y.dtype == dtype and y.shape == (3,)
    assert (y == want).all()


def test_noop_with_empty_axes_returns_the_input_and_empty_axes_otherwise_reduce_all() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(run("ReduceSum", [x, i64([])], 13, noop_with_empty_axes=1), x)
    np.testing.assert_array_equal(run("ReduceSum", [x, i64([])], 13), [[15.0]])
    np.testing.assert_array_equal(run("ReduceMax", [x, None], 18, keepdims=0), 5.0)
    # The elementwise part still applies: the expanded (function) form of SumSquare does it too.
    np.testing.assert_array_equal(
        run("ReduceSumSquare", [x, None], 18, noop_with_empty_axes=1), x * x
    )


def test_legacy_axes_attribute_versions() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert lookup("ReduceSum", "", 12).fn is reduce.ReduceSum
    assert lookup("ReduceSum", "", 13).fn is reduce.ReduceSum_13
    assert lookup("ReduceMean", "", 17).fn is reduce.ReduceMean
    assert lookup("ReduceMax", "", 20).fn is reduce.ReduceMax_18
    y = run("ReduceMean", [x], 13, axes=[-1, 0], keepdims=0)
    np.testing.assert_allclose(y, x.mean(axis=(0, 2)))
    y = run("ReduceSum", [x], 11, axes=[1])
    np.testing.assert_array_equal(y, x.sum(axis=1, keepdims=True))


def test_reduce_integer_inputs_keep_their_dtype() -> None:
    x = np.array([[1, 2], [3, 4]], np.int32)
    y = run("ReduceSum", [x, i64([1])], 13, keepdims=0)
    assert y.dtype == np.int32 and y.tolist() == [3, 7]
    y = run("ReduceMean", [x, i64([0])], 18, keepdims=0)
    assert y.dtype == np.int32 and y.tolist() == [2, 3]
    y = run("ReduceProd", [np.array([200, 2], np.uint8), None], 18, keepdims=0)
    assert y.dtype == np.uint8


def test_reduce_bad_axes() -> None:
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ExecutionError, match=r"axes=2 is out of range for a rank-2 tensor"):
        run("ReduceSum", [x, i64([2])], 13)
    with pytest.raises(ValueError, match="repeat an axis"):
        reduce.ReduceSum_13(x, i64([1, -1]), ctx=OpContext())


def test_exact_mode_accumulates_in_float64() -> None:
    x = np.array([1e8, 1.0, -1e8, 1.0], np.float32)
    assert run("ReduceSum", [x, None], 13, exact=True).item() == 2.0
    y = reduce.ReduceSum_13(x, ctx=EXACT)
    assert y.dtype == np.float32 and y.item() == 2.0
    c = reduce.CumSum_11(x, np.array(0), ctx=EXACT)
    assert c.dtype == np.float32 and c.tolist() == [1e8, 1e8, 1.0, 2.0]  # float32 alone: 0, 1


def test_half_precision_keeps_dtype_and_accumulates_widely() -> None:
    x = np.full(5000, 0.1, np.float16)
    y = reduce.ReduceSum_13(x, keepdims=0, ctx=OpContext())
    assert y.dtype == np.float16
    assert abs(float(y) - 5000 * float(np.float16(0.1))) < 4  # float16 spacing at 500 is 0.25
    b = np.full(300, 1, ml_dtypes.bfloat16)
    yb = reduce.ReduceSum_13(b, keepdims=0, ctx=OpContext())
    assert yb.dtype == b.dtype and float(yb) == 300.0  # bfloat16-only accumulation stalls at 256


def test_log_sum_exp_is_stable() -> None:
    x = np.array([[1000.0, 1000.0], [-np.inf, -np.inf], [-1000.0, np.inf]], np.float32)
    y = run("ReduceLogSumExp", [x, i64([1])], 18, keepdims=0)
    np.testing.assert_allclose(y[0], 1000 + np.log(2), rtol=1e-6)
    assert y[1] == -np.inf and y[2] == np.inf


# ---------------------------------------------------------------- ArgMax / ArgMin


@pytest.mark.parametrize("op_type", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("last", [0, 1])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_arg_reductions_and_ties(op_type, last, keepdims) -> None:
    x = np.array([[2, 2, 1, 1], [0, 3, 3, 0]], np.float32)
    y = run(op_type, [x], 13, axis=-1, keepdims=keepdims, select_last_index=last)
    want = {
        ("ArgMax", 0): [0, 1],
        ("ArgMax", 1): [1, 2],
        ("ArgMin", 0): [2, 0],
        ("ArgMin", 1): [3, 3],
    }[op_type, last]
    assert y.dtype == np.int64
    assert y.shape == ((2, 1) if keepdims else (2,))
    assert y.reshape(-1).tolist() == want


def test_arg_reduction_over_an_empty_axis_is_an_error() -> None:
    with pytest.raises(ValueError, match="axis 0 has size 0"):
        reduce.ArgMax(np.zeros((0, 3)))


# ---------------------------------------------------------------- TopK


def top_k_twin(x, k, axis, largest):
    # Sort by (value, index) with ties to the lower index, descending values when largest.
    moved = np.moveaxis(x, axis, -1)
    idx = np.empty((*moved.shape[:-1], k), np.int64)
    for pos in np.ndindex(moved.shape[:-1]):
        row = moved[pos]
        order = sorted(range(len(row)), key=lambda i: (-row[i] if largest else row[i], i))
        idx[pos] = order[:k]
    idx = np.moveaxis(idx, -1, axis)
    return np.take_along_axis(x, idx, axis=axis), idx


@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(
        np.int32,
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6),
        elements=st.integers(-3, 3),  # many ties
    ),
    data=st.data(),
    largest=st.sampled_from([0, 1]),
)
def test_top_k_matches_twin_with_ties_to_lower_index(x, data, largest) -> None:
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    k = data.draw(st.integers(0, x.shape[axis]))
    values, indices = reduce.TopK_11(x, i64([k]), axis=axis, largest=largest)
    want_v, want_i = top_k_twin(x, k, axis % x.ndim, largest)
    np.testing.assert_array_equal(values, want_v)
    np.testing.assert_array_equal(indices, want_i)
    assert values.dtype == np.int32 and indices.dtype == np.int64


def test_top_k_through_a_model_and_legacy_forms() -> None:
    x = np.array([[1, 5, 5, 3]], np.uint64)
    v, i = run("TopK", [x, i64([2])], 24, n_outputs=2)
    assert v.tolist() == [[5, 5]] and i.tolist() == [[1, 2]]
    v, i = reduce.TopK(np.array([3.0, 1.0, 2.0]), k=2)
    assert v.tolist() == [3.0, 2.0] and i.tolist() == [0, 2]
    with pytest.raises(ValueError, match="k=5 is out of range for axis -1 of size 4"):
        reduce.TopK_10(x, i64([5]))


# ---------------------------------------------------------------- CumSum / CumProd


def cumulative_twin(x, axis, exclusive, reverse, fn, identity):
    out = np.empty_like(x)
    moved_x, moved_o = np.moveaxis(x, axis, 0), np.moveaxis(out, axis, 0)
    n = moved_x.shape[0]
    order = range(n - 1, -1, -1) if reverse else range(n)
    acc = np.full(moved_x.shape[1:], identity, x.dtype)
    for j in order:
        if exclusive:
            moved_o[j] = acc
            acc = fn(acc, moved_x[j])
        else:
            acc = fn(acc, moved_x[j])
            moved_o[j] = acc
    return out


@pytest.mark.parametrize("op_type", ["CumSum", "CumProd"])
@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis", [0, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_cumulative_matches_twin(op_type, exclusive, reverse, axis, dtype) -> None:
    x = (np.arange(3 * 5).reshape(3, 5) % 4 + 1).astype(dtype)
    opset = 26 if op_type == "CumProd" else 14
    y = run(op_type, [x, np.array(axis, np.int32)], opset, exclusive=exclusive, reverse=reverse)
    fn, identity = (np.add, 0) if op_type == "CumSum" else (np.multiply, 1)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, cumulative_twin(x, axis % 2, exclusive, reverse, fn, identity))


def test_cumulative_on_an_empty_axis_and_bad_axis() -> None:
    x = np.zeros((2, 0), np.float32)
    assert reduce.CumSum_11(x, np.array(1), exclusive=1, ctx=OpContext()).shape == (2, 0)
    with pytest.raises(ValueError, match="axis must be a scalar"):
        reduce.CumProd_26(x, i64([0, 1]), ctx=OpContext())
