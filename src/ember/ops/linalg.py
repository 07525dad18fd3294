"""Linear algebra ops: MatMul, Gemm, Einsum, Det (NumPy reference implementations).

Half-precision inputs (float16, bfloat16) are computed in float32 and rounded once at the end; exact
mode computes every floating input in float64. Integer inputs stay integer (wrapping like NumPy).
"""

from __future__ import annotations

import numpy as np

from ember.ops.common import work_dtype
from ember.ops.registry import op


@op
def MatMul(A, B, *, ctx=None):
    """NumPy matmul semantics: N-d batch broadcasting; a 1-D operand is promoted then squeezed."""
    if A.ndim == 0 or B.ndim == 0:
        raise ValueError(f"MatMul needs operands of rank >= 1, got shapes {A.shape} and {B.shape}")
    k_a = A.shape[-1]
    k_b = B.shape[0] if B.ndim == 1 else B.shape[-2]
    if k_a != k_b:
        raise ValueError(
            f"MatMul inner dimensions differ: A {A.shape} has K={k_a}, B {B.shape} has K={k_b}"
        )
    wt = work_dtype(ctx, A.dtype)
    try:
        y = np.matmul(A.astype(wt, copy=False), B.astype(wt, copy=False))
    except ValueError as e:  # batch dimensions that do not broadcast
        raise ValueError(f"MatMul cannot broadcast shapes {A.shape} and {B.shape}") from e
    return np.asarray(y).astype(A.dtype, copy=False)


def _gemm(A, B, C, alpha, beta, transA, transB, ctx, *, broadcast_c=True):
    if A.ndim != 2 or B.ndim != 2:
        raise ValueError(f"Gemm needs 2-D A and B, got shapes {A.shape} and {B.shape}")
    a = A.T if transA else A  # (M, K)
    b = B.T if transB else B  # (K, N)
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"Gemm inner dimensions differ: op(A) is {a.shape}, op(B) is {b.shape} "
            f"(transA={transA}, transB={transB})"
        )
    M, N = a.shape[0], b.shape[1]
    wt = work_dtype(ctx, A.dtype)
    y = a.astype(wt, copy=False) @ b.astype(wt, copy=False)  # (M, N)
    if alpha != 1.0:
        y = y * alpha
    if C is not None:
        ok = C.shape == (M, N) if not broadcast_c else _broadcasts_to(C.shape, (M, N))
        if not ok:
            how = "equal" if not broadcast_c else "broadcast unidirectionally to"
            raise ValueError(f"Gemm: C of shape {C.shape} must {how} the output shape {(M, N)}")
        if beta != 0.0:
            y = y + (C.astype(wt, copy=False) * beta if beta != 1.0 else C.astype(wt, copy=False))
    return np.asarray(y).astype(A.dtype, copy=False)


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == target
    except ValueError:
        return False


@op
def Gemm(A, B, C, *, alpha=1.0, beta=1.0, broadcast=0, transA=0, transB=0, ctx=None):
    """Gemm-1/6: C is required and must have the output's shape unless `broadcast` is set."""
    return _gemm(A, B, C, alpha, beta, transA, transB, ctx, broadcast_c=bool(broadcast))


@op
def Gemm_7(A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, ctx=None):
    """Y = alpha * op(A) @ op(B) + beta * C, C broadcast unidirectionally (optional since 11)."""
    return _gemm(A, B, C, alpha, beta, transA, transB, ctx)


@op
def Einsum_12(*Inputs, equation, ctx=None):
    """np.einsum with the equation (spaces ignored); implicit mode sorts output labels by ASCII,
    upper case before lower case, exactly as NumPy does."""
    if not isinstance(equation, str) or not equation.strip():
        raise ValueError(f"Einsum needs a non-empty equation string, got {equation!r}")
    if not Inputs:
        raise ValueError("Einsum needs at least one input")
    eq = equation.replace(" ", "")
    n_terms = len(eq.split("->")[0].split(","))
    if n_terms != len(Inputs):
        raise ValueError(
            f"Einsum equation {equation!r} names {n_terms} operands, got {len(Inputs)}"
        )
    dtype = Inputs[0].dtype
    wt = work_dtype(ctx, dtype)
    args = [x.astype(wt, copy=False) for x in Inputs]
    try:
        y = np.einsum(eq, *args, optimize=len(args) > 2)
    except ValueError as e:
        shapes = ", ".join(str(x.shape) for x in Inputs)
        raise ValueError(f"Einsum equation {equation!r} does not fit shapes {shapes}: {e}") from e
    return np.asarray(y).astype(dtype, copy=False)


@op
def Det_11(X, *, ctx=None):
    """Determinant of each trailing (M, M) matrix: (*, M, M) -> (*)."""
    if X.ndim < 2 or X.shape[-1] != X.shape[-2]:
        raise ValueError(f"Det needs square matrices in the last two axes, got shape {X.shape}")
    wt = work_dtype(ctx, X.dtype)
    return np.asarray(np.linalg.det(X.astype(wt, copy=False))).astype(X.dtype, copy=False)
