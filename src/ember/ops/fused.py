"""The ai.ember domain: the fused ops graph passes rewrite ONNX subgraphs into.

Each is defined by composing the ONNX reference ops it replaces, so a fused graph means exactly what
the original did; the native kernels (ember.kernels.cpu) are tested against these. Activations are
named after the ONNX op that defines them, with its attributes in `activation_params`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ember.ops import activation as act_ops
from ember.ops import conv as conv_ops
from ember.ops import elementwise as elementwise_ops
from ember.ops import linalg as linalg_ops
from ember.ops import norm as norm_ops
from ember.ops import pool as pool_ops
from ember.ops.registry import EMBER_DOMAIN, OpContext, op


def _clip(x: np.ndarray, lo: float = -np.inf, hi: float = np.inf) -> np.ndarray:
    return elementwise_ops.Clip_11(x, np.array(lo, x.dtype), np.array(hi, x.dtype))


#: activation name -> (function of (x, *params), the number of params it takes)
ACTIVATIONS: dict[str, tuple[Callable[..., np.ndarray], int]] = {
    "Relu": (lambda x: act_ops.Relu_6(x), 0),
    "LeakyRelu": (lambda x, alpha: act_ops.LeakyRelu_6(x, alpha=alpha), 1),
    "Clip": (_clip, 2),
    "Sigmoid": (lambda x: act_ops.Sigmoid_6(x), 0),
    "Tanh": (lambda x: act_ops.Tanh_6(x), 0),
    "HardSigmoid": (lambda x, alpha, beta: act_ops.HardSigmoid_6(x, alpha=alpha, beta=beta), 2),
    "HardSwish": (lambda x: act_ops.HardSwish_14(x), 0),
    "Gelu": (lambda x: act_ops.Gelu_20(x), 0),
    "GeluTanh": (lambda x: act_ops.Gelu_20(x, approximate="tanh"), 0),
    "Elu": (lambda x, alpha: act_ops.Elu_6(x, alpha=alpha), 1),
}


def apply_activation(x: np.ndarray, activation: str, params: Sequence[float]) -> np.ndarray:
    """x after the named activation ("" = none); ValueError for an unknown name or param count."""
    if not activation:
        return x
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown fused activation {activation!r}; ember knows {', '.join(ACTIVATIONS)}"
        )
    fn, n_params = ACTIVATIONS[activation]
    if len(params) != n_params:
        raise ValueError(
            f"activation {activation} takes {n_params} activation_params, got {list(params)}"
        )
    return fn(x, *params)


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, -1, 1)  # NHWC -> NCHW view


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


@op(domain=EMBER_DOMAIN)
def FusedConv(
    X,
    W,
    B=None,
    Z=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
    activation="",
    activation_params=(),
    channels_last=0,
    ctx=None,
):
    """Y = activation(Conv(X, W, B) + Z); with channels_last=1, X, Z and Y are NHWC."""
    x = _nchw(X) if channels_last else X
    y = conv_ops.Conv(
        x,
        W,
        B,
        auto_pad=auto_pad,
        dilations=dilations,
        group=group,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
        ctx=ctx,
    )
    if channels_last:
        y = _nhwc(y)
    if Z is not None:
        if Z.shape != y.shape:
            raise ValueError(f"FusedConv: Z has shape {Z.shape}, the conv output {y.shape}")
        y = y + Z
    return apply_activation(y, activation, activation_params).astype(X.dtype, copy=False)


@op(domain=EMBER_DOMAIN)
def FusedGemm(
    A,
    B,
    C=None,
    *,
    alpha=1.0,
    beta=1.0,
    transA=0,
    transB=0,
    activation="",
    activation_params=(),
    ctx=None,
):
    """Y = activation(Gemm(A, B, C))."""
    y = linalg_ops.Gemm_7(A, B, C, alpha=alpha, beta=beta, transA=transA, transB=transB, ctx=ctx)
    return apply_activation(y, activation, activation_params)


@op(domain=EMBER_DOMAIN)
def FusedMatMul(A, B, bias=None, *, activation="", activation_params=(), ctx=None):
    """Y = activation(MatMul(A, B) + bias), bias 1-D along the last axis."""
    y = linalg_ops.MatMul(A, B, ctx=ctx)
    if bias is not None:
        if bias.ndim != 1 or bias.shape[0] != y.shape[-1]:
            raise ValueError(
                f"FusedMatMul: bias must have shape ({y.shape[-1]},), got {bias.shape}"
            )
        y = y + bias
    return apply_activation(y, activation, activation_params).astype(A.dtype, copy=False)


@op(domain=EMBER_DOMAIN)
def MaxPool(
    X,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    dilations=None,
    kernel_shape=None,
    pads=None,
    storage_order=0,
    strides=None,
    channels_last=0,
):
    """ONNX MaxPool (one output); channels_last=1 takes and gives NHWC."""
    x = _nchw(X) if channels_last else X
    y = pool_ops.MaxPool_10(
        x,
        auto_pad=auto_pad,
        ceil_mode=ceil_mode,
        dilations=dilations,
        kernel_shape=kernel_shape,
        pads=pads,
        storage_order=storage_order,
        strides=strides,
    )
    return _nhwc(y) if channels_last else y


@op(domain=EMBER_DOMAIN)
def AveragePool(
    X,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    count_include_pad=0,
    dilations=None,
    kernel_shape=None,
    pads=None,
    strides=None,
    channels_last=0,
    ctx=None,
):
    """ONNX AveragePool-19; channels_last=1 takes and gives NHWC."""
    x = _nchw(X) if channels_last else X
    y = pool_ops.AveragePool_19(
        x,
        auto_pad=auto_pad,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
        dilations=dilations,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
        ctx=ctx,
    )
    return _nhwc(y) if channels_last else y


@op(domain=EMBER_DOMAIN)
def GlobalAveragePool(X, *, channels_last=0, ctx=None):
    """ONNX GlobalAveragePool; channels_last=1 takes NHWC and gives (N, 1, 1, C)."""
    x = _nchw(X) if channels_last else X
    y = pool_ops.GlobalAveragePool(x, ctx=ctx)
    return _nhwc(y) if channels_last else y


@op(domain=EMBER_DOMAIN)
def LayerNorm(X, Scale, B=None, *, axis=-1, epsilon=1e-5, ctx=None):
    """ONNX LayerNormalization's first output, for any opset."""
    ctx = OpContext(exact=ctx is not None and ctx.exact, n_outputs=1)
    return norm_ops.LayerNormalization_17(X, Scale, B, axis=axis, epsilon=epsilon, ctx=ctx)


