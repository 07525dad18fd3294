"""Index ops: gathers and scatters by index tensors.

Indices may be negative (counting from the back of their axis); an index outside [-n, n) raises
ValueError naming the index and the axis size. Scatters copy `data` and never write into it; with
duplicate indices and reduction "none" the last update wins (the spec leaves the order undefined).
"""

from __future__ import annotations

import numpy as np

from ember.errors import UnsupportedError
from ember.ops.common import normalize_axis
from ember.ops.registry import op


def _check_indices(
    op_type: str, indices: np.ndarray, size: np.ndarray | int, axis: str
) -> np.ndarray:
    """int64 indices with negatives wrapped; ValueError for the first one outside [-size, size).

    `size` may be an array broadcasting against `indices` (one size per index column, GatherND).
    """
    idx = np.asarray(indices).astype(np.int64, copy=False)
    bad = (idx < -size) | (idx >= size)
    if np.any(bad):
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        n = int(np.broadcast_to(size, idx.shape)[pos])
        raise ValueError(f"{op_type}: index {int(idx[pos])} is out of range for {axis} of size {n}")
    return np.where(idx < 0, idx + size, idx)


# ---------------------------------------------------------------------------------------------
# Gathers


@op
def Gather(data, indices, *, axis=0):
    if data.ndim == 0:
        raise ValueError("Gather: data must have rank >= 1, got a scalar")
    a = normalize_axis(axis, data.ndim)
    idx = _check_indices("Gather", indices, data.shape[a], f"axis {axis}")
    return np.take(data, idx, axis=a)


@op
def GatherElements_11(data, indices, *, axis=0):
    a = normalize_axis(axis, data.ndim)
    if indices.ndim != data.ndim:
        raise ValueError(
            f"GatherElements: indices rank {indices.ndim} differs from data rank {data.ndim}"
        )
    for d in range(data.ndim):
        if d != a and indices.shape[d] > data.shape[d]:
            raise ValueError(
                f"GatherElements: indices shape {indices.shape} exceeds data shape {data.shape} "
                f"on axis {d}"
            )
    idx = _check_indices("GatherElements", indices, data.shape[a], f"axis {axis}")
    # Off the gather axis, indices may be smaller than data: only the leading block is read.
    block = tuple(slice(None) if d == a else slice(0, indices.shape[d]) for d in range(data.ndim))
    return np.take_along_axis(data[block], idx, axis=a)


@op
def GatherND_11(data, indices, *, batch_dims=0):
    """Slices of `data` addressed by the last axis of `indices`, after `batch_dims` shared axes.

    >>> GatherND_11(np.arange(6).reshape(2, 3), np.array([[1, -1], [0, 0]])).tolist()
    [5, 0]
    """
    # `batch_dims` exists since opset 12; 0 gives the opset-11 behaviour.
    b = batch_dims
    k = indices.shape[-1] if indices.ndim else 0
    if indices.ndim < 1 or data.ndim < 1:
        raise ValueError("GatherND: data and indices must have rank >= 1")
    if not 0 <= b < min(data.ndim, indices.ndim):
        raise ValueError(f"GatherND: batch_dims={b} must be less than both ranks")
    if data.shape[:b] != indices.shape[:b]:
        raise ValueError(
            f"GatherND: the first {b} dims of data {data.shape} and indices {indices.shape} differ"
        )
    if k > data.ndim - b:
        raise ValueError(
            f"GatherND: indices address {k} dims but data has {data.ndim - b} after the batch dims"
        )
    B = int(np.prod(data.shape[:b], dtype=np.int64))
    dims = np.array(data.shape[b : b + k], dtype=np.int64)
    M = int(np.prod(indices.shape[b:-1], dtype=np.int64))
    idx = _check_indices("GatherND", indices.reshape(B, M, k), dims, "an indexed axis")  # (B, M, k)
    flat = data.reshape(B, *data.shape[b:])  # (B, d_b, ..., d_{r-1})
    batch = np.broadcast_to(np.arange(B)[:, None], (B, M))
    out = flat[(batch, *np.moveaxis(idx, -1, 0))]  # (B, M, rest...)
    return out.reshape(*indices.shape[:-1], *data.shape[b + k :])


# ---------------------------------------------------------------------------------------------
# Scatters

_REDUCTIONS = {
    "add": np.add,
    "mul": np.multiply,
    "max": np.maximum,
    "min": np.minimum,
}


