"""Small helpers shared by op modules: the dtype to compute in (exact mode) and axis handling."""

from __future__ import annotations

from typing import Any

import numpy as np

from ember.ops.registry import OpContext


def is_float(dtype: np.dtype) -> bool:
    """True for NumPy floats and ml_dtypes' bfloat16/float8/float6/float4 (whose kind is 'V')."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype.name.startswith(("bfloat16", "float8", "float6", "float4"))


def work_dtype(ctx: OpContext | None, dtype: np.dtype) -> np.dtype:
    """The dtype an op computes in for inputs of `dtype`; callers cast results back to `dtype`.

    float64 for any float in exact mode; float32 for floats narrower than 32 bits (NumPy has no
    accurate or fast float16 kernels and none at all for bfloat16/float8); otherwise `dtype`.
    """
    dtype = np.dtype(dtype)
    if not is_float(dtype):
        return dtype
    if ctx is not None and ctx.exact:
        return np.dtype(np.float64)
    return np.dtype(np.float32) if dtype.itemsize < 4 else dtype


def work_arrays(ctx: OpContext | None, *arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays to compute with, each in its `work_dtype` (no copy when already there)."""
    return [a.astype(work_dtype(ctx, a.dtype), copy=False) for a in arrays]


def normalize_axis(axis: int, rank: int, *, name: str = "axis") -> int:
    """A possibly negative axis as a non-negative one; ValueError names the range."""
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"{name}={axis} is out of range for a rank-{rank} tensor")
    return axis % max(rank, 1)


def as_int_list(x: Any) -> list[int]:
    """A shape/axes/indices input tensor (int64 array) as a list of Python ints."""
    return [int(v) for v in np.asarray(x).reshape(-1)]
