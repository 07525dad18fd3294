"""MatMul, Gemm, Einsum and Det against NumPy twins: odd shapes, broadcasting, attributes, dtypes,
exact mode and the errors a user reads."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.ops.node import run_node

from ember.errors import ExecutionError
from ember.ops.linalg import Det_11, Einsum_12, Gemm, Gemm_7, MatMul
from ember.ops.registry import OpContext

RNG = np.random.default_rng(0)
EXACT = OpContext(exact=True)


def rand(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------------------------
# MatMul
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [
        ((3, 5), (5, 2)),
        ((7,), (7,)),  # 1-D x 1-D -> scalar
        ((7,), (2, 7, 3)),  # 1-D promoted to a row, then squeezed
        ((2, 3, 7), (7,)),  # 1-D promoted to a column
        ((1, 4, 3, 5), (2, 1, 5, 6)),  # batch broadcasting both ways
        ((3, 0), (0, 4)),  # empty contraction: zeros
        ((1, 1), (1, 1)),
    ],
)
def test_matmul_matches_numpy_on_odd_shapes(a_shape, b_shape):
    a, b = rand(*a_shape), rand(*b_shape)
    y = run_node("MatMul", [("a", a), ("b", b)], opset=13)
    expected = np.matmul(a, b)
    assert y.dtype == np.float32 and y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32, np.uint64, np.float64])
def test_matmul_keeps_integer_and_double_dtypes(dtype):
    a = RNG.integers(0, 9, (2, 3, 4)).astype(dtype)
    b = RNG.integers(0, 9, (4, 5)).astype(dtype)
    y = MatMul(a, b)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, np.matmul(a, b))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_matmul_half_floats_accumulate_wide_and_round_once(dtype):
    a, b = rand(4, 64).astype(dtype), rand(64, 3).astype(dtype)
    y = MatMul(a, b)
    assert y.dtype == dtype
    wide = (a.astype(np.float32) @ b.astype(np.float32)).astype(dtype)
    np.testing.assert_array_equal(y.astype(np.float32), wide.astype(np.float32))


def test_matmul_exact_mode_accumulates_in_float64():
    # 1e8 + 1 - 1e8 loses the 1 in float32 accumulation but not in float64.
    a = np.array([[1e8, 1.0, -1e8]], np.float32)
    b = np.ones((3, 1), np.float32)
    assert MatMul(a, b, ctx=EXACT).item() == 1.0
    assert MatMul(a, b, ctx=EXACT).dtype == np.float32
    assert run_node("MatMul", [("a", a), ("b", b)], opset=13, exact=True).item() == 1.0


def test_matmul_errors_name_the_shapes():
    with pytest.raises(
        ValueError, match=r"inner dimensions differ: A \(2, 3\) has K=3, B \(4, 5\)"
    ):
        MatMul(rand(2, 3), rand(4, 5))
    with pytest.raises(ValueError, match=r"cannot broadcast shapes \(2, 3, 4\) and \(3, 4, 5\)"):
        MatMul(rand(2, 3, 4), rand(3, 4, 5))
    with pytest.raises(ValueError, match="rank >= 1"):
        MatMul(np.ones((), np.float32), rand(3))
    # Through the engine the native kernel checks the shapes, in its own words.
    with pytest.raises(ExecutionError, match=r"MatMul.*\(2, 3\).*K=3.*\(4, 5\).*K=4"):
        run_node("MatMul", [("a", rand(2, 3)), ("b", rand(4, 5))], opset=13)


# ----------------------------------------------------------------------------------------------
# Gemm
# ----------------------------------------------------------------------------------------------


def gemm_twin(a, b, c, alpha, beta, trans_a, trans_b):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    y = alpha * ((a64.T if trans_a else a64) @ (b64.T if trans_b else b64))
    return y if c is None else y + beta * c.astype(np.float64)


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (), (1,), (5,), (3, 1), (1, 5), (3, 5)])
def test_gemm_attributes_and_c_broadcasting(trans_a, trans_b, c_shape):
    M, K, N = 3, 7, 5
    a = rand(K, M) if trans_a else rand(M, K)
    b = rand(N, K) if trans_b else rand(K, N)
    c = None if c_shape is None else rand(*c_shape)
    attrs = {"alpha": 0.5, "beta": -2.0, "transA": trans_a, "transB": trans_b}
    inputs = [("a", a), ("b", b), None if c is None else ("c", c)]
    y = run_node("Gemm", inputs, attrs, opset=13)
    assert y.shape == (M, N) and y.dtype == np.float32
    np.testing.assert_allclose(y, gemm_twin(a, b, c, 0.5, -2.0, trans_a, trans_b), rtol=1e-5)


def test_gemm_beta_zero_ignores_c_and_integers_stay_integers():
    a = RNG.integers(-5, 5, (2, 3)).astype(np.int64)
    b = RNG.integers(-5, 5, (3, 4)).astype(np.int64)
    c = np.full((4,), 10**6, np.int64)
    y = Gemm_7(a, b, c, beta=0.0)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, a @ b)
    np.testing.assert_array_equal(Gemm_7(a, b, c), a @ b + c)


def test_gemm_6_needs_broadcast_for_a_smaller_c():
    a, b, c = rand(3, 4), rand(4, 5), rand(5)
    with pytest.raises(ValueError, match=r"C of shape \(5,\) must equal the output shape \(3, 5\)"):
        Gemm(a, b, c)
    y = run_node("Gemm", [("a", a), ("b", b), ("c", c)], {"broadcast": 1}, opset=6)
    np.testing.assert_allclose(y, a @ b + c, rtol=1e-5)


def test_gemm_errors():
    with pytest.raises(ValueError, match=r"op\(A\) is \(3, 4\), op\(B\) is \(5, 5\)"):
        Gemm_7(rand(3, 4), rand(5, 5))
    with pytest.raises(ValueError, match="2-D A and B"):
        Gemm_7(rand(2, 3, 4), rand(4, 5))
    with pytest.raises(ValueError, match=r"must broadcast unidirectionally to the output shape"):
        Gemm_7(rand(3, 4), rand(4, 5), rand(2, 5))


def test_gemm_exact_mode():
    a = np.array([[1e8, 1.0, -1e8]], np.float32)
    b = np.ones((3, 1), np.float32)
    y = run_node("Gemm", [("a", a), ("b", b)], opset=13, exact=True)
    assert y.item() == 1.0 and y.dtype == np.float32


# ----------------------------------------------------------------------------------------------
# Einsum
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("equation", "shapes"),
    [
        ("ij,jk->ik", [(3, 4), (4, 5)]),
        ("bij , bjk -> bik", [(2, 3, 4), (2, 4, 5)]),  # spaces are allowed
        ("ii->i", [(4, 4)]),  # diagonal
        ("ii", [(4, 4)]),  # implicit: trace
        ("ij", [(3, 4)]),  # implicit: identity
        ("ji", [(3, 4)]),  # implicit: sorted labels -> transpose
        ("Ba,aC", [(2, 3), (3, 4)]),  # implicit: upper case sorts before lower case
        ("ba,Ab", [(2, 3), (5, 2)]),
        ("...ij,...jk", [(2, 1, 3, 4), (5, 4, 2)]),  # ellipsis broadcasting, leading output
        ("i,i", [(6,), (6,)]),
        ("i,j,k->ijk", [(2,), (3,), (4,)]),  # three operands
        ("->", [()]),
    ],
)
def test_einsum_matches_numpy(equation, shapes):
    args = [rand(*s) for s in shapes]
    inputs = [(f"x{i}", a) for i, a in enumerate(args)]
    y = run_node("Einsum", inputs, {"equation": equation}, opset=12)
    expected = np.einsum(equation.replace(" ", ""), *args)
    assert y.shape == expected.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16, np.int32, np.int64])
def test_einsum_dtypes(dtype):
    a = RNG.integers(-3, 4, (3, 4)).astype(dtype)
    b = RNG.integers(-3, 4, (4, 2)).astype(dtype)
    y = Einsum_12(a, b, equation="ij,jk->ik")
    assert y.dtype == dtype
    np.testing.assert_array_equal(y.astype(np.float64), a.astype(np.float64) @ b.astype(np.float64))


def test_einsum_errors():
    with pytest.raises(ValueError, match="names 2 operands, got 1"):
        Einsum_12(rand(3, 3), equation="ij,jk")
    with pytest.raises(ValueError, match="non-empty equation"):
        Einsum_12(rand(3, 3), equation="  ")
    with pytest.raises(ValueError, match=r"does not fit shapes \(3, 4\), \(5, 6\)"):
        Einsum_12(rand(3, 4), rand(5, 6), equation="ij,jk->ik")


# ----------------------------------------------------------------------------------------------
# Det
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (2, 4, 4), (2, 1, 5, 5), (0, 2, 2)])
def test_det_batches(shape):
    x = rand(*shape)
    y = run_node("Det", [("x", x)], opset=22)
    assert y.shape == shape[:-2] and y.dtype == np.float32
    np.testing.assert_allclose(y, np.linalg.det(x.astype(np.float64)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float64])
def test_det_narrow_and_wide_floats(dtype):
    x = np.array([[2.0, 1.0], [1.0, 3.0]]).astype(dtype)
    y = Det_11(x)
    assert y.dtype == dtype and float(y) == pytest.approx(5.0, rel=1e-12)
    assert Det_11(x, ctx=EXACT).dtype == dtype


def test_det_singular_is_zero_and_non_square_is_an_error():
    assert Det_11(np.ones((3, 3), np.float32)) == 0.0
    with pytest.raises(ValueError, match=r"square matrices .* got shape \(2, 3\)"):
        Det_11(rand(2, 3))


# ----------------------------------------------------------------------------------------------
# Property: MatMul agrees with float64 NumPy on random shapes
# ----------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    m=st.integers(1, 6),
    k=st.integers(0, 6),
    n=st.integers(1, 6),
)
def test_matmul_property(batch, m, k, n):
    rng = np.random.default_rng(len(batch) * 1000 + m * 100 + k * 10 + n)
    a = rng.standard_normal((*batch, m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    y = MatMul(a, b, ctx=EXACT)
    np.testing.assert_allclose(y, (a.astype(np.float64) @ b.astype(np.float64)), rtol=1e-6)
