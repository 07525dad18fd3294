"""Sequence and optional ops: a sequence is a Python list of arrays, an empty optional is None.

Ops return new lists and never mutate the list they were given. An empty sequence does not remember
its element type (SequenceEmpty's dtype is not kept).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ember.ops.common import as_int_list, normalize_axis
from ember.ops.registry import op

if TYPE_CHECKING:
    from ember.runtime.plan import Subgraph


def _sequence(x: Any, op_name: str) -> list[np.ndarray]:
    if not isinstance(x, list):
        raise TypeError(f"{op_name} needs a sequence (list of arrays), got {type(x).__name__}")
    return x


def _position(position: np.ndarray, n: int, *, inclusive_end: bool, op_name: str) -> int:
    p = np.asarray(position)
    if p.size != 1 or p.dtype.kind not in "iu":
        raise TypeError(
            f"{op_name}: position must be an integer scalar, got {p.dtype}{list(p.shape)}"
        )
    i = int(p.reshape(-1)[0])
    hi = n if inclusive_end else n - 1
    if not -n <= i <= hi:
        raise ValueError(
            f"{op_name}: position {i} is out of range [{-n}, {hi}] for a sequence of {n}"
        )
    return i + n if i < 0 else i


@op
def SequenceEmpty_11(*, dtype: int = 1) -> list[np.ndarray]:
    """An empty sequence."""
    del dtype  # NOTE: a list does not carry an element type
    return []


@op
def SequenceConstruct_11(*inputs: np.ndarray) -> list[np.ndarray]:
    """A sequence of the inputs, which must share a dtype."""
    if len({np.asarray(x).dtype for x in inputs}) > 1:
        raise TypeError(
            "SequenceConstruct inputs must share one dtype, got "
            + ", ".join(str(np.asarray(x).dtype) for x in inputs)
        )
    return list(inputs)


@op
def SequenceInsert_11(
    input_sequence: list[np.ndarray], tensor: np.ndarray, position: np.ndarray | None = None
) -> list[np.ndarray]:
    """A copy of the sequence with `tensor` inserted at `position` (default: appended)."""
    seq = _sequence(input_sequence, "SequenceInsert")
    if seq and np.asarray(seq[0]).dtype != np.asarray(tensor).dtype:
        raise TypeError(
            f"SequenceInsert: tensor dtype {np.asarray(tensor).dtype} differs from the "
            f"sequence's {np.asarray(seq[0]).dtype}"
        )
    i = (
        len(seq)
        if position is None
        else _position(position, len(seq), inclusive_end=True, op_name="SequenceInsert")
    )
    return [*seq[:i], tensor, *seq[i:]]


@op
def SequenceAt_11(input_sequence: list[np.ndarray], position: np.ndarray) -> np.ndarray:
    """The element at `position` (negative counts from the back)."""
    seq = _sequence(input_sequence, "SequenceAt")
    return seq[_position(position, len(seq), inclusive_end=False, op_name="SequenceAt")]


@op
def SequenceErase_11(
    input_sequence: list[np.ndarray], position: np.ndarray | None = None
) -> list[np.ndarray]:
    """A copy of the sequence without the element at `position` (default: the last)."""
    seq = _sequence(input_sequence, "SequenceErase")
    if position is None:
        if not seq:
            raise ValueError("SequenceErase: cannot erase from an empty sequence")
        return seq[:-1]
    i = _position(position, len(seq), inclusive_end=False, op_name="SequenceErase")
    return [*seq[:i], *seq[i + 1 :]]


@op
def SequenceLength_11(input_sequence: list[np.ndarray]) -> np.ndarray:
    """The number of elements, as an int64 scalar."""
    return np.array(len(_sequence(input_sequence, "SequenceLength")), dtype=np.int64)


@op
def ConcatFromSequence_11(
    input_sequence: list[np.ndarray], *, axis: int, new_axis: int = 0
) -> np.ndarray:
    """Concatenate the elements along `axis`, or stack them along a new axis when new_axis=1."""
    seq = _sequence(input_sequence, "ConcatFromSequence")
    if not seq:
        raise ValueError("ConcatFromSequence needs a non-empty sequence")
    rank = np.ndim(seq[0])
    if new_axis:
        return np.stack(seq, axis=normalize_axis(axis, rank + 1))
    return np.concatenate(seq, axis=normalize_axis(axis, rank))


@op
def SplitToSequence_11(
    input: np.ndarray, split: np.ndarray | None = None, *, axis: int = 0, keepdims: int = 1
) -> list[np.ndarray]:
    """Split along `axis` into pieces of the given sizes; a scalar `split` gives equal pieces
    (the last may be shorter); no `split` gives pieces of size 1, squeezed unless keepdims."""
    ax = normalize_axis(axis, input.ndim)
    n = input.shape[ax]
    if split is None:
        pieces = np.split(input, n, axis=ax) if n else []
        return [np.squeeze(p, axis=ax) for p in pieces] if not keepdims else pieces
    sizes_in = np.asarray(split)
    if sizes_in.ndim == 0:
        size = int(sizes_in)
        if size <= 0:
            raise ValueError(f"SplitToSequence: split must be positive, got {size}")
        sizes = [size] * (n // size) + ([n % size] if n % size else [])
    else:
        sizes = as_int_list(sizes_in)
        if any(s < 0 for s in sizes) or sum(sizes) != n:
            raise ValueError(
                f"SplitToSequence: split {sizes} must be non-negative and sum to the axis "
                f"length {n}"
            )
    bounds = np.cumsum(sizes)[:-1]
    return np.split(input, bounds, axis=ax)


@op
def SequenceMap_17(
    input_sequence: list[np.ndarray], *additional_inputs: Any, body: Subgraph
) -> tuple[list[Any], ...]:
    """Run `body` on each element; sequence inputs are indexed, tensor inputs given whole.
    Returns one sequence per body output."""
    seq = _sequence(input_sequence, "SequenceMap")
    n = len(seq)
    for k, extra in enumerate(additional_inputs):
        if isinstance(extra, list) and len(extra) != n:
            raise ValueError(
                f"SequenceMap: additional input {k} has {len(extra)} elements, the input "
                f"sequence {n}"
            )
    n_out = body.n_outputs
    results: list[list[Any]] = [[] for _ in range(n_out)]
    for i in range(n):
        args = [x[i] if isinstance(x, list) else x for x in additional_inputs]
        for acc, value in zip(results, body(seq[i], *args), strict=True):
            acc.append(value)
    return tuple(results)


@op
def Optional_15(input: Any = None, *, type: Any = None) -> Any:
    """An optional holding `input`, or an empty one (None) when the input is omitted."""
    del type  # the element type of an empty optional is not kept
    return input


@op
def OptionalHasElement_15(input: Any = None) -> np.ndarray:
    """Whether the optional (or, since opset 18, a plain tensor/sequence) holds a value."""
    return np.array(input is not None)


@op
def OptionalGetElement_15(input: Any) -> Any:
    """The value inside a non-empty optional (a plain tensor/sequence passes through)."""
    if input is None:
        raise ValueError("OptionalGetElement: the optional is empty")
    return input
