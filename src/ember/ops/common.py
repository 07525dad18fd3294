"""Small helpers shared by op modules: exact-mode accumulation and axis handling."""

from __future__ import annotations

from typing import Any

import numpy as np

from ember.ops.registry import OpContext


def accumulate(ctx: OpContext | None, *arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays to compute with: float64 copies of floating inputs in exact mode, else as given.

    Cast the result back with `.astype(x.dtype)` so outputs keep the spec's dtype.
    """
    if ctx is None or not ctx.exact:
        return list(arrays)
    return [a.astype(np.float64) if is_float(a.dtype) else a for a in arrays]


def is_float(dtype: np.dtype) -> bool:
    """True for NumPy floats and ml_dtypes' bfloat16/float8/float6/float4 (whose kind is 'V')."""
    return dtype.kind == "f" or dtype.name.startswith(("bfloat16", "float8", "float6", "float4"))


def normalize_axis(axis: int, rank: int, *, name: str = "axis") -> int:
    """A possibly negative axis as a non-negative one; ValueError names the range."""
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"{name}={axis} is out of range for a rank-{rank} tensor")
    return axis % max(rank, 1)


def as_int_list(x: Any) -> list[int]:
    """A shape/axes/indices input tensor (int64 array) as a list of Python ints."""
    return [int(v) for v in np.asarray(x).reshape(-1)]
