"""The sparse matmul (ember.kernels.cpu.sparse) against a float64 NumPy reference.

Odd shapes (K and N not multiples of 16 or 32), densities from empty to full, both B layouts, bias,
every fused activation, M = 1, 3 (the ELLPACK path) and 64+ (the panel path), every code path this
CPU has, out=, a Program step, bad inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from ember.kernels.cpu import sparse

TOL = 1e-4

ACTIVATIONS = {
    "": ((), lambda x: x),
    "Relu": ((), lambda x: np.maximum(x, 0)),
    "LeakyRelu": ((0.3,), lambda x: np.where(x < 0, 0.3 * x, x)),
    "Clip": ((-0.5, 0.7), lambda x: np.clip(x, -0.5, 0.7)),
    "HardSigmoid": ((), lambda x: np.clip(0.2 * x + 0.5, 0, 1)),
}


def _isas() -> list[str]:
    return ["scalar", "avx512"] if sparse.cpu_isa_best() == "avx512" else ["scalar"]


@pytest.fixture(params=_isas())
def isa(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    sparse.set_isa(request.param)
    yield request.param
    sparse.set_isa("auto")


def _weight(k: int, n: int, density: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    return np.where(rng.random((k, n)) < density, w, 0).astype(np.float32)


def _ref(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None, alpha: float = 1.0) -> np.ndarray:
    y = alpha * (a.astype(np.float64) @ b.astype(np.float64))
    return y if bias is None else y + bias


@pytest.mark.parametrize("density", [0.0, 0.01, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("m", [1, 3, 64, 70])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matches_reference(isa: str, density: float, m: int, trans_b: bool) -> None:
    k, n = 77, 45  # a partial 32-wide window, a partial 16-lane slice
    b = _weight(k, n, density)
    bias = np.linspace(-1, 1, n).astype(np.float32)
    a = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    mm = sparse.SparseMatMul(b.T.copy() if trans_b else b, bias, trans_b=trans_b)
    assert mm.nnz == np.count_nonzero(b) and (mm.k, mm.n) == (k, n)
    np.testing.assert_allclose(mm(a), _ref(a, b, bias), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("m", [1, 33])
def test_activations_and_alpha(isa: str, name: str, m: int) -> None:
    params, fn = ACTIVATIONS[name]
    b = _weight(300, 130, 0.1, seed=2)
    a = np.random.default_rng(3).standard_normal((m, 300)).astype(np.float32)
    mm = sparse.SparseMatMul(b, None, activation=name, activation_params=params, alpha=0.5)
    np.testing.assert_allclose(mm(a), fn(_ref(a, b, None, 0.5)), rtol=TOL, atol=TOL)


def test_mlp_layer_shapes_and_leading_axes(isa: str) -> None:
    b = _weight(784, 256, 0.1, seed=4)
    a = np.random.default_rng(5).standard_normal((2, 3, 784)).astype(np.float32)
    y = sparse.SparseMatMul(b)(a)
    assert y.shape == (2, 3, 256)
    np.testing.assert_allclose(y, _ref(a, b, None), rtol=TOL, atol=TOL)


def test_out_and_noncontiguous_input() -> None:
    b = _weight(40, 20, 0.2)
    a = np.random.default_rng(6).standard_normal((40, 5)).astype(np.float32).T  # a view
    out = np.full((5, 20), np.nan, np.float32)
    mm = sparse.SparseMatMul(b)
    assert mm(a, out=out) is out
    np.testing.assert_allclose(out, _ref(a, b, None), rtol=TOL, atol=TOL)


def test_density() -> None:
    assert sparse.density(np.zeros((3, 4), np.float32)) == 0.0
    assert sparse.density(np.ones((3, 4), np.float32)) == 1.0
    assert sparse.density(np.zeros((0, 4), np.float32)) == 1.0


def test_bad_inputs() -> None:
    b = _weight(8, 6, 0.5)
    mm = sparse.SparseMatMul(b)
    with pytest.raises(ValueError, match=r"a must be \(\.\.\., 8\) to match b's K=8, got shape"):
        mm(np.zeros((2, 7), np.float32))
    with pytest.raises(TypeError, match="a must be a float32 NumPy array, got float64"):
        mm(np.zeros((2, 8)))
    with pytest.raises(ValueError, match=r"out has shape \(2, 5\), expected \(2, 6\)"):
        mm(np.zeros((2, 8), np.float32), out=np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="out must be a writeable C-contiguous float32"):
        mm(np.zeros((2, 8), np.float32), out=np.zeros((2, 6)))
    with pytest.raises(ValueError, match=r"b must be 2-D \(K, N\), got shape \(8,\)"):
        sparse.SparseMatMul(np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="with no elements"):
        sparse.SparseMatMul(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match=r"bias has shape \(5,\), expected \(6,\)"):
        sparse.SparseMatMul(b, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="activation 'Gelu' is not supported"):
        sparse.SparseMatMul(b, activation="Gelu")
    with pytest.raises(ValueError, match="Relu takes at most 0 activation_params, got 1"):
        sparse.SparseMatMul(b, activation="Relu", activation_params=(1.0,))
    with pytest.raises(ValueError, match="expected 'auto', 'avx512' or 'scalar', got 'sse'"):
        sparse.set_isa("sse")


def test_program_step_runs_the_kernel() -> None:
    from ember.kernels.cpu import _C

    b = _weight(50, 24, 0.1)
    mm = sparse.SparseMatMul(b, None, activation="Relu")
    step = mm.step((0, (3, 50)), (1, (3, 24)))
    a = np.random.default_rng(7).standard_normal((3, 50)).astype(np.float32)
    program = _C.Program([step], [(0, 0, [3, 50]), (1, 0, [3, 24])], 0)
    y = np.zeros((3, 24), np.float32)
    assert program.run([a], np.zeros(0, np.uint8), [y])
    np.testing.assert_allclose(y, np.maximum(_ref(a, b, None), 0), rtol=TOL, atol=TOL)
    with pytest.raises(ValueError, match=r"out has shape \(3, 25\), expected \(3, 24\)"):
        mm.step((0, (3, 50)), (1, (3, 25)))
    with pytest.raises(ValueError, match=r"a must be \(\.\.\., 50\)"):
        mm.step((0, (3, 49)), (1, (3, 24)))


def _clustered(k: int, n: int, seed: int) -> np.ndarray:
    """A (K, N) weight like a pruned first layer: dead inputs (all-zero rows of B) at both ends
    and in a stripe, nonzeros bunched in a few busy rows, a thin spread elsewhere."""
    b = _weight(k, n, 0.03, seed)
    b[: k // 5] = 0  # a dead border
    b[-k // 7 :] = 0
    b[k // 2 : k // 2 + 9] = 0  # a dead stripe
    busy = _weight(12, n, 0.8, seed + 1)
    b[k // 3 : k // 3 + 12] = busy  # a few inputs most outputs read
    return b


@pytest.mark.parametrize("m", [1, 2, 3, 64])
@pytest.mark.parametrize("trans_b", [False, True])
def test_dead_inputs_and_clustered_nonzeros(isa: str, m: int, trans_b: bool) -> None:
    k, n = 300, 70
    b = _clustered(k, n, seed=11)
    assert not b[: k // 5].any() and b[k // 3 : k // 3 + 12].mean() != 0
    bias = np.linspace(-0.5, 0.5, n).astype(np.float32)
    a = np.random.default_rng(12).standard_normal((m, k)).astype(np.float32)
    mm = sparse.SparseMatMul(b.T.copy() if trans_b else b, bias, trans_b=trans_b, activation="Relu")
    np.testing.assert_allclose(mm(a), np.maximum(_ref(a, b, bias), 0), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("m", [1, 3, 64])
def test_nan_in_a_only_reaches_outputs_through_nonzeros(isa: str, m: int) -> None:
    # The few-rows kernel pads with zeros: padding must read a zero, never a dead input's NaN.
    b = _clustered(200, 40, seed=13)
    dead = np.flatnonzero(~b.any(axis=1))
    a = np.random.default_rng(14).standard_normal((m, 200)).astype(np.float32)
    want = _ref(a, b, None)
    a[:, dead[::2]] = np.nan
    a[:, dead[1::2]] = np.inf
    np.testing.assert_allclose(sparse.SparseMatMul(b)(a), want, rtol=TOL, atol=TOL)


def test_windows_balanced_on_a_pruned_mlp_layer() -> None:
    # MNIST's border pixels are dead and nonzeros bunch in the middle ones: in plain K order the
    # few-rows layout padded ~3.2x (16 * steps / nnz); the reordered compact K keeps it ~1.6x.
    import onnx
    from onnx import numpy_helper

    from ember.zoo import model_path

    model = onnx.load(model_path("mnist_mlp"))
    w = next(numpy_helper.to_array(t) for t in model.graph.initializer if len(t.dims) == 2)
    w = np.where(np.abs(w) > np.quantile(np.abs(w), 0.9), w, 0).astype(np.float32)  # (256, 784)
    mm = sparse.SparseMatMul(w, trans_b=True)
    assert (mm.k, mm.n) == (784, 256)
    assert mm.nnz / 16 <= mm.ell_steps <= 1.8 * mm.nnz / 16
    assert sparse.SparseMatMul(w, trans_b=True).ell_steps == mm.ell_steps  # a fixed layout
    a = np.random.default_rng(15).standard_normal((1, 784)).astype(np.float32)
    np.testing.assert_allclose(mm(a), _ref(a, w.T, None), rtol=TOL, atol=TOL)


def test_ell_steps_of_empty_and_one_hot_weights() -> None:
    assert sparse.SparseMatMul(np.zeros((40, 20), np.float32)).ell_steps == 0
    one = np.zeros((40, 20), np.float32)
    one[7, 3] = 2.0
    mm = sparse.SparseMatMul(one)
    assert mm.ell_steps == 1  # one window, one slice with one nonzero: a single 1-step group
    y = mm(np.arange(40, dtype=np.float32)[None])
    assert y[0, 3] == 14.0 and np.count_nonzero(y) == 1
