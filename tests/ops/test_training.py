"""Adagrad, Adam and Momentum (ai.onnx.preview.training) against per-element float64 twins of
the spec's pseudo code: several tensors at once, first and later steps, dtypes, exact mode and
errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper

import ember
from ember.errors import ExecutionError
from ember.ops.registry import OpContext
from ember.ops.training import Adagrad, Adam, Momentum

RNG = np.random.default_rng(0)
DOMAIN = "ai.onnx.preview.training"
EXACT = OpContext(exact=True)


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def run_node(op_type, inputs, n_outputs, attrs=None, *, exact=False):
    """One training node through ember.load; inputs are (name, array) pairs."""
    names = [n for n, _ in inputs]
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, domain=DOMAIN, **(attrs or {}))
    vi = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in inputs
    ]
    out_vi = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs]
    model = helper.make_model(
        helper.make_graph([node], "g", vi, out_vi),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
    )
    result = ember.load(model, exact=exact).run(dict(inputs))
    return [result[o] for o in outs]


# Twins: the spec's pseudo code, one element at a time, in Python floats.


def adagrad_twin(r, t, x, g, h, *, norm_coefficient=0.0, epsilon=1e-6, decay_factor=0.0):
    r_ = r / (1 + t * decay_factor)
    x_new, h_new = np.empty(x.shape), np.empty(x.shape)
    for i in np.ndindex(x.shape):
        gr = norm_coefficient * float(x[i]) + float(g[i])
        h_new[i] = float(h[i]) + gr * gr
        x_new[i] = float(x[i]) - r_ * gr / (math.sqrt(h_new[i]) + epsilon)
    return x_new, h_new


def adam_twin(r, t, x, g, v, h, *, alpha, beta, epsilon, norm_coefficient, norm_coefficient_post):
    x_new, v_new, h_new = np.empty(x.shape), np.empty(x.shape), np.empty(x.shape)
    r_ = r * math.sqrt(1 - beta**t) / (1 - alpha**t) if t > 0 else r
    for i in np.ndindex(x.shape):
        gr = norm_coefficient * float(x[i]) + float(g[i])
        v_new[i] = alpha * float(v[i]) + (1 - alpha) * gr
        h_new[i] = beta * float(h[i]) + (1 - beta) * gr * gr
        step = float(x[i]) - r_ * v_new[i] / (math.sqrt(h_new[i]) + epsilon)
        x_new[i] = (1 - norm_coefficient_post) * step
    return x_new, v_new, h_new


def momentum_twin(r, t, x, g, v, *, alpha, beta, norm_coefficient, mode):
    x_new, v_new = np.empty(x.shape), np.empty(x.shape)
    b = beta if t > 0 else 1.0
    for i in np.ndindex(x.shape):
        gr = norm_coefficient * float(x[i]) + float(g[i])
        v_new[i] = alpha * float(v[i]) + b * gr
        direction = gr + alpha * v_new[i] if mode == "nesterov" else v_new[i]
        x_new[i] = float(x[i]) - r * direction
    return x_new, v_new


SHAPES = [(3,), (2, 5), (1, 1, 4)]  # three tensors optimized at once


@pytest.mark.parametrize("t", [0, 1, 7])
@pytest.mark.parametrize("decay_factor", [0.0, 0.1])
def test_adagrad_several_tensors(t, decay_factor):
    xs = [rand(*s) for s in SHAPES]
    gs = [rand(*s) for s in SHAPES]
    hs = [np.abs(rand(*s)) for s in SHAPES]
    attrs = {"decay_factor": decay_factor, "norm_coefficient": 0.01, "epsilon": 1e-5}
    inputs = [("R", np.array(0.1, np.float32)), ("T", np.array(t, np.int64))]
    inputs += [(f"x{i}", a) for i, a in enumerate(xs)] + [(f"g{i}", a) for i, a in enumerate(gs)]
    inputs += [(f"h{i}", a) for i, a in enumerate(hs)]
    outs = run_node("Adagrad", inputs, 6, attrs)
    for i in range(3):
        x_new, h_new = adagrad_twin(0.1, t, xs[i], gs[i], hs[i], **attrs)
        assert outs[i].dtype == np.float32 and outs[i].shape == SHAPES[i]
        np.testing.assert_allclose(outs[i], x_new, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(outs[3 + i], h_new, rtol=1e-5, atol=1e-6)


def test_adagrad_defaults_and_exact_mode():
    x, g, h = rand(4, 3, dtype=np.float64), rand(4, 3, dtype=np.float64), np.zeros((4, 3))
    x_new, h_new = Adagrad(np.float32(0.5), np.int64(3), x, g, h, ctx=EXACT)
    tx, th = adagrad_twin(0.5, 3, x, g, h)
    np.testing.assert_allclose(x_new, tx, rtol=1e-13)
    np.testing.assert_array_equal(h_new, th)
    assert x_new.dtype == np.float64


@pytest.mark.parametrize("t", [0, 2])
def test_adam_several_tensors(t):
    n = len(SHAPES)
    xs, gs = [rand(*s) for s in SHAPES], [rand(*s) for s in SHAPES]
    vs, hs = [rand(*s) for s in SHAPES], [np.abs(rand(*s)) for s in SHAPES]
    attrs = {
        "alpha": 0.8,
        "beta": 0.95,
        "epsilon": 1e-3,
        "norm_coefficient": 0.02,
        "norm_coefficient_post": 0.1,
    }
    inputs = [("R", np.array(0.05, np.float32)), ("T", np.array(t, np.int64))]
    for role, arrays in (("x", xs), ("g", gs), ("v", vs), ("h", hs)):
        inputs += [(f"{role}{i}", a) for i, a in enumerate(arrays)]
    outs = run_node("Adam", inputs, 3 * n, attrs)
    for i in range(n):
        expected = adam_twin(0.05, t, xs[i], gs[i], vs[i], hs[i], **attrs)
        for k in range(3):
            np.testing.assert_allclose(outs[k * n + i], expected[k], rtol=1e-5, atol=1e-6)


def test_adam_defaults_and_float16():
    x, g, v, h = (rand(5, dtype=np.float16) for _ in range(4))
    h = np.abs(h)
    x_new, v_new, h_new = Adam(np.float32(0.01), np.int64(5), x, g, v, h)
    assert {a.dtype for a in (x_new, v_new, h_new)} == {np.dtype(np.float16)}
    expected = adam_twin(
        0.01,
        5,
        x,
        g,
        v,
        h,
        alpha=0.9,
        beta=0.999,
        epsilon=1e-6,
        norm_coefficient=0.0,
        norm_coefficient_post=0.0,
    )
    for got, want in zip((x_new, v_new, h_new), expected, strict=True):
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("mode", ["standard", "nesterov"])
@pytest.mark.parametrize("t", [0, 4])
def test_momentum_several_tensors(mode, t):
    n = len(SHAPES)
    xs, gs, vs = ([rand(*s) for s in SHAPES] for _ in range(3))
    attrs = {"alpha": 0.9, "beta": 0.3, "norm_coefficient": 0.01, "mode": mode}
    inputs = [("R", np.array(0.2, np.float32)), ("T", np.array(t, np.int64))]
    for role, arrays in (("x", xs), ("g", gs), ("v", vs)):
        inputs += [(f"{role}{i}", a) for i, a in enumerate(arrays)]
    outs = run_node("Momentum", inputs, 2 * n, attrs)
    for i in range(n):
        x_new, v_new = momentum_twin(0.2, t, xs[i], gs[i], vs[i], **attrs)
        np.testing.assert_allclose(outs[i], x_new, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(outs[n + i], v_new, rtol=1e-5, atol=1e-6)


def test_inputs_are_not_mutated():
    x, g, v = rand(3), rand(3), rand(3)
    before = [a.copy() for a in (x, g, v)]
    kw = {"alpha": 0.5, "beta": 0.5, "norm_coefficient": 0.0, "mode": "nesterov"}
    Momentum(np.float32(1.0), np.int64(1), x, g, v, **kw)
    for a, b in zip((x, g, v), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_training_errors():
    R, T, x = np.float32(0.1), np.int64(0), rand(3)
    with pytest.raises(ValueError, match=r"Adagrad takes R, T and then 3 tensors \(X, G, H\)"):
        Adagrad(R, T, x, x)
    with pytest.raises(ValueError, match=r"Adam takes R, T and then 4 tensors \(X, G, V, H\)"):
        Adam(R, T, x, x, x)
    with pytest.raises(ValueError, match="got 0 tensors after R and T"):
        Momentum(R, T, alpha=0.9, beta=0.1, norm_coefficient=0.0, mode="standard")
    with pytest.raises(ValueError, match=r"R must be a scalar, got shape \(2,\)"):
        Adagrad(np.ones(2, np.float32), T, x, x, x)
    with pytest.raises(ValueError, match="Momentum needs the attribute"):
        Momentum(R, T, x, x, x, alpha=0.9, beta=0.1)
    with pytest.raises(ValueError, match="mode must be 'standard' or 'nesterov', got 'heavy'"):
        Momentum(R, T, x, x, x, alpha=0.9, beta=0.1, norm_coefficient=0.0, mode="heavy")
    with pytest.raises(TypeError, match="must be float or double, got int32"):
        Adagrad(R, T, *(np.ones(3, np.int32),) * 3)
    with pytest.raises(ExecutionError, match=r"Momentum needs the attribute.*mode"):
        run_node(
            "Momentum",
            [("R", np.array(0.1, np.float32)), ("T", np.array(0, np.int64))]
            + [(n, rand(2)) for n in ("x", "g", "v")],
            2,
            {"alpha": 0.9, "beta": 0.1, "norm_coefficient": 0.0},
        )
