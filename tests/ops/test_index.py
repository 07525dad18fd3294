"""Gathers and scatters against loop-written twins: negative and duplicate indices, reductions,
batch dims, and the error a user sees for an out-of-range index."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

import ember
from ember.errors import ExecutionError, UnsupportedError
from ember.ops import index
from ember.ops.registry import lookup


def run(op_type, inputs, opset=18, **attrs):
    names = [f"x{i}" if a is not None else "" for i, a in enumerate(inputs)]
    node = helper.make_node(op_type, names, ["y"], **attrs)
    given_inputs = [(n, a) for n, a in zip(names, inputs, strict=True) if a is not None]
    ins = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in given_inputs
    ]
    graph = helper.make_graph([node], "g", ins, [helper.make_value_info("y", onnx.TypeProto())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ember.load(model).run(dict(given_inputs))["y"]


def i64(v):
    return np.array(v, dtype=np.int64)


# ---------------------------------------------------------------- gathers


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_matches_take_with_negative_and_nd_indices(axis) -> None:
    data = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    idx = np.array([[0, -1], [1, 2]], np.int32)
    y = run("Gather", [data, idx], 13, axis=axis)
    np.testing.assert_array_equal(y, np.take(data, idx, axis=axis))
    assert y.dtype == np.float32


def test_gather_scalar_index_drops_the_axis() -> None:
    data = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(run("Gather", [data, i64(-1)], 13, axis=1), data[:, 3])


def test_gather_out_of_range_names_index_and_axis_size() -> None:
    data = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"index 4 is out of range for axis 1 of size 4"):
        index.Gather(data, i64([0, 4]), axis=1)
    with pytest.raises(ExecutionError, match=r"index -4 is out of range for axis 0 of size 3"):
        run("Gather", [data, i64([-4])], 13)


def test_gather_elements_with_smaller_indices_and_negatives() -> None:
    data = np.arange(9).reshape(3, 3)
    idx = i64([[-1, 0], [1, 2]])  # smaller than data off the gather axis
    y = run("GatherElements", [data, idx], 13, axis=0)
    want = np.array([[data[2, 0], data[0, 1]], [data[1, 0], data[2, 1]]])
    np.testing.assert_array_equal(y, want)
    with pytest.raises(ValueError, match=r"index 3 is out of range for axis 1 of size 3"):
        index.GatherElements_11(data, i64([[3]]), axis=1)


def gather_nd_twin(data, indices, b):
    out_shape = indices.shape[:-1] + data.shape[b + indices.shape[-1] :]
    out = np.empty(out_shape, data.dtype)
    for pos in itertools.product(*[range(d) for d in indices.shape[:-1]]):
        out[pos] = data[pos[:b] + tuple(int(i) for i in indices[pos])]
    return out


@pytest.mark.parametrize(
    ("data_shape", "idx_shape", "b"),
    [
        ((2, 3, 4), (5, 2), 0),
        ((2, 3, 4), (2, 1), 1),
        ((2, 3, 4), (2, 3, 1), 2),
        ((2, 3), (4, 2), 0),
    ],
)
def test_gather_nd_matches_twin(data_shape, idx_shape, b) -> None:
    rng = np.random.default_rng(0)
    data = rng.standard_normal(data_shape).astype(np.float32)
    k = idx_shape[-1]
    dims = np.array(data_shape[b : b + k])
    idx = (rng.integers(-100, 100, idx_shape) % dims) - dims * rng.integers(0, 2, idx_shape)
    y = run("GatherND", [data, idx.astype(np.int64)], 13, batch_dims=b)
    np.testing.assert_array_equal(y, gather_nd_twin(data, idx, b))


def test_gather_nd_errors() -> None:
    data = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"index 3 is out of range for an indexed axis of size 3"):
        index.GatherND_11(data, i64([[0, 3]]))
    with pytest.raises(ValueError, match="first 1 dims of data"):
        index.GatherND_11(data, i64([[0], [1], [0]]), batch_dims=1)


# ---------------------------------------------------------------- scatters


TWIN_REDUCE = {
    "none": lambda a, b: b,
    "add": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "max": np.maximum,
    "min": np.minimum,
}


def scatter_elements_twin(data, indices, updates, axis, reduction):
    out = data.copy()
    for pos in itertools.product(*[range(d) for d in indices.shape]):
        tgt = list(pos)
        i = int(indices[pos])
        tgt[axis] = i + data.shape[axis] if i < 0 else i
        out[tuple(tgt)] = TWIN_REDUCE[reduction](out[tuple(tgt)], updates[pos])
    return out


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_scatter_elements_reductions_with_duplicates(reduction, axis) -> None:
    rng = np.random.default_rng(3)
    data = rng.standard_normal((3, 4)).astype(np.float32)
    a = axis % 2
    n = data.shape[a]
    idx_shape = (2, 4) if a == 0 else (3, 2)
    if reduction == "none":  # duplicates are undefined without a reduction: distinct targets
        order = np.argsort(rng.random(data.shape), axis=a)
        indices = order[:2] if a == 0 else order[:, :2]
    else:
        indices = rng.integers(0, n, idx_shape)  # duplicates likely
    indices = indices - n * rng.integers(0, 2, idx_shape)  # some negative
    updates = rng.standard_normal(idx_shape).astype(np.float32)
    y = run("ScatterElements", [data, indices, updates], 18, axis=axis, reduction=reduction)
    want = scatter_elements_twin(data, indices, updates, a, reduction)
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_scatter_does_not_write_into_its_input() -> None:
    data = np.zeros((2, 2), np.float32)
    y = index.ScatterElements_11(data, i64([[1, 0]]), np.ones((1, 2), np.float32), axis=1)
    assert (data == 0).all() and y[0].tolist() == [1, 1]


def test_deprecated_scatter_is_scatter_elements() -> None:
    assert lookup("Scatter", "", 10).fn is index.Scatter_9
    data = np.zeros((1, 5), np.float32)
    y = run("Scatter", [data, i64([[1, 3]]), np.array([[1.1, 2.1]], np.float32)], 10, axis=1)
    np.testing.assert_allclose(y, [[0, 1.1, 0, 2.1, 0]])


def test_scatter_errors() -> None:
    data = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"index 2 is out of range for axis 0 of size 2"):
        index.ScatterElements_11(data, i64([[2, 0]]), np.ones((1, 2), np.float32))
    with pytest.raises(UnsupportedError, match="reduction 'avg'"):
        index.ScatterElements_11(data, i64([[0, 0]]), np.ones((1, 2), np.float32), reduction="avg")


def scatter_nd_twin(data, indices, updates, reduction):
    out = data.copy()
    for pos in itertools.product(*[range(d) for d in indices.shape[:-1]]):
        tgt = tuple(int(i) for i in indices[pos])
        out[tgt] = TWIN_REDUCE[reduction](out[tgt], updates[pos])
    return out


@settings(max_examples=40, deadline=None)
@given(
    reduction=st.sampled_from(["add", "mul", "max", "min"]),
    k=st.integers(1, 3),
    m=st.integers(0, 6),
    seed=st.integers(0, 2**16),
)
def test_scatter_nd_reductions_match_twin(reduction, k, m, seed) -> None:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((2, 3, 4)).astype(np.float32)
    dims = np.array(data.shape[:k])
    indices = rng.integers(0, 100, (m, k)) % dims  # duplicates likely
    updates = rng.standard_normal((m, *data.shape[k:])).astype(np.float32)
    y = index.ScatterND_11(data, indices, updates, reduction=reduction)
    np.testing.assert_allclose(y, scatter_nd_twin(data, indices, updates, reduction), rtol=1e-5)


def test_scatter_nd_slices_and_negative_indices() -> None:
    data = np.zeros((3, 2), np.int32)
    y = run("ScatterND", [data, i64([[-1], [0]]), np.array([[1, 2], [3, 4]], np.int32)], 18)
    np.testing.assert_array_equal(y, [[3, 4], [0, 0], [1, 2]])
    with pytest.raises(ValueError, match=r"updates shape \(1,\) should be \(1, 2\)"):
        index.ScatterND_11(data, i64([[0]]), np.ones(1, np.int32))


# ---------------------------------------------------------------- TensorScatter


def tensor_scatter_twin(cache, update, write, axis, circular):
    out = cache.copy()
    S_max, S = cache.shape[axis], update.shape[axis]
    for prefix in itertools.product(*[range(d) for d in cache.shape[:axis]]):
        for s in range(S):
            t = write[prefix[0]] + s
            t = t % S_max if circular else t
            out[(*prefix, t)] = update[(*prefix, s)]
    return out


@pytest.mark.parametrize("mode", ["linear", "circular"])
@pytest.mark.parametrize("axis", [-2, 1, 2])
def test_tensor_scatter_matches_twin(mode, axis) -> None:
    rng = np.random.default_rng(5)
    cache = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    upd_shape = list(cache.shape)
    upd_shape[axis] = 2
    update = rng.standard_normal(upd_shape).astype(np.float32)
    S_max = cache.shape[axis]
    write = i64([S_max - 2, 1]) if mode == "linear" else i64([S_max - 1, 0])
    if axis == 1:  # the batch index is the first index: keep writes inside the axis of 3
        write = i64([1, 0])
    y = run("TensorScatter", [cache, update, write], 24, mode=mode, axis=axis)
    want = tensor_scatter_twin(cache, update, write, axis % 4, mode == "circular")
    np.testing.assert_array_equal(y, want)


def test_tensor_scatter_defaults_to_writing_at_zero() -> None:
    cache = np.zeros((2, 4, 3), np.float32)
    update = np.ones((2, 1, 3), np.float32)
    y = run("TensorScatter", [cache, update, None], 24, axis=1)
    assert y[:, 0].all() and not y[:, 1:].any()


def test_tensor_scatter_linear_overflow_is_an_error() -> None:
    cache = np.zeros((1, 4, 2), np.float32)
    with pytest.raises(ValueError, match="exceed the cache length 4 in linear mode"):
        index.TensorScatter_24(cache, np.ones((1, 2, 2), np.float32), i64([3]), axis=1)
