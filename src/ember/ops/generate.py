"""Random generator ops: RandomNormal/Uniform(+Like), Bernoulli and Multinomial.

Each call builds its own NumPy Generator: seeded from the `seed` attribute (the same seed gives the
same values on every run, though not the values another runtime gives), or from fresh OS entropy
when no seed is set. No global random state is read or changed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from ember.ops.registry import op


def _rng(seed: float | None) -> np.random.Generator:
    if seed is None:
        return np.random.default_rng()
    # The seed is a float attribute: its bit pattern keeps distinct seeds (0.5, 1.5) distinct.
    return np.random.default_rng(int(np.float64(seed).view(np.uint64)))


def _dtype(onnx_dtype: int | None, like: np.ndarray | None, what: str) -> np.dtype[Any]:
    if onnx_dtype is None:
        if like is None:
            raise ValueError(f"{what} needs a dtype")
        return like.dtype
    try:
        return np.dtype(ir.DataType(onnx_dtype).numpy())
    except (ValueError, TypeError) as e:
        raise TypeError(f"{what}: dtype={onnx_dtype} is not a supported ONNX tensor type") from e


def _shape(shape: list[int]) -> tuple[int, ...]:
    if any(d < 0 for d in shape):
        raise ValueError(f"shape must be non-negative, got {shape}")
    return tuple(shape)


@op
def RandomNormal(
    *,
    dtype: int = 1,
    mean: float = 0.0,
    scale: float = 1.0,
    seed: float | None = None,
    shape: list[int],
) -> np.ndarray:
    """Samples of N(mean, scale^2) with the given shape."""
    values = _rng(seed).normal(mean, scale, _shape(shape))
    return values.astype(_dtype(dtype, None, "RandomNormal"))


@op
def RandomUniform(
    *,
    dtype: int = 1,
    high: float = 1.0,
    low: float = 0.0,
    seed: float | None = None,
    shape: list[int],
) -> np.ndarray:
    """Samples of U[low, high) with the given shape."""
    values = _rng(seed).uniform(low, high, _shape(shape))
    return values.astype(_dtype(dtype, None, "RandomUniform"))


@op
def RandomNormalLike(
    input: np.ndarray,
    *,
    dtype: int | None = None,
    mean: float = 0.0,
    scale: float = 1.0,
    seed: float | None = None,
) -> np.ndarray:
    """Samples of N(mean, scale^2) shaped like `input` (dtype: `dtype`, else the input's)."""
    values = _rng(seed).normal(mean, scale, input.shape)
    return values.astype(_dtype(dtype, input, "RandomNormalLike"))


@op
def RandomUniformLike(
    input: np.ndarray,
    *,
    dtype: int | None = None,
    high: float = 1.0,
    low: float = 0.0,
    seed: float | None = None,
) -> np.ndarray:
    """Samples of U[low, high) shaped like `input` (dtype: `dtype`, else the input's)."""
    values = _rng(seed).uniform(low, high, input.shape)
    return values.astype(_dtype(dtype, input, "RandomUniformLike"))


@op
def Bernoulli_15(
    input: np.ndarray, *, dtype: int | None = None, seed: float | None = None
) -> np.ndarray:
    """1 with probability `input[i]`, else 0 (dtype: `dtype`, else the input's)."""
    p = np.asarray(input, dtype=np.float64)
    if ((p < 0) | (p > 1)).any():  # NaN passes: it samples 0, as U < NaN is false
        raise ValueError("Bernoulli probabilities must lie in [0, 1]")
    draws = _rng(seed).random(p.shape) < p
    return draws.astype(_dtype(dtype, input, "Bernoulli"))


@op
def Multinomial_7(
    input: np.ndarray, *, dtype: int = 6, sample_size: int = 1, seed: float | None = None
) -> np.ndarray:
    """`sample_size` class indices per row of (batch, classes) unnormalized log-probabilities."""
    if input.ndim != 2:
        raise ValueError(f"Multinomial input must be (batch, classes), got shape {input.shape}")
    if sample_size < 1:
        raise ValueError(f"Multinomial sample_size must be positive, got {sample_size}")
    out_dtype = _dtype(dtype, None, "Multinomial")
    if out_dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise TypeError(f"Multinomial dtype must be int32 or int64, got {out_dtype}")
    logits = input.astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)  # (B, C)
    cdf /= cdf[:, -1:]
    u = _rng(seed).random((input.shape[0], sample_size))  # (B, S)
    index = (u[:, :, None] >= cdf[:, None, :]).sum(axis=2)  # (B, S): first class with cdf > u
    return np.minimum(index, input.shape[1] - 1).astype(out_dtype)
