"""Tensor ops: constants, shape manipulation, slicing, padding, tiling and data rearrangement.

Every op here moves or selects elements without arithmetic on them (Range and Dropout aside), so
none of them needs exact mode. Outputs may be views of inputs: ops never write into their inputs,
and nothing downstream may write into an op's output either.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from ember.errors import UnsupportedError
from ember.ops.cast import numpy_dtype
from ember.ops.common import as_int_list, normalize_axis
from ember.ops.registry import OpContext, op

# ---------------------------------------------------------------------------------------------
# Constants and identities


def _string_array(values: Any) -> np.ndarray:
    """Strings as the object array of `str` that numpy_helper (and so the node tests) produce."""
    arr = np.asarray(values)
    if arr.dtype.kind == "S":  # a STRING tensor attribute arrives as bytes
        arr = np.strings.decode(arr, "utf-8")
    return arr.astype(object)


@op
def Constant(
    *,
    value=None,
    sparse_value=None,
    value_float=None,
    value_floats=None,
    value_int=None,
    value_ints=None,
    value_string=None,
    value_strings=None,
):
    # Exactly one attribute holds the value (value_* since opset 12, sparse_value since 11).
    given = {
        k: v
        for k, v in {
            "value": value,
            "sparse_value": sparse_value,
            "value_float": value_float,
            "value_floats": value_floats,
            "value_int": value_int,
            "value_ints": value_ints,
            "value_string": value_string,
            "value_strings": value_strings,
        }.items()
        if v is not None
    }
    if len(given) != 1:
        names = ", ".join(given) or "none"
        raise ValueError(f"Constant needs exactly one value attribute, got {len(given)} ({names})")
    ((name, v),) = given.items()
    if name in ("value", "sparse_value"):
        v = np.asarray(v)
        return _string_array(v) if v.dtype.kind in "SU" else v
    if name == "value_float":
        return np.array(v, dtype=np.float32)
    if name == "value_floats":
        return np.array(v, dtype=np.float32).reshape(-1)
    if name == "value_int":
        return np.array(v, dtype=np.int64)
    if name == "value_ints":
        return np.array(v, dtype=np.int64).reshape(-1)
    if name == "value_string":
        return _string_array(v)
    return _string_array(list(v) or np.zeros(0, dtype=str)).reshape(-1)  # value_strings


@op
def Identity(x):
    # Tensors, sequences (lists) and optionals (None for an empty one) all pass through unchanged.
    return x


@op
def Dropout(x, *, ratio=0.5, is_test=0, consumed_inputs=None, ctx: OpContext):
    # NOTE: opsets 1-6 say is_test=0 means training, but every runtime runs these models for
    # inference; so do we. consumed_inputs is a legacy in-place hint with no effect on values.
    return _dropout_inference(x, same_dtype_mask=True, n_outputs=ctx.n_outputs)


@op
def Dropout_7(x, *, ratio=0.5, ctx: OpContext):
    return _dropout_inference(x, same_dtype_mask=True, n_outputs=ctx.n_outputs)


@op
def Dropout_10(x, *, ratio=0.5, ctx: OpContext):
    return _dropout_inference(x, same_dtype_mask=False, n_outputs=ctx.n_outputs)


def _dropout_inference(x: np.ndarray, *, same_dtype_mask: bool, n_outputs: int = 2) -> Any:
    if n_outputs < 2:
        return x
    mask = np.ones(x.shape, dtype=x.dtype if same_dtype_mask else np.bool_)
    return x, mask


@op
def Dropout_12(x, ratio=None, training_mode=None, *, seed=None, ctx: OpContext):
    p = 0.5 if ratio is None else float(np.asarray(ratio).reshape(()))
    training = training_mode is not None and bool(np.asarray(training_mode).reshape(()))
    if not training or p == 0:
        return _dropout_inference(x, same_dtype_mask=False, n_outputs=ctx.n_outputs)
    if not 0 <= p < 1:
        raise ValueError(f"Dropout ratio must be in [0, 1) in training mode, got {p}")
    # With a seed, draw exactly what numpy's legacy generator draws for that seed (the node tests
    # are generated that way); without one, the mask is random by design.
    if seed is not None:
        draws = np.random.RandomState(int(seed) % 2**32).uniform(0.0, 1.0, x.shape)
    else:
        draws = np.random.default_rng().uniform(0.0, 1.0, x.shape)
    mask = draws >= p
    scale = np.asarray(1.0 / (1.0 - p), dtype=x.dtype)
    y = (x * mask * scale).astype(x.dtype, copy=False)
    return (y, mask) if ctx.n_outputs > 1 else y


# ---------------------------------------------------------------------------------------------
# Shapes


def _reshape(data: np.ndarray, shape: list[int], allowzero: int) -> np.ndarray:
    if shape.count(-1) > 1:
        raise ValueError(f"Reshape: at most one -1 in shape, got {shape}")
    if allowzero and 0 in shape and -1 in shape:
        raise ValueError(f"Reshape: allowzero=1 forbids both 0 and -1 in shape, got {shape}")
    target = list(shape)
    for i, s in enumerate(shape):
        if s == 0 and not allowzero:
            # 0 copies the input dimension at the same position.
            if i >= data.ndim:
                raise ValueError(
                    f"Reshape: shape {shape} has 0 at position {i} but the input {data.shape} "
                    f"has rank {data.ndim}"
                )
            target[i] = data.shape[i]
        elif s < -1:
            raise ValueError(f"Reshape: invalid dimension {s} in shape {shape}")
    if -1 in target:
        known = math.prod(d for d in target if d != -1)  # math.prod: exact ints, no NumPy call
        if known == 0 or data.size % known:
            raise ValueError(f"Reshape: cannot reshape {data.shape} into {shape}")
        target[target.index(-1)] = data.size // known
    if math.prod(target) != data.size:
        raise ValueError(
            f"Reshape: cannot reshape {data.shape} ({data.size} elements) into {shape}"
        )
    return data.reshape(target)


@op
def Reshape(data, *, shape=None, consumed_inputs=None):
    if shape is None:
        raise ValueError("Reshape-1 needs the shape attribute")
    return _reshape(data, list(shape), 0)


@op
def Reshape_5(data, shape):
    return _reshape(data, as_int_list(shape), 0)


@op
def Reshape_14(data, shape, *, allowzero=0):
    return _reshape(data, as_int_list(shape), allowzero)


@op
def Flatten(x, *, axis=1):
    r = x.ndim
    if not -r <= axis <= r:
        raise ValueError(f"Flatten: axis={axis} is out of range [{-r}, {r}] for rank {r}")
    axis = axis + r if axis < 0 else axis
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis:])
    return x.reshape(outer, inner)


def _squeeze(data: np.ndarray, axes: list[int] | None) -> np.ndarray:
    # NOTE: an empty axes list squeezes every 1-dimension, as onnxruntime does.
    if not axes:
        return data.reshape([d for d in data.shape if d != 1])
    norm = [normalize_axis(a, data.ndim, name="Squeeze axis") for a in axes]
    if len(set(norm)) != len(norm):
        raise ValueError(f"Squeeze: axes {axes} repeat an axis")
    for a, n in zip(axes, norm, strict=True):
        if data.shape[n] != 1:
            raise ValueError(
                f"Squeeze: axis {a} has size {data.shape[n]}, not 1 (input shape {data.shape})"
            )
    return np.squeeze(data, axis=tuple(norm))


@op
def Squeeze(data, *, axes=None):
    return _squeeze(data, axes)


@op
def Squeeze_13(data, axes=None):
    return _squeeze(data, None if axes is None else as_int_list(axes))


def _unsqueeze(data: np.ndarray, axes: list[int]) -> np.ndarray:
    out_rank = data.ndim + len(axes)
    norm = [normalize_axis(a, out_rank, name="Unsqueeze axis") for a in axes]
    if len(set(norm)) != len(norm):
        raise ValueError(f"Unsqueeze: axes {axes} repeat an axis")
    shape = iter(data.shape)
    new = set(norm)
    return data.reshape([1 if i in new else next(shape) for i in range(out_rank)])


@op
def Unsqueeze(data, *, axes):
    return _unsqueeze(data, list(axes))


@op
def Unsqueeze_13(data, axes):
    return _unsqueeze(data, as_int_list(axes))


@op
def Transpose(data, *, perm=None):
    if perm is None:
        return data.transpose()
    if sorted(perm) != list(range(data.ndim)):
        raise ValueError(f"Transpose: perm {perm} is not a permutation of the {data.ndim} axes")
    return data.transpose(perm)


@op
def Shape(data):
    return np.array(data.shape, dtype=np.int64)


@op
def Shape_15(data, *, start=0, end=None):
    # start/end count from the back when negative and are clamped to [0, rank].
    r = data.ndim
    lo = min(max(start + r if start < 0 else start, 0), r)
    hi = r if end is None else min(max(end + r if end < 0 else end, 0), r)
    return np.array(data.shape[lo:hi], dtype=np.int64)


@op
def Size(data):
    return np.array(data.size, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Joining and splitting


@op
def Concat(*inputs, axis=1):
    return _concat(inputs, axis)


@op
def Concat_4(*inputs, axis):
    return _concat(inputs, axis)


def _concat(inputs: tuple[np.ndarray, ...], axis: int) -> np.ndarray:
    if not inputs:
        raise ValueError("Concat needs at least one input")
    rank = inputs[0].ndim
    if rank == 0:
        raise ValueError("Concat: inputs must have rank >= 1, got a scalar")
    ax = normalize_axis(axis, rank)
    for i, t in enumerate(inputs):
        same = t.shape[:ax] + t.shape[ax + 1 :] == inputs[0].shape[:ax] + inputs[0].shape[ax + 1 :]
        if t.ndim != rank or not same:
            raise ValueError(
                f"Concat: input {i} has shape {t.shape}, incompatible with {inputs[0].shape} "
                f"along axis {axis}"
            )
    return np.concatenate(inputs, axis=ax)


def _split(x: np.ndarray, axis: int, split: list[int] | None, n: int) -> tuple[np.ndarray, ...]:
    ax = normalize_axis(axis, x.ndim)
    dim = x.shape[ax]
    if split is None:
        if n <= 0:
            raise ValueError(f"Split: the number of outputs must be positive, got {n}")
        # Equal parts; when uneven, every part has ceil(dim / n) and the last one the remainder.
        size = -(-dim // n)
        split = [size] * (n - 1) + [dim - size * (n - 1)]
        if split[-1] < 0:
            raise ValueError(f"Split: cannot split a dimension of {dim} into {n} parts")
    if any(s < 0 for s in split) or sum(split) != dim:
        raise ValueError(f"Split: sizes {split} do not add up to the axis size {dim}")
    bounds = np.cumsum(split)[:-1]
    return tuple(np.split(x, bounds, axis=ax))


@op
def Split(x, split_input=None, *, axis=0, split=None, ctx: OpContext):
    sizes = as_int_list(split_input) if split_input is not None else split
    return _split(x, axis, sizes, ctx.n_outputs)


@op
def Split_2(x, *, axis=0, split=None, ctx: OpContext):
    return _split(x, axis, split, ctx.n_outputs)


@op
def Split_13(x, split=None, *, axis=0, ctx: OpContext):
    return _split(x, axis, None if split is None else as_int_list(split), ctx.n_outputs)


@op
def Split_18(x, split=None, *, axis=0, num_outputs=None, ctx: OpContext):
    if split is not None and num_outputs is not None:
        raise ValueError("Split: give either the split input or num_outputs, not both")
    if split is not None:
        return _split(x, axis, as_int_list(split), ctx.n_outputs)
    n = ctx.n_outputs if num_outputs is None else num_outputs
    return _split(x, axis, None, n)


# ---------------------------------------------------------------------------------------------
# Slicing


def _slice(
    data: np.ndarray,
    starts: list[int],
    ends: list[int],
    axes: list[int] | None,
    steps: list[int] | None,
) -> np.ndarray:
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ValueError(
            f"Slice: starts, ends, axes and steps must have equal lengths, got "
            f"{len(starts)}, {len(ends)}, {len(axes)}, {len(steps)}"
        )
    index = [slice(None)] * data.ndim
    seen = set()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        a = normalize_axis(axis, data.ndim, name="Slice axis")
        if a in seen:
            raise ValueError(f"Slice: axis {axis} appears twice in axes {axes}")
        seen.add(a)
        if step == 0:
            raise ValueError("Slice: steps cannot be 0")
        dim = data.shape[a]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
            index[a] = slice(start, end, step)
        else:
            # Walking backwards the end may be -1 ("before the first element"), which a Python
            # slice would read as "the last element": spell it as None.
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
            index[a] = slice(start, None if end < 0 else end, step)
    return data[tuple(index)]


@op
def Slice(data, *, starts, ends, axes=None):
    return _slice(data, list(starts), list(ends), axes, None)


@op
def Slice_10(data, starts, ends, axes=None, steps=None):
    """Slice with clamped bounds; a backward slice may run past the start to take element 0.

    >>> Slice_10(np.arange(6), np.array([-1]), np.array([-100]), None, np.array([-2])).tolist()
    [5, 3, 1]
    """
    return _slice(
        data,
        as_int_list(starts),
        as_int_list(ends),
        None if axes is None else as_int_list(axes),
        None if steps is None else as_int_list(steps),
    )


# ---------------------------------------------------------------------------------------------
# Broadcasting, tiling, padding


@op
def Expand_8(x, shape):
    dims = as_int_list(shape)
    try:
        out_shape = np.broadcast_shapes(x.shape, tuple(dims))
    except ValueError:
        raise ValueError(f"Expand: input shape {x.shape} cannot broadcast with {dims}") from None
    return np.array(np.broadcast_to(x, out_shape))


@op
def Tile(x, tiles, axis):
    # Opset 1: `tiles` copies along one `axis`.
    a = normalize_axis(int(np.asarray(axis).reshape(())), x.ndim)
    reps = [1] * x.ndim
    reps[a] = int(np.asarray(tiles).reshape(()))
    return Tile_6(x, np.array(reps, dtype=np.int64))


@op
def Tile_6(x, repeats):
    reps = as_int_list(repeats)
    if len(reps) != x.ndim:
        raise ValueError(f"Tile: repeats has {len(reps)} values for a rank-{x.ndim} input")
    if any(r < 0 for r in reps):
        raise ValueError(f"Tile: repeats must be non-negative, got {reps}")
    return np.tile(x, reps)


# Pad modes other than constant, as NumPy spells them.
_PAD_MODES: dict[str, Literal["reflect", "edge", "wrap"]] = {
    "reflect": "reflect",
    "edge": "edge",
    "wrap": "wrap",
}


def _pad(
    data: np.ndarray,
    pads: list[int],
    mode: str,
    value: Any,
    axes: list[int] | None = None,
) -> np.ndarray:
    if mode != "constant" and mode not in _PAD_MODES:
        raise UnsupportedError(f"Pad mode {mode!r} (ember knows constant, {', '.join(_PAD_MODES)})")
    axes = list(range(data.ndim)) if axes is None else axes
    norm = [normalize_axis(a, data.ndim, name="Pad axis") for a in axes]
    if len(pads) != 2 * len(norm):
        raise ValueError(f"Pad: {len(pads)} pads for {len(norm)} axes; need {2 * len(norm)}")
    begin = [0] * data.ndim
    end = [0] * data.ndim
    for i, a in enumerate(norm):
        begin[a], end[a] = pads[i], pads[i + len(norm)]
    # Negative pads remove elements: crop first, then pad what is positive.
    crop = tuple(
        slice(max(-b, 0), d - max(-e, 0)) for b, e, d in zip(begin, end, data.shape, strict=True)
    )
    if any(s.start > s.stop for s in crop):
        raise ValueError(f"Pad: pads {pads} remove more than the input shape {data.shape} holds")
    data = data[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end, strict=True)]
    if not any(b or e for b, e in width):
        return data
    if mode == "constant":
        fill = np.asarray(0 if value is None else value).reshape(-1)
        fill_value = fill[0] if fill.size else 0
        return np.pad(data, width, mode="constant", constant_values=fill_value).astype(
            data.dtype, copy=False
        )
    for (b, e), d in zip(width, data.shape, strict=True):
        if (b or e) and d == 0:
            raise ValueError(f"Pad: mode {mode!r} cannot pad an axis of size 0")
    return np.pad(data, width, mode=_PAD_MODES[mode])


@op
def Pad(data, *, paddings, mode="constant", value=0.0):
    return _pad(data, list(paddings), mode, np.asarray(value, dtype=data.dtype))


@op
def Pad_2(data, *, pads, mode="constant", value=0.0):
    return _pad(data, list(pads), mode, np.asarray(value, dtype=data.dtype))


@op
def Pad_11(data, pads, constant_value=None, *, mode="constant"):
    return _pad(data, as_int_list(pads), mode, constant_value)


@op
def Pad_18(data, pads, constant_value=None, axes=None, *, mode="constant"):
    return _pad(
        data, as_int_list(pads), mode, constant_value, None if axes is None else as_int_list(axes)
    )


@op
def CenterCropPad_18(input_data, shape, *, axes=None):
    x = input_data
    axes = list(range(x.ndim)) if axes is None else axes
    norm = [normalize_axis(a, x.ndim, name="CenterCropPad axis") for a in axes]
    target = as_int_list(shape)
    if len(target) != len(norm):
        raise ValueError(f"CenterCropPad: shape has {len(target)} values for {len(norm)} axes")
    out_shape = list(x.shape)
    src = [slice(None)] * x.ndim
    dst = [slice(None)] * x.ndim
    for a, want in zip(norm, target, strict=True):
        have = x.shape[a]
        if want < 0:
            raise ValueError(f"CenterCropPad: negative target size {want}")
        out_shape[a] = want
        # Centered; an odd difference puts the extra element at the end.
        if want < have:
            off = (have - want) // 2
            src[a] = slice(off, off + want)
        elif want > have:
            off = (want - have) // 2
            dst[a] = slice(off, off + have)
    out = np.zeros(out_shape, dtype=x.dtype)
    out[tuple(dst)] = x[tuple(src)]
    return out


# ---------------------------------------------------------------------------------------------
# Generators


@op
def ConstantOfShape_9(input, *, value=None):
    shape = as_int_list(input)
    if any(d < 0 for d in shape):
        raise ValueError(f"ConstantOfShape: dimensions must be >= 0, got {shape}")
    v = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value).reshape(-1)
    if v.size != 1:
        raise ValueError(f"ConstantOfShape: value must hold one element, got {v.size}")
    return np.full(shape, v[0], dtype=v.dtype)


def _range(start: np.ndarray, limit: np.ndarray, delta: np.ndarray) -> np.ndarray:
    dtype = np.asarray(start).dtype
    bounds = [np.asarray(t).reshape(()).item() for t in (start, limit, delta)]
    if dtype.kind in "iu":
        s, lim, d = (int(v) for v in bounds)
        if d == 0:
            raise ValueError("Range: delta cannot be 0")
        n = max(-((s - lim) // d), 0)  # ceil((lim - s) / d) in exact integer arithmetic
        return (s + np.arange(n, dtype=np.int64) * d).astype(dtype)
    # Floats (half types included) are computed in float64 and rounded once: at least as exact as
    # the spec's accumulation in the stash type.
    fs, flim, fd = (float(v) for v in bounds)
    if fd == 0:
        raise ValueError("Range: delta cannot be 0")
    n = max(int(np.ceil((flim - fs) / fd)), 0)
    return (fs + np.arange(n, dtype=np.float64) * fd).astype(dtype)


@op
def Range_11(start, limit, delta):
    return _range(start, limit, delta)


@op
def Range_27(start, limit, delta, *, stash_type=1):
    from onnx import TensorProto

    if stash_type not in (TensorProto.FLOAT, TensorProto.DOUBLE):
        raise ValueError(f"Range: stash_type must be FLOAT (1) or DOUBLE (11), got {stash_type}")
    return _range(start, limit, delta)


@op
def EyeLike_9(input, *, dtype=None, k=0):
    if input.ndim != 2:
        raise ValueError(f"EyeLike: input must be 2-D, got shape {input.shape}")
    out_dtype = input.dtype if dtype is None else numpy_dtype(dtype)
    return np.eye(input.shape[0], input.shape[1], k=k, dtype=out_dtype)


@op
def Trilu_14(input, k=None, *, upper=1):
    if input.ndim < 2:
        raise ValueError(f"Trilu: input must have rank >= 2, got shape {input.shape}")
    kk = 0 if k is None else int(np.asarray(k).reshape(()))
    # np.triu/np.tril apply to the last two axes of a stack of matrices.
    return np.triu(input, kk) if upper else np.tril(input, kk)


# ---------------------------------------------------------------------------------------------
# Rearrangements


@op
def DepthToSpace(input, *, blocksize, mode="DCR"):
    x = input
    if x.ndim != 4:
        raise ValueError(f"DepthToSpace: input must be 4-D (N, C, H, W), got shape {x.shape}")
    N, C, H, W = x.shape
    b = blocksize
    if b <= 0 or C % (b * b):
        raise ValueError(f"DepthToSpace: channels {C} are not divisible by blocksize^2 = {b * b}")
    if mode == "DCR":
        t = x.reshape(N, b, b, C // (b * b), H, W).transpose(0, 3, 4, 1, 5, 2)
    elif mode == "CRD":
        t = x.reshape(N, C // (b * b), b, b, H, W).transpose(0, 1, 4, 2, 5, 3)
    else:
        raise ValueError(f"DepthToSpace: mode must be 'DCR' or 'CRD', got {mode!r}")
    return t.reshape(N, C // (b * b), H * b, W * b)


@op
def SpaceToDepth(input, *, blocksize, mode="DCR"):
    # `mode` exists since opset 28; before it the layout was always DCR.
    x = input
    if x.ndim != 4:
        raise ValueError(f"SpaceToDepth: input must be 4-D (N, C, H, W), got shape {x.shape}")
    N, C, H, W = x.shape
    b = blocksize
    if b <= 0 or H % b or W % b:
        raise ValueError(f"SpaceToDepth: H={H} and W={W} must be divisible by blocksize {b}")
    t = x.reshape(N, C, H // b, b, W // b, b)
    if mode == "DCR":
        t = t.transpose(0, 3, 5, 1, 2, 4)
    elif mode == "CRD":
        t = t.transpose(0, 1, 3, 5, 2, 4)
    else:
        raise ValueError(f"SpaceToDepth: mode must be 'DCR' or 'CRD', got {mode!r}")
    return t.reshape(N, C * b * b, H // b, W // b)


@op
def Compress_9(input, condition, *, axis=None):
    cond = np.asarray(condition).reshape(-1).astype(np.bool_)
    x = input.reshape(-1) if axis is None else input
    a = 0 if axis is None else normalize_axis(axis, input.ndim)
    if cond.size > x.shape[a]:
        raise ValueError(
            f"Compress: condition has {cond.size} values but the axis has {x.shape[a]} elements"
        )
    # A shorter condition drops the trailing slices.
    return np.compress(cond, x, axis=a)


@op
def ReverseSequence_10(input, sequence_lens, *, batch_axis=1, time_axis=0):
    x = input
    if x.ndim < 2:
        raise ValueError(f"ReverseSequence: input must have rank >= 2, got shape {x.shape}")
    ba, ta = normalize_axis(batch_axis, x.ndim), normalize_axis(time_axis, x.ndim)
    if {ba, ta} != {0, 1}:
        raise ValueError(
            f"ReverseSequence: batch_axis and time_axis must be 0 and 1, got {ba}, {ta}"
        )
    T, B = x.shape[ta], x.shape[ba]
    lens = np.asarray(sequence_lens).astype(np.int64).reshape(-1)
    if lens.size != B:
        raise ValueError(f"ReverseSequence: {lens.size} sequence_lens for a batch of {B}")
    if np.any((lens < 0) | (lens > T)):
        raise ValueError(f"ReverseSequence: sequence_lens must be in [0, {T}], got {lens.tolist()}")
    xt = np.moveaxis(x, (ta, ba), (0, 1))  # (T, B, ...)
    t = np.arange(T)[:, None]
    src = np.where(t < lens[None, :], lens[None, :] - 1 - t, t)  # (T, B)
    out = xt[src, np.arange(B)[None, :]]
    return np.moveaxis(out, (0, 1), (ta, ba))


def _one_hot(indices: np.ndarray, depth: Any, values: np.ndarray, axis: int, wrap: bool) -> Any:
    d = np.asarray(depth).reshape(-1)
    if d.size != 1:
        raise ValueError(f"OneHot: depth must hold one value, got {d.size}")
    n = int(d[0])
    if n <= 0:
        raise ValueError(f"OneHot: depth must be positive, got {n}")
    vals = np.asarray(values).reshape(-1)
    if vals.size != 2:
        raise ValueError(f"OneHot: values must be [off_value, on_value], got {vals.size} values")
    r = indices.ndim
    if not -r - 1 <= axis <= r:
        raise ValueError(f"OneHot: axis={axis} is out of range for rank-{r} indices")
    ax = axis + r + 1 if axis < 0 else axis
    idx = np.asarray(indices).astype(np.int64)
    if wrap:  # opset 11: negative indices count from the back
        idx = np.where(idx < 0, idx + n, idx)
    # Out-of-range indices match no position and so give an all-off row.
    hot = np.expand_dims(idx, ax) == np.arange(n).reshape(
        [n if i == ax else 1 for i in range(r + 1)]
    )
    return np.where(hot, vals[1], vals[0]).astype(vals.dtype, copy=False)


@op
def OneHot_9(indices, depth, values, *, axis=-1):
    return _one_hot(indices, depth, values, axis, wrap=False)


@op
def OneHot_11(indices, depth, values, *, axis=-1):
    return _one_hot(indices, depth, values, axis, wrap=True)


@op
def NonZero_9(X):
    if X.ndim == 0:  # NumPy refuses 0-d input; a scalar has rank 0 and at most one nonzero
        return np.zeros((0, int(bool(X))), dtype=np.int64)
    return np.array(np.nonzero(X), dtype=np.int64).reshape(X.ndim, -1)


@op
def Unique_11(X, *, axis=None, sorted=1, ctx: OpContext):
    """Unique values (or slices along `axis`), first-occurrence indices, inverse, counts.

    >>> outs = Unique_11(np.array([3, 1, 3]), sorted=0, ctx=OpContext(n_outputs=4))
    >>> [a.tolist() for a in outs]
    [[3, 1], [0, 1], [0, 1, 0], [2, 1]]
    """
    a = 0 if axis is None else normalize_axis(axis, X.ndim)
    y, first, inverse, counts = np.unique(
        X.reshape(-1) if axis is None else X,
        return_index=True,
        return_inverse=True,
        return_counts=True,
        axis=None if axis is None else a,
    )
    inverse = inverse.reshape(-1)
    if not sorted:
        # Order the unique values by first occurrence; remap the inverse through that order.
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        y = np.take(y, order, axis=a)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    if ctx.n_outputs == 1:
        return y
    return (
        y,
        first.astype(np.int64),
        inverse.astype(np.int64),
        counts.astype(np.int64),
    )
