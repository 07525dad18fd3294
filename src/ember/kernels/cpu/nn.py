"""Native float32 transformer kernels: softmax, LayerNorm (+ residual), GELU (+ bias), attention.

Wrappers over ember._C (csrc/math_ops.cpp): they check dtypes and shapes, make inputs contiguous
where the kernel needs it and allocate (or check) `out`. Each matches its NumPy reference in
ember.ops (Softmax_13, LayerNormalization_17, Gelu_20, ai.ember MultiHeadAttention) to float32
rounding; they know nothing of graphs or ONNX attributes beyond the ones in their signatures.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ember.kernels.cpu import _C

Isa = Literal["auto", "avx512", "avx2", "scalar"]


def set_isa(name: Isa) -> None:
    """Cap the code path of these kernels ("auto" = the best this CPU has); a debug hook.

    >>> set_isa("scalar"); isa()
    'scalar'
    >>> set_isa("auto")
    """
    _C.set_math_isa(name)


def isa() -> str:
    """The code path these kernels take now: "avx512", "avx2" or "scalar"."""
    return str(_C.math_isa())


def _f32(x: np.ndarray, op: str, name: str = "x") -> np.ndarray:
    """x as a C-contiguous float32 array (a copy only when x is laid out otherwise)."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"{op} takes float32 {name}, got {x.dtype}")
    # NOTE: np.ascontiguousarray would turn a 0-d array into shape (1,).
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)


def _out(out: np.ndarray | None, shape: tuple[int, ...], op: str, name: str = "out") -> np.ndarray:
    if out is None:
        return np.empty(shape, np.float32)
    if out.dtype != np.float32 or not out.flags.c_contiguous or out.shape != shape:
        raise ValueError(
            f"{op}: {name} must be a C-contiguous float32 array of shape {shape}, got "
            f"{out.dtype} {out.shape}{'' if out.flags.c_contiguous else ' (not C-contiguous)'}"
        )
    return out


