"""Convolution ops (Conv, ConvTranspose, DeformConv, Col2Im) and the sliding-window arithmetic.

Every window op is one im2col (a strided view of the padded input) plus one batched matmul over the
groups; ConvTranspose and Col2Im are the adjoint: one matmul, then a scatter-add per kernel tap.
`window_geometry` (auto_pad, pads, ceil_mode -> output shape and pads) is shared with pool.py.
This module knows nothing about memory layouts other than NC[D]HW, or about native kernels.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from ember.ops.common import as_int_list, work_arrays
from ember.ops.registry import op

_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


# ----------------------------------------------------------------------------------------------
# Window arithmetic shared by Conv-like and pooling ops
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Window:
    """A sliding window over the spatial axes, resolved against one input shape.

    Output position `o` along axis `i` reads input positions
    `o * strides[i] - pads_begin[i] + k * dilations[i]` for `k in range(kernel[i])`.
    """

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def extent(self) -> tuple[int, ...]:
        """Span of one dilated window along each axis."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations, strict=True))


def spatial_attr(value: list[int] | None, n: int, default: int, name: str) -> tuple[int, ...]:
    """One int per spatial axis (strides, dilations...), or ValueError naming the attribute."""
    if value is None:
        return (default,) * n
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} values, expected {n} (one per spatial axis)")
    return tuple(int(v) for v in value)


