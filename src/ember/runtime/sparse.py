"""The sparse/dense crossover for constant MatMul/Gemm weights, decided per layer at compile time.

A weight with density at most DENSITY_CUTOFF gets both kernels built, the sparse one
(kernels/cpu/sparse.py) and oneDNN's dense one, and each is timed on random input at the row
counts the model will run (1 when the batch is symbolic, else the static one); the sparse kernel is
kept only when it is faster at every one of them. The timer is a parameter, so the decision logic
is testable without clocks. Knows nothing about graphs beyond a value's static shape.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from ember.kernels.cpu import sparse

#: Weights denser than this stay dense without timing: no sparse format pays there.
DENSITY_CUTOFF = 0.5

#: False keeps every layer on the dense kernel (benchmarks/sparse.py measures with it off and on).
enabled: bool = True

#: seconds per call of a zero-argument function
Timer = Callable[[Callable[[], Any]], float]


@dataclasses.dataclass(frozen=True)
class Choice:
    """What `choose` decided for one weight, and why.

    kernel: "sparse" or "dense"; sparse: the built kernel when kernel == "sparse"; rows: the row
    counts M that were timed; dense_s / sparse_s: seconds per call at each (empty if not timed).
    """

    kernel: str
    density: float
    reason: str
    rows: tuple[int, ...] = ()
    dense_s: tuple[float, ...] = ()
    sparse_s: tuple[float, ...] = ()
    sparse: sparse.SparseMatMul | None = None


def best_time(fn: Callable[[], Any], *, repeat: int = 5, number: int = 20) -> float:
    """The best of `repeat` averages over `number` calls, in seconds per call (after a warm-up)."""
    for _ in range(3):
        fn()
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def choose(
    b: np.ndarray,
    bias: np.ndarray | None,
    dense: Callable[..., Any],
    *,
    trans_b: bool = False,
    alpha: float = 1.0,
    activation: str = "",
    activation_params: Sequence[float] = (),
    rows: Sequence[int] = (1,),
    timer: Timer | None = None,
) -> Choice:
    """Sparse or dense for y = act(alpha * a @ B + bias), B constant (K, N) or (N, K) with trans_b.

    `dense(a, out=)` is the dense kernel already built (dnnl.MatMul); `rows` the row counts M to
    time at; `timer(fn)` gives seconds per call (default: best_time).

    >>> b = np.zeros((64, 32), np.float32); b[::9, ::5] = 1.0
    >>> fake = iter([2e-6, 1e-6])  # dense, then sparse
    >>> choose(b, None, dense=lambda a, out: out, timer=lambda fn: next(fake)).kernel
    'sparse'
    """
    d = sparse.density(b)
    if not enabled:
        return Choice("dense", d, "sparse kernels are switched off (runtime.sparse.enabled)")
    if d > DENSITY_CUTOFF:
        return Choice("dense", d, f"density {d:.3f} > {DENSITY_CUTOFF}")
    if activation and activation not in sparse.ACTIVATIONS:
        return Choice("dense", d, f"the sparse kernel does not fuse {activation}")
    kernel = sparse.SparseMatMul(
        b,
        bias,
        trans_b=trans_b,
        alpha=alpha,
        activation=activation,
        activation_params=activation_params,
    )
    measure = timer or best_time
    rng = np.random.default_rng(0)
    dense_s, sparse_s = [], []
    for m in rows:
        a = rng.standard_normal((m, kernel.k), dtype=np.float32)
        out = np.empty((m, kernel.n), np.float32)
        dense_s.append(measure(functools.partial(dense, a, out=out)))
        sparse_s.append(measure(functools.partial(kernel, a, out=out)))
    wins = all(s < t for s, t in zip(sparse_s, dense_s, strict=True))
    times = ", ".join(
        f"M={m}: sparse {s * 1e6:.2f} us vs dense {t * 1e6:.2f} us"
        for m, s, t in zip(rows, sparse_s, dense_s, strict=True)
    )
    return Choice(
        "sparse" if wins else "dense",
        d,
        times,
        tuple(rows),
        tuple(dense_s),
        tuple(sparse_s),
        kernel if wins else None,
    )


def expected_rows(a: ir.Value | None) -> tuple[int, ...]:
    """The row counts M a matmul reading `a` (..., K) will see: its static M, else (1,)."""
    shape = None if a is None else a.shape
    if shape is None or len(shape) < 2:
        return (1,)
    rows = [d for d in shape[:-1] if isinstance(d, int)]
    if len(rows) != len(shape) - 1:
        return (1,)  # a symbolic batch
    m = math.prod(rows)
    return (m,) if m > 0 else (1,)
