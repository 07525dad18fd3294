"""A matmul with a constant sparse B (ember._C: csrc/sparse.cpp), for unstructured-pruned weights.

Only B's nonzeros are stored and read: at 90% sparsity about 4x fewer bytes than the dense
weight, which is what bounds a matmul at batch 1. Nothing here decides when sparse pays; that is
runtime/sparse.py, which times this against dnnl.MatMul per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ember.kernels.cpu import _C

#: The activations SparseMatMul fuses (dnnl.MatMul's names and params; ONNX semantics).
ACTIVATIONS: dict[str, int] = {
    "Relu": 0,
    "LeakyRelu": 1,  # alpha
    "Clip": 2,  # min, max
    "HardSigmoid": 2,  # alpha, beta
}


def density(b: np.ndarray) -> float:
    """The fraction of b's elements that are not zero (1.0 for an empty array).

    >>> density(np.array([[0.0, 1.0], [0.0, 0.0]], np.float32))
    0.25
    """
    return float(np.count_nonzero(b)) / b.size if b.size else 1.0


class SparseMatMul(_C.SparseMatMul):
    """`SparseMatMul(B, bias)(a) = act(alpha * a @ B + bias)` with B's zeros skipped.

    a is (..., K) float32 (leading axes flattened into rows), B is (K, N) or, with trans_b,
    (N, K) as Gemm's transB gives it; bias is (N,). activation is one of ACTIVATIONS (others:
    use dnnl.MatMul). `out=` takes a C-contiguous float32 array of the output's shape.
    NOTE: a NaN or inf in `a` only reaches the outputs through B's nonzeros, unlike a dense matmul.
    `ell_steps`: the 16-lane steps the few-rows AVX-512 kernel reads per row (nnz / 16 and up;
    the rest is padding), for checking its layout.

    >>> b = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, -2.0]], np.float32)  # (K=3, N=2)
    >>> mm = SparseMatMul(b, np.array([0.5, 0.0], np.float32), activation="Relu")
    >>> mm.nnz
    2
    >>> mm(np.array([[1.0, 7.0, 1.0]], np.float32))
    array([[1.5, 0. ]], dtype=float32)
    """

    def __init__(
        self,
        b: np.ndarray,
        bias: np.ndarray | None = None,
        *,
        trans_b: bool = False,
        activation: str = "",
        activation_params: Sequence[float] = (),
        alpha: float = 1.0,
    ) -> None:
        if isinstance(b, np.ndarray) and b.ndim == 2 and b.size == 0:
            raise ValueError(f"SparseMatMul: b has shape {b.shape}, with no elements")
        super().__init__(
            b,
            bias,
            trans_b=bool(trans_b),
            activation=activation,
            activation_params=[float(p) for p in activation_params],
            alpha=float(alpha),
        )


def set_isa(name: str) -> None:
    """Limit the sparse kernels to "avx512" or "scalar" ("auto": the best this CPU has).

    For tests that check every code path; raises ValueError for a path the CPU cannot run.
    """
    _C.set_sparse_isa(name)


def isa() -> str:
    """The code path the sparse kernels take now: "avx512" or "scalar"."""
    return str(_C.sparse_isa())


def cpu_isa_best() -> str:
    """The widest code path this CPU can run: "avx512" or "scalar"."""
    info = _C.cpu_info()
    return "avx512" if info["avx512f"] and info["fma"] else "scalar"
