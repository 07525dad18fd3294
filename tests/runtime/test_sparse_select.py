"""The sparse/dense crossover (ember.runtime.sparse): the decision with an injected timer, the
hook in the native kernel selection, and a 90%-pruned MLP that runs on sparse kernels end to end.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.kernels.cpu import dnnl
from ember.runtime import sparse as rs


def _pruned(shape: tuple[int, int], density: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    return np.where(rng.random(shape) < density, w, 0).astype(np.float32)


def _timer(times: list[float]) -> Callable[[Callable[[], Any]], float]:
    """A timer that gives `times` in turn (dense, sparse, per row count) and runs each fn once."""
    it: Iterator[float] = iter(times)

    def timer(fn: Callable[[], Any]) -> float:
        fn()
        return next(it)

    return timer


def _choose(b: np.ndarray, **kw: Any) -> rs.Choice:
    return rs.choose(b, None, dnnl.MatMul(b), **kw)


def test_faster_sparse_is_chosen() -> None:
    c = _choose(_pruned((64, 48), 0.1), timer=_timer([2e-6, 1e-6]))
    assert c.kernel == "sparse" and c.sparse is not None
    assert c.rows == (1,) and c.dense_s == (2e-6,) and c.sparse_s == (1e-6,)
    assert "M=1: sparse 1.00 us vs dense 2.00 us" in c.reason


def test_slower_sparse_is_not_chosen() -> None:
    c = _choose(_pruned((64, 48), 0.1), timer=_timer([1e-6, 2e-6]))
    assert c.kernel == "dense" and c.sparse is None


def test_sparse_must_win_at_every_row_count() -> None:
    b = _pruned((64, 48), 0.1)
    lose_at_32 = _choose(b, rows=(1, 32), timer=_timer([2e-6, 1e-6, 5e-6, 6e-6]))
    assert lose_at_32.kernel == "dense" and lose_at_32.rows == (1, 32)
    win_both = _choose(b, rows=(1, 32), timer=_timer([2e-6, 1e-6, 6e-6, 5e-6]))
    assert win_both.kernel == "sparse"


def test_dense_weights_are_not_timed() -> None:
    def never(fn: Callable[[], Any]) -> float:
        raise AssertionError("a dense weight must not be timed")

    c = _choose(_pruned((64, 48), 0.9), timer=never)
    assert c.kernel == "dense" and "density" in c.reason and c.density > rs.DENSITY_CUTOFF


def test_unfusable_activation_stays_dense() -> None:
    b = _pruned((64, 48), 0.1)
    c = rs.choose(b, None, dnnl.MatMul(b, activation="Gelu"), activation="Gelu", timer=None)
    assert c.kernel == "dense" and "Gelu" in c.reason


def test_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rs, "enabled", False)
    assert _choose(_pruned((64, 48), 0.01), timer=_timer([1.0, 0.0])).kernel == "dense"


def test_real_timing_makes_a_decision() -> None:
    c = _choose(_pruned((256, 128), 0.1))
    assert c.kernel in ("sparse", "dense") and len(c.dense_s) == len(c.sparse_s) == 1
    assert (c.sparse is not None) == (c.kernel == "sparse")


def test_expected_rows() -> None:
    import onnx_ir as ir

    def value(*dims: int | str) -> ir.Value:
        return ir.Value(name="a", shape=ir.Shape(dims), type=ir.TensorType(ir.DataType.FLOAT))

    assert rs.expected_rows(value("batch", 784)) == (1,)
    assert rs.expected_rows(value(32, 784)) == (32,)
    assert rs.expected_rows(value(2, 3, 64)) == (6,)
    assert rs.expected_rows(None) == (1,)


def _mlp(density: float, batch: int | str = "batch") -> onnx.ModelProto:
    """784 -> 256 -> 128 -> 10 Gemms (transB) with Relus, weights pruned to `density`."""
    sizes = [784, 256, 128, 10]
    nodes, inits = [], []
    x = "input"
    for i, (k, n) in enumerate(itertools.pairwise(sizes)):
        inits.append(numpy_helper.from_array(_pruned((n, k), density, seed=i), f"w{i}"))
        inits.append(numpy_helper.from_array(np.full(n, 0.01, np.float32), f"b{i}"))
        y = f"g{i}" if i < 2 else "logits"
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [y], transB=1))
        if i < 2:
            nodes.append(helper.make_node("Relu", [y], [f"r{i}"]))
            x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 784])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    h = x.astype(np.float64)
    for i in range(3):
        h = h @ w[f"w{i}"].T + w[f"b{i}"]
        h = np.maximum(h, 0) if i < 2 else h
    return h


@pytest.mark.parametrize("batch", ["batch", 3])
def test_pruned_mlp_runs_sparse_and_lowers(
    monkeypatch: pytest.MonkeyPatch, batch: int | str
) -> None:
    # Deterministic: the sparse kernel always "times" faster; the real race is benchmarks/sparse.py.
    real_choose = rs.choose
    monkeypatch.setattr(
        rs, "choose", lambda *a, **kw: real_choose(*a, **{**kw, "timer": _timer([2.0, 1.0] * 4)})
    )
    model = _mlp(0.1, batch)
    m = ember.load(model.SerializeToString())
    x = np.random.default_rng(9).standard_normal((3, 784)).astype(np.float32)
    np.testing.assert_allclose(
        m.run({"input": x})["logits"], _reference(model, x), rtol=1e-4, atol=1e-4
    )
    profile = m.profile({"input": x}, repeat=2)
    kernels = [s.kernel for s in profile.steps]
    assert kernels.count("ember sparse matmul") == 3, kernels
    assert profile.program_calls == 3  # the whole run is one native Program with sparse steps
    np.testing.assert_allclose(
        m.run({"input": x})["logits"], _reference(model, x), rtol=1e-4, atol=1e-4
    )


def test_dense_mlp_keeps_onednn() -> None:
    m = ember.load(_mlp(0.9).SerializeToString())
    x = np.ones((1, 784), np.float32)
    kernels = [s.kernel for s in m.profile({"input": x}, repeat=1).steps]
    assert kernels == ["onednn matmul"] * 3
