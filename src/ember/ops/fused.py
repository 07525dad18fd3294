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
from ember.ops import quant as quant_ops
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


# ---------------------------------------------------------------------------------------------
# int8: what passes/fuse_quant.py rewrites QDQ (and QOperator) subgraphs into. Activations are
# per-tensor quantized (a scalar scale and zero point), weights int8 symmetric with one scale or
# one per output channel, biases float32 in real units. The accumulator is exact (integer), then
# rescaled and requantized in float64: the native kernels (float32 rescale) agree to 1 LSB.


def _requantize(v: np.ndarray, y_scale: np.ndarray | None, y_zero_point: np.ndarray | None):
    """float v -> saturate(rint(v / y_scale) + y_zero_point), or float32 v when y_scale is None."""
    if y_scale is None:
        return v.astype(np.float32)
    zp = y_zero_point if y_zero_point is not None else np.zeros((), np.uint8)
    return quant_ops.quantize(v, y_scale.astype(np.float64).reshape(()), zp.reshape(()), zp.dtype)


def _real(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None) -> np.ndarray:
    """Dequantized per-tensor q in float64."""
    v = q.astype(np.float64)
    if zero_point is not None:
        v = v - zero_point.astype(np.float64).reshape(())
    return v * scale.astype(np.float64).reshape(())


@op(domain=EMBER_DOMAIN)
def QConv(
    X,
    x_scale,
    x_zero_point,
    W,
    w_scale,
    y_scale=None,
    y_zero_point=None,
    B=None,
    Z=None,
    z_scale=None,
    z_zero_point=None,
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
    requantize=(),
):
    """Y = Q(activation(x_scale * w_scale[k] * ConvInteger(X, W, x_zero_point) + B + DQ(Z))).

    X, Z, Y uint8/int8 per tensor (Z in Y's layout, dequantized with z_scale / z_zero_point); W
    int8 (K, C/group, k...) with zero point 0 and w_scale of 1 or K values; B float32 (K,). Q is
    QuantizeLinear with y_scale / y_zero_point; without y_scale, Y is the float32 value itself.
    channels_last=1: X, Z and Y are N...C. requantize=(scale, zero_point, lowest, highest): the
    convolution plus B goes through QuantizeLinear -> DequantizeLinear with these before Z is added
    (the conv's own Q -> DQ on its way to a residual Add, which fusing folded in).
    """
    x = _nchw(X) if channels_last else X
    acc = quant_ops.ConvInteger_10(
        x,
        W,
        x_zero_point,
        None,
        auto_pad=auto_pad,
        dilations=dilations,
        group=group,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
    )
    K = W.shape[0]
    scale = x_scale.astype(np.float64).reshape(()) * np.broadcast_to(
        w_scale.astype(np.float64).reshape(-1), (K,)
    )
    v = acc * scale.reshape(1, K, *([1] * (acc.ndim - 2)))
    if B is not None:
        v = v + B.astype(np.float64).reshape(1, K, *([1] * (acc.ndim - 2)))
    if channels_last:
        v = np.moveaxis(v, 1, -1)
    if len(requantize):
        s, zp, lowest, highest = (float(r) for r in requantize)
        v = (np.clip(np.rint(v / s) + zp, lowest, highest) - zp) * s
    if Z is not None:
        if Z.shape != v.shape:
            raise ValueError(f"QConv: Z has shape {Z.shape}, the conv output {v.shape}")
        if z_scale is None:
            raise ValueError("QConv: Z given without z_scale")
        v = v + _real(Z, z_scale, z_zero_point)
    v = apply_activation(v, activation, activation_params)
    return _requantize(v, y_scale, y_zero_point)


@op(domain=EMBER_DOMAIN)
def QMatMul(
    A,
    a_scale,
    a_zero_point,
    B,
    b_scale,
    y_scale=None,
    y_zero_point=None,
    bias=None,
    *,
    activation="",
    activation_params=(),
):
    """Y = Q(activation(a_scale * b_scale[n] * MatMulInteger(A, B, a_zero_point) + bias)).

    A uint8/int8 (..., K) per tensor; B int8 (K, N) with zero point 0 and b_scale of 1 or N values;
    bias float32 (N,); without y_scale, Y is float32.
    """
    acc = quant_ops.MatMulInteger_10(A, B, a_zero_point, None)
    N = B.shape[-1]
    scale = a_scale.astype(np.float64).reshape(()) * np.broadcast_to(
        b_scale.astype(np.float64).reshape(-1), (N,)
    )
    v = acc * scale
    if bias is not None:
        v = v + bias.astype(np.float64)
    v = apply_activation(v, activation, activation_params)
    return _requantize(v, y_scale, y_zero_point)


@op(domain=EMBER_DOMAIN)
def DynamicQMatMul(A, B, b_scale, bias=None, *, activation="", activation_params=()):
    """ONNX Runtime's dynamic int8 matmul, float32 in and out: A quantized per call by
    DynamicQuantizeLinear, then Cast(MatMulInteger(A_q, B, a_zp)) * (a_scale * b_scale) + bias.

    B int8 (K, N) with zero point 0; b_scale 1 or N values; bias float32 (N,).
    """
    a_q, a_scale, a_zp = quant_ops.DynamicQuantizeLinear_11(A)
    acc = quant_ops.MatMulInteger_10(a_q, B, a_zp, None)
    y = acc.astype(np.float32) * (a_scale * b_scale.astype(np.float32).reshape(-1))
    if bias is not None:
        y = y + bias.astype(np.float32)
    return apply_activation(y, activation, activation_params).astype(np.float32, copy=False)


@op(domain=EMBER_DOMAIN)
def QuantizeLinear(x, y_scale, y_zero_point=None, *, channels_last=0):
    """ONNX QuantizeLinear, per tensor; channels_last=1 takes NC... and gives N...C."""
    y = quant_ops.QuantizeLinear_13(x, y_scale, y_zero_point)
    return _nhwc(y) if channels_last else y


@op(domain=EMBER_DOMAIN)
def DequantizeLinear(x, x_scale, x_zero_point=None, *, channels_last=0):
    """ONNX DequantizeLinear, per tensor; channels_last=1 takes N...C and gives NC... ."""
    y = quant_ops.DequantizeLinear_13(x, x_scale, x_zero_point)
    return np.ascontiguousarray(_nchw(y)) if channels_last else y


def fused_ops() -> list[str]:
    """The op types of the ai.ember domain."""
    from ember.ops.registry import registered

    return sorted(t for (d, t) in registered() if d == EMBER_DOMAIN)


__all__ = ["ACTIVATIONS", "apply_activation", "fused_ops"]
