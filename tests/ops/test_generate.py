"""Random ops: shapes, dtypes, determinism under a seed, and the distributions' moments."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import ember
from ember.ops.generate import (
    Bernoulli_15,
    Multinomial_7,
    RandomNormal,
    RandomNormalLike,
    RandomUniform,
    RandomUniformLike,
)


def test_random_normal_shape_dtype_moments():
    y = RandomNormal(shape=[200, 300], mean=2.0, scale=0.5, seed=1.0)
    assert y.shape == (200, 300) and y.dtype == np.float32
    assert abs(y.mean() - 2.0) < 0.01 and abs(y.std() - 0.5) < 0.01


def test_random_uniform_range_and_dtype():
    y = RandomUniform(shape=[1000], low=-3.0, high=-1.0, dtype=TensorProto.DOUBLE)
    assert y.dtype == np.float64 and y.min() >= -3 and y.max() < -1


def test_seed_makes_runs_repeat_and_distinct_seeds_differ():
    a = RandomUniform(shape=[50], seed=3.0)
    np.testing.assert_array_equal(a, RandomUniform(shape=[50], seed=3.0))
    assert not np.array_equal(a, RandomUniform(shape=[50], seed=3.5))
    assert not np.array_equal(RandomNormal(shape=[50]), RandomNormal(shape=[50]))  # unseeded


def test_like_ops_take_shape_and_dtype_from_the_input():
    x = np.zeros((3, 4), np.float16)
    assert RandomNormalLike(x).dtype == np.float16 and RandomNormalLike(x).shape == (3, 4)
    assert RandomUniformLike(x, dtype=TensorProto.FLOAT).dtype == np.float32
    assert RandomUniformLike(np.zeros((0, 2), np.float32)).shape == (0, 2)


def test_bernoulli():
    p = np.linspace(0, 1, 10001)
    y = Bernoulli_15(p, seed=0.0)
    assert y.dtype == np.float64 and set(np.unique(y)) <= {0.0, 1.0}
    assert y[0] == 0 and y[-1] == 1  # p = 0 and p = 1 are certain
    assert abs(y.mean() - 0.5) < 0.02
    np.testing.assert_array_equal(y, Bernoulli_15(p, seed=0.0))
    assert Bernoulli_15(p.astype(np.float32), dtype=TensorProto.BOOL).dtype == np.bool_


def test_bernoulli_rejects_probabilities_outside_0_1():
    with pytest.raises(ValueError, match=r"probabilities must lie in \[0, 1\]"):
        Bernoulli_15(np.float32([0.5, 1.5]))


def test_multinomial():
    logits = np.log(np.float32([[0.1, 0.0001, 0.9], [1, 1, 1]]))
    y = Multinomial_7(logits, sample_size=20000, seed=2.0)
    assert y.shape == (2, 20000) and y.dtype == np.int32
    freq = np.bincount(y[0], minlength=3) / 20000
    np.testing.assert_allclose(freq, [0.1, 0.0001, 0.9], atol=0.01)
    assert y.min() >= 0 and y.max() <= 2
    assert Multinomial_7(logits, dtype=TensorProto.INT64).dtype == np.int64


def test_multinomial_bad_values():
    with pytest.raises(ValueError, match=r"must be \(batch, classes\)"):
        Multinomial_7(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="dtype must be int32 or int64"):
        Multinomial_7(np.zeros((1, 3), np.float32), dtype=TensorProto.FLOAT)
    with pytest.raises(ValueError, match="sample_size must be positive"):
        Multinomial_7(np.zeros((1, 3), np.float32), sample_size=0)


def test_random_normal_through_the_runtime():
    node = helper.make_node(
        "RandomNormal", [], ["y"], shape=[2, 3], seed=5.0, dtype=TensorProto.FLOAT16
    )
    graph = helper.make_graph(
        [node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)]
    )
    m = ember.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)]))
    a, b = m.run({})["y"], m.run({})["y"]
    assert a.shape == (2, 3) and a.dtype == np.float16
    np.testing.assert_array_equal(a, b)
