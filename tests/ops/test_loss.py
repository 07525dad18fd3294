"""NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss against per-sample loop twins."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.ops.node import run_node

from ember.errors import ExecutionError
from ember.ops.loss import NegativeLogLikelihoodLoss_12, SoftmaxCrossEntropyLoss_12
from ember.ops.registry import OpContext

RNG = np.random.default_rng(0)


def nll_twin(logp, target, weight, ignore_index, reduction):
    """The spec's loops: one sample at a time, in float64."""
    loss = np.zeros(target.shape)
    wsum = 0.0
    for idx in itertools.product(*(range(d) for d in target.shape)):
        c = int(target[idx])
        if ignore_index is not None and c == ignore_index:
            continue
        w = 1.0 if weight is None else float(weight[c])
        loss[idx] = -float(logp[(idx[0], c, *idx[1:])]) * w
        wsum += w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / wsum


def log_softmax_twin(x):
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def case(shape, C, *, ignore_index=None, p_ignore=0.3, weighted=False):
    N, *D = shape
    x = RNG.standard_normal((N, C, *D)).astype(np.float32)
    t = RNG.integers(0, C, size=(N, *D)).astype(np.int64)
    if ignore_index is not None:
        t[RNG.random(t.shape) < p_ignore] = ignore_index
    w = RNG.random(C).astype(np.float32) + 0.1 if weighted else None
    return x, t, w


SHAPES = [(3,), (2, 4), (2, 3, 2), (1, 2, 1, 3, 2)]
IGNORES = [None, 0, -1, 100]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("ignore_index", IGNORES)
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_matches_twin(shape, reduction, ignore_index, weighted) -> None:
    x, t, w = case(shape, 4, ignore_index=ignore_index, weighted=weighted)
    attrs = {"reduction": reduction}
    if ignore_index is not None:
        attrs["ignore_index"] = ignore_index
    inputs = [("x", x), ("t", t)] + ([("w", w)] if weighted else [])
    got = run_node("NegativeLogLikelihoodLoss", inputs, attrs, opset=22)
    want = nll_twin(x, t, w, ignore_index, reduction)
    assert got.dtype == np.float32 and got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("ignore_index", IGNORES)
@pytest.mark.parametrize("weighted", [False, True])
def test_sce_matches_twin(shape, reduction, ignore_index, weighted) -> None:
    x, t, w = case(shape, 5, ignore_index=ignore_index, weighted=weighted)
    attrs = {"reduction": reduction}
    if ignore_index is not None:
        attrs["ignore_index"] = ignore_index
    inputs = [("x", x), ("t", t)] + ([("w", w)] if weighted else [])
    loss, log_prob = run_node("SoftmaxCrossEntropyLoss", inputs, attrs, opset=13, n_outputs=2)
    lp = log_softmax_twin(x)
    np.testing.assert_allclose(log_prob, lp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        loss, nll_twin(lp, t, w, ignore_index, reduction), rtol=1e-5, atol=1e-6
    )
    # With one declared output the node returns the loss alone.
    alone = run_node("SoftmaxCrossEntropyLoss", inputs, attrs, opset=12)
    np.testing.assert_array_equal(alone, loss)


def test_sce_is_stable_for_huge_scores() -> None:
    x = np.array([[1e4, -1e4, 0.0], [-1e30, 1e30, 3.0]], np.float32)
    t = np.array([1, 1])
    loss, log_prob = SoftmaxCrossEntropyLoss_12(x, t, reduction="none", ctx=OpContext(n_outputs=2))
    assert np.isfinite(loss).all() and np.isfinite(log_prob).all()
    np.testing.assert_allclose(loss, [2e4, 0.0], rtol=1e-6)


def test_mean_with_every_sample_ignored_is_nan() -> None:
    x, t = np.zeros((2, 3), np.float32), np.array([-1, -1])
    assert math.isnan(NegativeLogLikelihoodLoss_12(x, t, ignore_index=-1))
    assert NegativeLogLikelihoodLoss_12(x, t, ignore_index=-1, reduction="sum") == 0


def test_half_precision_and_exact_mode() -> None:
    x, t, w = case((64, 3), 7, weighted=True)
    want = nll_twin(x, t, w, None, "mean")
    for dtype in (np.float16, np.float32):
        got = NegativeLogLikelihoodLoss_12(x.astype(dtype), t, w.astype(dtype))
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=3e-3)
    exact = NegativeLogLikelihoodLoss_12(x, t, w, ctx=OpContext(exact=True))
    want_exact = nll_twin(x, t, w.astype(np.float64), None, "mean")
    assert exact == np.float32(want_exact)
    sce = SoftmaxCrossEntropyLoss_12(x, t, w, ctx=OpContext(exact=True))
    assert sce == np.float32(nll_twin(log_softmax_twin(x), t, w.astype(np.float64), None, "mean"))


def test_errors_name_the_problem() -> None:
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(
        ValueError, match=r"target value 3 is out of range \[0, 3\) and is not ignore_index \(-1\)"
    ):
        NegativeLogLikelihoodLoss_12(x, np.array([[0, 1, 2, 3], [0, 0, 0, 0]]), ignore_index=-1)
    with pytest.raises(ValueError, match=r"target has shape \(2, 3\), expected \(2, 4\)"):
        NegativeLogLikelihoodLoss_12(x, np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\), got \(2,\)"):
        NegativeLogLikelihoodLoss_12(x, np.zeros((2, 4), np.int64), np.ones(2, np.float32))
    with pytest.raises(ExecutionError, match=r"reduction must be one of .* got 'avg'"):
        run_node(
            "NegativeLogLikelihoodLoss",
            [("x", x), ("t", np.zeros((2, 4), np.int64))],
            {"reduction": "avg"},
        )
    with pytest.raises(TypeError, match="target must be an integer tensor, got float32"):
        NegativeLogLikelihoodLoss_12(x, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"scores must be \(N, C\) or \(N, C, d1, ...\)"):
        SoftmaxCrossEntropyLoss_12(np.zeros(3, np.float32), np.zeros((), np.int64))


def test_int32_targets() -> None:
    x, t, _ = case((3, 2), 4)
    np.testing.assert_allclose(
        NegativeLogLikelihoodLoss_12(x, t.astype(np.int32), reduction="none"),
        nll_twin(x, t, None, None, "none"),
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=3),
    st.integers(1, 5),
    st.sampled_from(["none", "sum", "mean"]),
    st.booleans(),
    st.sampled_from([None, 0, -3]),
    st.integers(0, 2**32 - 1),
)
def test_sce_equals_nll_of_log_softmax(shape, C, reduction, weighted, ignore_index, seed) -> None:
    rng = np.random.default_rng(seed)
    N, *D = shape
    x = rng.standard_normal((N, C, *D)) * 10
    t = rng.integers(0, C, size=(N, *D))
    if ignore_index is not None:
        t[rng.random(t.shape) < 0.5] = ignore_index
    w = rng.random(C) + 0.5 if weighted else None
    kw = {"reduction": reduction, "ignore_index": ignore_index}
    sce = SoftmaxCrossEntropyLoss_12(x, t, w, **kw)
    nll = NegativeLogLikelihoodLoss_12(log_softmax_twin(x), t, w, **kw)
    np.testing.assert_allclose(sce, nll, rtol=1e-12, atol=1e-12)