def window_geometry(
    in_shape: tuple[int, ...],
    kernel: tuple[int, ...],
    *,
    strides: list[int] | None = None,
    dilations: list[int] | None = None,
    pads: list[int] | None = None,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
) -> Window:
    """Resolve pads and the output spatial shape of a sliding window over `in_shape` (spatial only).

    >>> window_geometry((5, 5), (3, 3), strides=[2, 2], auto_pad="SAME_UPPER").out_shape
    (3, 3)
    """
    n = len(in_shape)
    kernel = tuple(int(k) for k in kernel)
    if len(kernel) != n:
        raise ValueError(
            f"kernel_shape has {len(kernel)} values, expected {n} (one per spatial axis)"
        )
    s = spatial_attr(strides, n, 1, "strides")
    d = spatial_attr(dilations, n, 1, "dilations")
    for name, vals in (("kernel_shape", kernel), ("strides", s), ("dilations", d)):
        if any(v < 1 for v in vals):
            raise ValueError(f"{name}={list(vals)} must be positive")
    extent = [(k - 1) * di + 1 for k, di in zip(kernel, d, strict=True)]
    if auto_pad not in _AUTO_PADS:
        raise ValueError(f"auto_pad={auto_pad!r} is not one of {', '.join(_AUTO_PADS)}")

    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # Output = ceil(in / stride) whatever ceil_mode says; the padding is whatever that needs
        # (never negative), the odd pixel going to the end (UPPER) or the beginning (LOWER).
        out = [-(-i // st) for i, st in zip(in_shape, s, strict=True)]
        total = [
            max(0, (o - 1) * st + e - i)
            for o, st, e, i in zip(out, s, extent, in_shape, strict=True)
        ]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        pb, pe = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        return Window(kernel, s, d, tuple(pb), tuple(pe), tuple(out))

    if auto_pad == "VALID" or pads is None:
        pb, pe = [0] * n, [0] * n
    else:
        if len(pads) != 2 * n:
            raise ValueError(
                f"pads has {len(pads)} values, expected {2 * n} (begin and end per axis)"
            )
        pb, pe = [int(p) for p in pads[:n]], [int(p) for p in pads[n:]]
        if any(p < 0 for p in pb + pe):
            raise ValueError(f"pads={list(pads)} must be non-negative")

    out = []
    for i in range(n):
        span = in_shape[i] + pb[i] + pe[i] - extent[i]
        if span < 0:
            raise ValueError(
                f"spatial axis {i}: the window extent {extent[i]} (kernel {kernel[i]}, "
                f"dilation {d[i]}) is larger than the padded input {in_shape[i] + pb[i] + pe[i]}"
            )
        if ceil_mode:
            o = -(-span // s[i]) + 1
            # A window that would start in the end padding is dropped (PyTorch, ONNX opset 22 text).
            if (o - 1) * s[i] >= in_shape[i] + pb[i]:
                o -= 1
        else:
            o = span // s[i] + 1
        out.append(o)
    return Window(kernel, s, d, tuple(pb), tuple(pe), tuple(out))


def extract_windows(x: np.ndarray, win: Window, fill: float | int = 0) -> np.ndarray:
    """A read-only view (N, C, *out_shape, *kernel) of the windows of `x` (N, C, *spatial).

    Positions outside the input (padding, or past the end when ceil_mode adds a partial window)
    read `fill`. Only the padded copy is materialized, never the windows.

    >>> x = np.arange(5).reshape(1, 1, 5)
    >>> extract_windows(x, window_geometry((5,), (2,), strides=[2], pads=[1, 0]), fill=-1)[0, 0]
    array([[-1,  0],
           [ 1,  2],
           [ 3,  4]])
    """
    n = x.ndim - 2
    ext = win.extent
    need = [(o - 1) * s + e for o, s, e in zip(win.out_shape, win.strides, ext, strict=True)]
    pad_width = [(0, 0), (0, 0)]
    crop = [slice(None), slice(None)]
    for i in range(n):
        after = need[i] - x.shape[2 + i] - win.pads_begin[i]  # may be < 0: the tail is never read
        pad_width.append((win.pads_begin[i], max(after, 0)))
        crop.append(slice(0, need[i]))
    if any(p != (0, 0) for p in pad_width):
        x = np.pad(x, pad_width, mode="constant", constant_values=fill)
    x = x[tuple(crop)]
    axes = tuple(range(2, 2 + n))
    v = np.lib.stride_tricks.sliding_window_view(x, ext, axis=axes)  # (N, C, *L, *ext)
    idx = (
        slice(None),
        slice(None),
        *(slice(None, None, s) for s in win.strides),
        *(slice(None, None, d) for d in win.dilations),
    )
    return v[idx]


def _kernel_from(w: np.ndarray, kernel_shape: list[int] | None, op_type: str) -> tuple[int, ...]:
    k = tuple(w.shape[2:])
    if kernel_shape is not None and tuple(kernel_shape) != k:
        raise ValueError(
            f"{op_type}: kernel_shape={list(kernel_shape)} does not match W spatial shape {list(k)}"
        )
    return k


def _check_rank(x: np.ndarray, w: np.ndarray, op_type: str) -> None:
    if x.ndim < 3:
        raise ValueError(
            f"{op_type}: X must have rank >= 3 (N, C, spatial...), got shape {x.shape}"
        )
    if w.ndim != x.ndim:
        raise ValueError(f"{op_type}: W has rank {w.ndim} but X has rank {x.ndim}")


def grouped_matmul(cols: np.ndarray, w: np.ndarray, group: int) -> np.ndarray:
    """cols (N, C, *O, *K) x w (M, C/group, *K) -> (N, M, *O): one batched matmul over groups."""
    N, C = cols.shape[:2]
    M = w.shape[0]
    nd = (cols.ndim - 2) // 2
    O = cols.shape[2 : 2 + nd]
    K = math.prod(cols.shape[2 + nd :])
    P = math.prod(O)
    Cg, Mg = C // group, M // group
    # (N, G, Cg, *O, *K) -> (G, N, *O, Cg, *K) -> (G, N*P, Cg*K): the one im2col copy.
    c = cols.reshape(N, group, Cg, *cols.shape[2:])
    perm = (1, 0, *range(3, 3 + nd), 2, *range(3 + nd, 3 + 2 * nd))
    c = c.transpose(perm).reshape(group, N * P, Cg * K)
    wg = w.reshape(group, Mg, Cg * K).transpose(0, 2, 1)  # (G, Cg*K, Mg)
    y = np.matmul(c, wg)  # (G, N*P, Mg)
    y = y.reshape(group, N, P, Mg).transpose(1, 0, 3, 2)  # (N, G, Mg, P)
    return y.reshape(N, M, *O)


def _add_bias(y: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    if b is None:
        return y
    if b.shape != (y.shape[1],):
        raise ValueError(f"B must have shape ({y.shape[1]},), got {b.shape}")
    return y + b.reshape(1, -1, *([1] * (y.ndim - 2)))


def _check_groups(C: int, M: int, w_in: int, group: int, op_type: str) -> None:
    if group < 1:
        raise ValueError(f"{op_type}: group={group} must be positive")
    if w_in * group != C:
        raise ValueError(
            f"{op_type}: X has {C} channels but W expects {w_in} per group x group={group} "
            f"= {w_in * group}"
        )
    if M % group:
        raise ValueError(f"{op_type}: {M} output channels are not divisible by group={group}")


# ----------------------------------------------------------------------------------------------
# Conv
# ----------------------------------------------------------------------------------------------


@op
def Conv(
    X,
    W,
    B=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
    ctx=None,
):
    _check_rank(X, W, "Conv")
    k = _kernel_from(W, kernel_shape, "Conv")
    _check_groups(X.shape[1], W.shape[0], W.shape[1], group, "Conv")
    win = window_geometry(
        X.shape[2:], k, strides=strides, dilations=dilations, pads=pads, auto_pad=auto_pad
    )
    x, w, *b = work_arrays(ctx, X, W, *([] if B is None else [B]))
    y = grouped_matmul(extract_windows(x, win, 0), w, group)  # (N, M, *O)
    return _add_bias(y, b[0] if b else None).astype(X.dtype, copy=False)


# ----------------------------------------------------------------------------------------------
# Col2Im and ConvTranspose: matmul, then scatter-add per kernel tap
# ----------------------------------------------------------------------------------------------


def scatter_taps(
    cols: np.ndarray, strides: tuple[int, ...], dilations: tuple[int, ...], full: tuple[int, ...]
) -> np.ndarray:
    """col2im: cols (N, C, *K, *I) -> (N, C, *full), summing where windows overlap.

    Tap `k` of block `i` lands at `i * stride + k * dilation`. `full` must hold every landing spot.
    """
    nd = len(strides)
    K = cols.shape[2 : 2 + nd]
    I = cols.shape[2 + nd :]
    out = np.zeros(cols.shape[:2] + tuple(full), dtype=cols.dtype)
    for tap in itertools.product(*(range(k) for k in K)):  # a loop over kernel taps only
        dst = tuple(
            slice(t * d, t * d + (i - 1) * s + 1, s)
            for t, d, i, s in zip(tap, dilations, I, strides, strict=True)
        )
        src: tuple[slice | int, ...] = (slice(None), slice(None), *tap)
        out[(slice(None), slice(None), *dst)] += cols[src]
    return out


@op
def Col2Im_18(input, image_shape, block_shape, *, dilations=None, pads=None, strides=None):
    if input.ndim != 3:
        raise ValueError(
            f"Col2Im: input must have shape (N, C*prod(block_shape), L), got {input.shape}"
        )
    image = tuple(as_int_list(image_shape))
    block = tuple(as_int_list(block_shape))
    if len(image) != len(block):
        raise ValueError(
            f"Col2Im: image_shape {list(image)} and block_shape {list(block)} differ in length"
        )
    K = math.prod(block)
    N, CK, L = input.shape
    if K == 0 or CK % K:
        raise ValueError(
            f"Col2Im: input dimension 1 ({CK}) is not divisible by prod(block_shape)={K}"
        )
    win = window_geometry(image, block, strides=strides, dilations=dilations, pads=pads)
    if math.prod(win.out_shape) != L:
        raise ValueError(
            f"Col2Im: input has {L} blocks but image_shape {list(image)} with these pads/strides/"
            f"dilations gives {list(win.out_shape)} = {math.prod(win.out_shape)} blocks"
        )
    cols = input.reshape(N, CK // K, *block, *win.out_shape)
    padded = tuple(i + b + e for i, b, e in zip(image, win.pads_begin, win.pads_end, strict=True))
    full = scatter_taps(cols, win.strides, win.dilations, padded)
    crop = tuple(slice(b, b + i) for b, i in zip(win.pads_begin, image, strict=True))
    return full[(slice(None), slice(None), *crop)]


def _conv_transpose(
    X,
    W,
    B,
    *,
    auto_pad,
    dilations,
    group,
    kernel_shape,
    output_padding,
    output_shape,
    pads,
    strides,
    ctx,
    same_upper_extra_at_end,
):
    _check_rank(X, W, "ConvTranspose")
    if auto_pad not in _AUTO_PADS:
        raise ValueError(f"auto_pad={auto_pad!r} is not one of {', '.join(_AUTO_PADS)}")
    nd = X.ndim - 2
    k = _kernel_from(W, kernel_shape, "ConvTranspose")
    N, C = X.shape[:2]
    if group < 1 or C % group or W.shape[0] != C:
        raise ValueError(
            f"ConvTranspose: W has {W.shape[0]} input channels, X has {C} (group={group})"
        )
    M = W.shape[1] * group
    s = spatial_attr(strides, nd, 1, "strides")
    d = spatial_attr(dilations, nd, 1, "dilations")
    op_ = spatial_attr(output_padding, nd, 0, "output_padding")
    if any(v < 1 for v in s + d):
        raise ValueError(f"strides={list(s)} and dilations={list(d)} must be positive")
    ins = X.shape[2:]
    ext = [(kk - 1) * dd + 1 for kk, dd in zip(k, d, strict=True)]
    natural = [st * (i - 1) + o + e for st, i, o, e in zip(s, ins, op_, ext, strict=True)]

    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if output_shape is not None:
            target = [int(v) for v in output_shape]
            if len(target) == nd + 2:  # some exporters include N and C
                target = target[2:]
            if len(target) != nd:
                raise ValueError(f"output_shape={list(output_shape)} must have {nd} values")
        else:
            target = [i * st for i, st in zip(ins, s, strict=True)]
        # A target larger than the natural size extends the output at the end with zeros
        # (like output_padding), hence the clamp to 0.
        total = [max(0, nat - t) for nat, t in zip(natural, target, strict=True)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        at_end = same_upper_extra_at_end == (auto_pad == "SAME_UPPER")
        pb, pe = (small, big) if at_end else (big, small)
        out = target
    else:
        if auto_pad == "VALID" or pads is None:
            pb, pe = [0] * nd, [0] * nd
        else:
            if len(pads) != 2 * nd:
                raise ValueError(f"pads has {len(pads)} values, expected {2 * nd}")
            pb, pe = [int(p) for p in pads[:nd]], [int(p) for p in pads[nd:]]
            if any(p < 0 for p in pb + pe):
                raise ValueError(f"pads={list(pads)} must be non-negative")
        out = [nat - b - e for nat, b, e in zip(natural, pb, pe, strict=True)]
        if any(o < 1 for o in out):
            raise ValueError(f"ConvTranspose: pads={list(pads)} leave an empty output {out}")

    x, w, *b = work_arrays(ctx, X, W, *([] if B is None else [B]))
    Cg, Mg = C // group, M // group
    P = math.prod(ins)
    Kp = math.prod(k)
    # (G, N*P, Cg) @ (G, Cg, Mg*K) -> (G, N*P, Mg*K): every input pixel's contribution to every tap.
    xg = x.reshape(N, group, Cg, P).transpose(1, 0, 3, 2).reshape(group, N * P, Cg)
    wg = w.reshape(group, Cg, Mg * Kp)
    cols = np.matmul(xg, wg).reshape(group, N, *ins, Mg, *k)
    perm = (1, 0, 2 + nd, *range(3 + nd, 3 + 2 * nd), *range(2, 2 + nd))
    cols = cols.transpose(perm).reshape(N, M, *k, *ins)  # (N, M, *K, *I)
    full_shape = tuple(max(nat, b_ + o) for nat, b_, o in zip(natural, pb, out, strict=True))
    full = scatter_taps(cols, s, d, full_shape)
    y = full[
        (slice(None), slice(None), *(slice(b_, b_ + o) for b_, o in zip(pb, out, strict=True)))
    ]
    return _add_bias(y, b[0] if b else None).astype(X.dtype, copy=False)


@op
def ConvTranspose(
    X,
    W,
    B=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    output_padding=None,
    output_shape=None,
    pads=None,
    strides=None,
    ctx=None,
):
    # Opset 1-10 text: with computed pads, SAME_UPPER puts the odd pixel at the beginning.
    return _conv_transpose(
        X,
        W,
        B,
        auto_pad=auto_pad,
        dilations=dilations,
        group=group,
        kernel_shape=kernel_shape,
        output_padding=output_padding,
        output_shape=output_shape,
        pads=pads,
        strides=strides,
        ctx=ctx,
        same_upper_extra_at_end=False,
    )


@op
def ConvTranspose_11(
    X,
    W,
    B=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    output_padding=None,
    output_shape=None,
    pads=None,
    strides=None,
    ctx=None,
):
    # Opset 11+: SAME_UPPER puts the odd pixel at the end, like Conv.
    return _conv_transpose(
        X,
        W,
        B,
        auto_pad=auto_pad,
        dilations=dilations,
        group=group,
        kernel_shape=kernel_shape,
        output_padding=output_padding,
        output_shape=output_shape,
        pads=pads,
        strides=strides,
        ctx=ctx,
        same_upper_extra_at_end=True,
    )


# ----------------------------------------------------------------------------------------------
# DeformConv
# ----------------------------------------------------------------------------------------------


@op
def DeformConv_19(
    X,
    W,
    offset,
    B=None,
    mask=None,
    *,
    dilations=None,
    group=1,
    kernel_shape=None,
    offset_group=1,
    pads=None,
    strides=None,
    ctx=None,
):
    _check_rank(X, W, "DeformConv")
    k = _kernel_from(W, kernel_shape, "DeformConv")
    N, C = X.shape[:2]
    _check_groups(C, W.shape[0], W.shape[1], group, "DeformConv")
    if offset_group < 1 or C % offset_group:
        raise ValueError(
            f"DeformConv: {C} input channels are not divisible by offset_group={offset_group}"
        )
    nd = X.ndim - 2
    S = X.shape[2:]
    win = window_geometry(S, k, strides=strides, dilations=dilations, pads=pads)
    O, Kt, P = win.out_shape, math.prod(k), math.prod(win.out_shape)
    G = offset_group
    if offset.shape != (N, G * Kt * nd, *O):
        raise ValueError(
            f"DeformConv: offset must have shape {(N, G * Kt * nd, *O)} "
            f"(N, offset_group*prod(kernel)*{nd}, *output), got {offset.shape}"
        )
    if mask is not None and mask.shape != (N, G * Kt, *O):
        raise ValueError(f"DeformConv: mask must have shape {(N, G * Kt, *O)}, got {mask.shape}")

    x, w, off, *rest = work_arrays(ctx, X, W, offset, *(a for a in (B, mask) if a is not None))
    b = rest.pop(0) if B is not None else None
    m = rest.pop(0) if mask is not None else None
    off = off.reshape(N, G, Kt, nd, P)
    # Where tap t of output p samples along axis i: the regular grid plus the learned offset.
    taps = np.array(list(itertools.product(*(range(kk) for kk in k))), dtype=np.int64)  # (Kt, nd)
    outs = np.stack(np.meshgrid(*(np.arange(o) for o in O), indexing="ij"), -1).reshape(P, nd)
    pos = []
    for i in range(nd):
        base = outs[:, i] * win.strides[i] - win.pads_begin[i]  # (P,)
        grid = base[None, :] + taps[:, i : i + 1] * win.dilations[i]  # (Kt, P)
        pos.append(grid[None, None] + off[:, :, :, i])  # (N, G, Kt, P)
    # N-linear interpolation with zeros outside: a loop over the 2**nd corners.
    xg = x.reshape(N, G, C // G, math.prod(S))
    sampled = np.zeros((N, G, C // G, Kt * P), dtype=x.dtype)
    lo = [np.floor(p) for p in pos]
    for corner in itertools.product((0, 1), repeat=nd):
        weight = np.ones_like(pos[0])
        flat = np.zeros(pos[0].shape, dtype=np.int64)
        inside = np.ones(pos[0].shape, dtype=bool)
        for i, c in enumerate(corner):
            idx = lo[i] + c
            frac = pos[i] - lo[i]
            weight = weight * (frac if c else 1 - frac)
            inside &= (idx >= 0) & (idx < S[i])
            flat = flat * S[i] + np.clip(idx, 0, S[i] - 1).astype(np.int64)
        weight = np.where(inside, weight, 0).reshape(N, G, 1, Kt * P)
        got = np.take_along_axis(xg, flat.reshape(N, G, 1, Kt * P), axis=3)  # (N, G, C/G, Kt*P)
        sampled += got * weight
    if m is not None:
        sampled *= m.reshape(N, G, 1, Kt * P)
    cols = sampled.reshape(N, C, *k, *O)  # (N, C, *K, *O)
    perm = (0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))
    y = grouped_matmul(cols.transpose(perm), w, group)
    return _add_bias(y, b).astype(X.dtype, copy=False)