@op(domain=EMBER_DOMAIN)
def Gelu(X, *, approximate="none"):
    """ONNX Gelu-20, for any opset."""
    return act_ops.Gelu_20(X, approximate=approximate)


@op(domain=EMBER_DOMAIN)
def MultiHeadAttention(Q, K, V, mask=None, *, num_heads, scale=0.0, ctx=None):
    """Concat over heads of softmax(Q_h K_h^T * scale + mask) V_h.

    Q [B, Sq, H*D], K [B, Sk, H*D], V [B, Sk, H*Dv]; mask is added to the scores and broadcasts to
    [B, H, Sq, Sk]; scale 0 means 1/sqrt(D). Returns [B, Sq, H*Dv].
    """
    if Q.ndim != 3 or K.ndim != 3 or V.ndim != 3:
        raise ValueError(
            f"MultiHeadAttention takes rank-3 Q, K, V [B, S, H*D], got {Q.shape}, {K.shape}, "
            f"{V.shape}"
        )
    H = int(num_heads)
    if H <= 0 or Q.shape[2] % H or K.shape[2] != Q.shape[2] or V.shape[2] % H:
        raise ValueError(
            f"MultiHeadAttention: num_heads={H} must divide the hidden sizes of Q {Q.shape}, "
            f"K {K.shape} (equal to Q's) and V {V.shape}"
        )
    B, Sq, _ = Q.shape
    D = Q.shape[2] // H
    Dv = V.shape[2] // H
    dt = np.float64 if ctx is not None and ctx.exact else np.promote_types(Q.dtype, np.float32)

    def heads(x: np.ndarray, d: int) -> np.ndarray:
        return x.reshape(x.shape[0], x.shape[1], H, d).transpose(0, 2, 1, 3).astype(dt)

    q, k, v = heads(Q, D), heads(K, D), heads(V, Dv)
    scores = (q @ k.transpose(0, 1, 3, 2)) * (scale if scale else 1.0 / np.sqrt(D))
    if mask is not None:
        scores = scores + mask.astype(dt)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    out = (p @ v).transpose(0, 2, 1, 3).reshape(B, Sq, H * Dv)
    return out.astype(Q.dtype, copy=False)


def fused_ops() -> list[str]:
    """The op types of the ai.ember domain."""
    from ember.ops.registry import registered

    return sorted(t for (d, t) in registered() if d == EMBER_DOMAIN)


__all__ = ["ACTIVATIONS", "apply_activation", "fused_ops"]