def softmax(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Softmax over the last axis (ONNX Softmax-13, axis=-1); out may be x (in place). A row of
    -inf (or holding a nan) gives nan, as the reference does.

    >>> softmax(np.array([1000.0, 1000.0, -np.inf], np.float32))
    array([0.5, 0.5, 0. ], dtype=float32)
    """
    x = _f32(x, "softmax")
    y = _out(out, x.shape, "softmax")
    _C.softmax(x, y)
    return y


def layer_norm(
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    epsilon: float = 1e-5,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """ONNX LayerNormalization (axis=-1, first output): (x - mean) / sqrt(var + eps) * scale + bias.

    >>> layer_norm(np.array([[1.0, 3.0]], np.float32), np.ones(2, np.float32), epsilon=0.0)
    array([[-1.,  1.]], dtype=float32)
    """
    x = _f32(x, "layer_norm")
    scale = _f32(scale, "layer_norm", "scale")
    b = None if bias is None else _f32(bias, "layer_norm", "bias")
    y = _out(out, x.shape, "layer_norm")
    _C.layer_norm(x, scale, b, float(epsilon), y)
    return y


def add_layer_norm(
    x: np.ndarray,
    residual: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    epsilon: float = 1e-5,
    out: np.ndarray | None = None,
    sum_out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(x + residual, layer_norm(x + residual, scale, bias)) in one pass (a transformer's
    skip connection); residual has x's shape.

    >>> x, r = np.array([[1.0, 1.0]], np.float32), np.array([[0.0, 2.0]], np.float32)
    >>> s, y = add_layer_norm(x, r, np.ones(2, np.float32), epsilon=0.0)
    >>> s, y
    (array([[1., 3.]], dtype=float32), array([[-1.,  1.]], dtype=float32))
    """
    x = _f32(x, "add_layer_norm")
    residual = _f32(residual, "add_layer_norm", "residual")
    scale = _f32(scale, "add_layer_norm", "scale")
    b = None if bias is None else _f32(bias, "add_layer_norm", "bias")
    s = _out(sum_out, x.shape, "add_layer_norm", "sum_out")
    y = _out(out, x.shape, "add_layer_norm")
    _C.layer_norm(x, scale, b, float(epsilon), y, residual, s)
    return s, y


def gelu(x: np.ndarray, *, approximate: str = "none", out: np.ndarray | None = None) -> np.ndarray:
    """ONNX Gelu-20: 0.5 x (1 + erf(x / sqrt 2)), or its tanh form with approximate="tanh".

    >>> gelu(np.array([-1.0, 0.0, 1.0], np.float32))
    array([-0.15865526,  0.        ,  0.8413447 ], dtype=float32)
    """
    x = _f32(x, "gelu")
    y = _out(out, x.shape, "gelu")
    _C.gelu(x, None, y, approximate)
    return y


def bias_gelu(
    x: np.ndarray, bias: np.ndarray, *, approximate: str = "none", out: np.ndarray | None = None
) -> np.ndarray:
    """gelu(x + bias), bias of shape (x.shape[-1],) along the last axis, in one pass.

    >>> bias_gelu(np.zeros((1, 2), np.float32), np.array([-1.0, 1.0], np.float32))
    array([[-0.15865526,  0.8413447 ]], dtype=float32)
    """
    x = _f32(x, "bias_gelu")
    b = _f32(bias, "bias_gelu", "bias")
    y = _out(out, x.shape, "bias_gelu")
    _C.gelu(x, b, y, approximate)
    return y


def _rows_strided(x: np.ndarray, op: str, name: str) -> np.ndarray:
    """x if the kernel can read it in place (float32, rank 3, last axis contiguous, strides >= 0
    and whole elements), else a contiguous copy."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"{op} takes float32 {name}, got {x.dtype}")
    if x.ndim != 3:
        raise ValueError(f"{op}: {name} must have rank 3 [B, S, H*D], got shape {x.shape}")
    if x.flags.c_contiguous:
        return x
    s = x.strides
    if (x.shape[2] > 1 and s[2] != 4) or min(s) < 0 or (s[0] | s[1]) % 4:
        return np.ascontiguousarray(x)
    return x


def _mask_view(mask: np.ndarray, op: str) -> np.ndarray:
    """mask as the kernel reads it: float32 with a last axis of stride 1 or 0 and non-negative
    strides; broadcast views (np.broadcast_to) pass as they are, without being materialized."""
    mask = np.asarray(mask)
    if mask.dtype != np.float32:
        raise TypeError(f"{op} takes float32 mask, got {mask.dtype}")
    s = mask.strides
    if mask.ndim and (s[-1] not in (0, 4) or min(s) < 0 or any(v % 4 for v in s)):
        return np.ascontiguousarray(mask)
    return mask


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    num_heads: int,
    scale: float = 0.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """ai.ember MultiHeadAttention: concat over heads h of softmax(Q_h K_h^T * scale + mask) V_h.

    q [B, Sq, H*D], k [B, Sk, H*D], v [B, Sk, H*Dv] -> [B, Sq, H*Dv]. Heads are read in place;
    q, k and v may be strided views (e.g. slices of a packed QKV projection) as long as their last
    axis is contiguous. mask is added to the scores and broadcasts to [B, H, Sq, Sk] (typically
    [B, 1, 1, Sk] or [B, 1, Sq, Sk]); scale 0 means 1/sqrt(D). A row whose scores are all -inf
    gives nan, as the reference does. out must not overlap q, k or v.

    >>> q = np.ones((1, 2, 4), np.float32)
    >>> attention(q, q, np.arange(8, dtype=np.float32).reshape(1, 2, 4), num_heads=2)
    array([[[2., 3., 4., 5.],
            [2., 3., 4., 5.]]], dtype=float32)
    """
    op = "attention"
    q, k, v = _rows_strided(q, op, "q"), _rows_strided(k, op, "k"), _rows_strided(v, op, "v")
    B, Sq, _ = q.shape
    H = int(num_heads)
    if H <= 0:
        raise ValueError(f"{op}: num_heads must be positive, got {H}")
    shape = (B, Sq, v.shape[2])
    y = _out(out, shape, op)
    if out is not None and any(np.may_share_memory(y, t) for t in (q, k, v)):
        raise ValueError(f"{op}: out must not overlap q, k or v")
    m = None if mask is None else _mask_view(mask, op)
    _C.attention(q, k, v, m, H, float(scale), y)
    return y


__all__ = [
    "add_layer_norm",
    "attention",
    "bias_gelu",
    "gelu",
    "isa",
    "layer_norm",
    "set_isa",
    "softmax",
]