def _scatter(op_type: str, data: np.ndarray, where: tuple, updates: np.ndarray, reduction: str):
    """A copy of `data` with `updates` written (or reduced) at the fancy index `where`."""
    out = data.copy()
    if reduction == "none":
        out[where] = updates
    elif reduction in _REDUCTIONS:
        # ufunc.at applies every duplicate index in turn, unlike fancy-index assignment.
        _REDUCTIONS[reduction].at(out, where, updates)
    else:
        raise UnsupportedError(
            f"{op_type} reduction {reduction!r} (ember knows none, {', '.join(_REDUCTIONS)})"
        )
    return out


def _scatter_elements(op_type, data, indices, updates, axis, reduction):
    a = normalize_axis(axis, data.ndim)
    if indices.shape != updates.shape or indices.ndim != data.ndim:
        raise ValueError(
            f"{op_type}: indices {indices.shape} and updates {updates.shape} must have the same "
            f"shape and the rank of data {data.shape}"
        )
    idx = _check_indices(op_type, indices, data.shape[a], f"axis {axis}")
    grid = list(np.indices(indices.shape, sparse=True))
    grid[a] = idx
    return _scatter(op_type, data, tuple(grid), updates, reduction)


@op
def Scatter_9(data, indices, updates, *, axis=0):
    # Deprecated in opset 11 in favour of ScatterElements, with the same meaning.
    return _scatter_elements("Scatter", data, indices, updates, axis, "none")


@op
def ScatterElements_11(data, indices, updates, *, axis=0, reduction="none"):
    # `reduction` exists since opset 16 (add, mul) and 18 (max, min).
    return _scatter_elements("ScatterElements", data, indices, updates, axis, reduction)


@op
def ScatterND_11(data, indices, updates, *, reduction="none"):
    k = indices.shape[-1] if indices.ndim else 0
    if indices.ndim < 1 or k > data.ndim:
        raise ValueError(
            f"ScatterND: indices shape {indices.shape} does not address data of rank {data.ndim}"
        )
    expected = indices.shape[:-1] + data.shape[k:]
    if updates.shape != expected:
        raise ValueError(f"ScatterND: updates shape {updates.shape} should be {expected}")
    dims = np.array(data.shape[:k], dtype=np.int64)
    M = int(np.prod(indices.shape[:-1], dtype=np.int64))
    idx = _check_indices("ScatterND", indices.reshape(M, k), dims, "an indexed axis")  # (M, k)
    upd = updates.reshape(M, *data.shape[k:])
    if k == 0:
        # Every update addresses the whole tensor: apply them in order.
        if reduction == "none":
            return upd[-1].copy() if M else data.copy()
        if reduction not in _REDUCTIONS:
            return _scatter("ScatterND", data, (), upd, reduction)  # raises for the bad name
        return _REDUCTIONS[reduction].reduce(np.concatenate([data[None], upd]), axis=0)
    return _scatter("ScatterND", data, tuple(idx.T), upd, reduction)


@op
def TensorScatter_24(past_cache, update, write_indices=None, *, mode="linear", axis=-2):
    """Write `update` into a KV cache along the sequence `axis`, at a per-batch offset."""
    r = past_cache.ndim
    a = normalize_axis(axis, r)
    if a == 0:
        raise ValueError("TensorScatter: axis cannot be 0 (the batch axis)")
    if update.ndim != r or any(
        u != p
        for d, (u, p) in enumerate(zip(update.shape, past_cache.shape, strict=True))
        if d != a
    ):
        raise ValueError(
            f"TensorScatter: update shape {update.shape} does not match cache {past_cache.shape} "
            f"off axis {a}"
        )
    S_max, S = past_cache.shape[a], update.shape[a]
    if S_max < S:
        raise ValueError(f"TensorScatter: update length {S} exceeds the cache length {S_max}")
    B = past_cache.shape[0]
    start = (
        np.zeros(B, dtype=np.int64)
        if write_indices is None
        else np.asarray(write_indices).astype(np.int64).reshape(-1)
    )
    if start.size != B:
        raise ValueError(f"TensorScatter: {start.size} write_indices for a batch of {B}")
    pos = start[:, None] + np.arange(S)  # (B, S)
    if mode == "circular":
        pos = pos % S_max
    elif mode == "linear":
        if np.any(start < 0) or np.any(pos >= S_max):
            raise ValueError(
                f"TensorScatter: write_indices {start.tolist()} + update length {S} exceed the "
                f"cache length {S_max} in linear mode"
            )
    else:
        raise ValueError(f"TensorScatter: mode must be 'linear' or 'circular', got {mode!r}")
    out = past_cache.copy()
    # The sequence axis next to the batch axis, (B, S_max, ...): a view, so writes land in out.
    view = np.moveaxis(out, a, 1)
    # Index (B, S) positions; the dims between batch and sequence axis ride along in `...`.
    view[np.arange(B)[:, None], pos] = np.moveaxis(update, a, 1)
    return out
