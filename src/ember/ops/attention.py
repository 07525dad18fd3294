"""Attention-style ops: Attention (23, 24, 25), RotaryEmbedding (23), LinearAttention (27),
CausalConvWithState (27) and ai.onnx.preview FlexAttention (1).

Outside exact mode they compute in the input dtype, step by step as the spec's function bodies do
(so float16/bfloat16 results round where the spec rounds); exact mode computes in float64 and casts
back once. Attention never materializes repeated K/V heads for GQA: query heads are grouped instead.
"""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np
import onnx_ir as ir

from ember.ops.registry import OpContext, op

_FLOATS = (
    np.dtype(np.float16),
    np.dtype(ml_dtypes.bfloat16),
    np.dtype(np.float32),
    np.dtype(np.float64),
)


def _compute_dtype(ctx: OpContext | None, dtype: np.dtype[Any]) -> np.dtype[Any]:
    """float64 in exact mode, else the input's own floating dtype."""
    if np.dtype(dtype) not in _FLOATS:
        raise TypeError(f"expected a float16, bfloat16, float32 or float64 tensor, got {dtype}")
    return np.dtype(np.float64) if ctx is not None and ctx.exact else np.dtype(dtype)


def _split_heads(x: np.ndarray, num_heads: int, name: str) -> np.ndarray:
    """(B, S, H*D) -> (B, H, S, D)."""
    B, S, hidden = x.shape
    if num_heads <= 0 or hidden % num_heads:
        raise ValueError(f"{name} hidden size {hidden} is not divisible by num_heads={num_heads}")
    return x.reshape(B, S, num_heads, hidden // num_heads).transpose(0, 2, 1, 3)


def _softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; a row that is entirely -inf gives zeros, not NaN."""
    x_max = np.max(x, axis=-1, keepdims=True)
    zero, one = np.zeros((), x.dtype), np.ones((), x.dtype)
    e = np.exp(x - np.where(np.isneginf(x_max), zero, x_max))
    s = np.sum(e, axis=-1, keepdims=True)
    return e / np.where(s == zero, one, s)


def _attention_bias(
    attn_mask: np.ndarray | None,
    nonpad_kv_seqlen: np.ndarray | None,
    *,
    B: int,
    Hq: int,
    Sq: int,
    Skv: int,
    past: int | None,
    is_causal: bool,
    left: int,
    right: int,
    dtype: np.dtype[Any],
) -> np.ndarray | None:
    """The additive bias (0 / -inf for disallowed keys, plus a float mask), broadcastable to
    (B, Hq, Sq, Skv); None when nothing masks."""
    allowed = None  # bool, broadcastable to (B, Hq, Sq, Skv)
    additive = None
    if attn_mask is not None:
        if attn_mask.ndim == 0:
            raise ValueError("attn_mask must have rank >= 1")
        pad = Skv - attn_mask.shape[-1]
        if pad < 0:
            raise ValueError(
                f"attn_mask's last dimension ({attn_mask.shape[-1]}) exceeds the total key "
                f"length ({Skv})"
            )
        if pad > 0:  # a shorter mask is padded with disallowed positions
            fill = False if attn_mask.dtype == np.bool_ else -np.inf
            attn_mask = np.pad(
                attn_mask, [(0, 0)] * (attn_mask.ndim - 1) + [(0, pad)], constant_values=fill
            )
        try:
            ok = np.broadcast_shapes(attn_mask.shape, (B, Hq, Sq, Skv)) == (B, Hq, Sq, Skv)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"attn_mask of shape {attn_mask.shape} (padded to {Skv} keys) does not broadcast "
                f"to (batch, q_num_heads, q_len, total_kv_len) = {(B, Hq, Sq, Skv)}"
            )
        if attn_mask.dtype == np.bool_:
            allowed = attn_mask
        else:
            additive = attn_mask.astype(dtype)
    windowed = left >= 0 or right >= 0
    if is_causal or windowed or nonpad_kv_seqlen is not None:
        i = np.arange(Sq).reshape(Sq, 1)
        j = np.arange(Skv).reshape(1, Skv)
        # Bottom-right alignment: query i sits at absolute position i + offset, where offset counts
        # the valid keys before the query block (internal cache: past length; external cache:
        # nonpad_kv_seqlen - Sq per batch, possibly negative, which fully masks leading rows).
        if past is not None:
            pos = i + past  # (Sq, 1)
        elif nonpad_kv_seqlen is not None:
            pos = i + (nonpad_kv_seqlen.reshape(B, 1, 1, 1).astype(np.int64) - Sq)  # (B, 1, Sq, 1)
        else:
            pos = i
        keep = np.ones((1, 1), dtype=bool)
        if is_causal:
            keep = keep & (j <= pos)
        if left >= 0:
            keep = keep & (pos - j <= left)
        if right >= 0:
            keep = keep & (j - pos <= right)
        if nonpad_kv_seqlen is not None:
            keep = keep & (j < nonpad_kv_seqlen.reshape(B, 1, 1, 1))
        allowed = keep if allowed is None else allowed & keep
    if allowed is None:
        return additive
    bias = np.where(allowed, np.zeros((), dtype), np.full((), -np.inf, dtype))
    return bias if additive is None else bias + additive


def _attention(
    Q,
    K,
    V,
    attn_mask,
    past_key,
    past_value,
    nonpad_kv_seqlen,
    *,
    scale,
    is_causal,
    q_num_heads,
    kv_num_heads,
    softmax_precision,
    softcap,
    qk_matmul_output_mode,
    left_window_size=-1,
    right_window_size=-1,
    check_4d_heads=False,
    ctx=None,
):
    if not Q.ndim == K.ndim == V.ndim or Q.ndim not in (3, 4):
        raise ValueError(
            f"Q, K and V must all be 3-D or all 4-D, got shapes {Q.shape}, {K.shape}, {V.shape}"
        )
    if (past_key is None) != (past_value is None):
        raise ValueError("past_key and past_value must be given together")
    if nonpad_kv_seqlen is not None and past_key is not None:
        raise ValueError("nonpad_kv_seqlen cannot be combined with past_key/past_value")
    if qk_matmul_output_mode not in (0, 1, 2, 3):
        raise ValueError(f"qk_matmul_output_mode must be 0, 1, 2 or 3, got {qk_matmul_output_mode}")
    for name, w in (
        ("left_window_size", left_window_size),
        ("right_window_size", right_window_size),
    ):
        if w < -1:
            raise ValueError(f"{name} must be -1 (unbounded) or >= 0, got {w}")
    is3d = Q.ndim == 3
    if is3d:
        if q_num_heads is None or kv_num_heads is None:
            raise ValueError("3-D Q/K/V need the q_num_heads and kv_num_heads attributes")
        Q = _split_heads(Q, q_num_heads, "Q")
        K = _split_heads(K, kv_num_heads, "K")
        V = _split_heads(V, kv_num_heads, "V")
    elif check_4d_heads and (q_num_heads is not None or kv_num_heads is not None):
        raise ValueError("q_num_heads and kv_num_heads must not be set for 4-D inputs")
    B, Hq, Sq, D = Q.shape  # (B, Hq, Sq, D)
    Hkv = K.shape[1]
    if K.shape[0] != B or V.shape[0] != B or V.shape[1] != Hkv or K.shape[3] != D:
        raise ValueError(
            f"inconsistent shapes: Q {Q.shape}, K {K.shape}, V {V.shape} (as (B, H, S, D))"
        )
    if K.shape[2] != V.shape[2]:
        raise ValueError(f"K and V sequence lengths differ: {K.shape[2]} vs {V.shape[2]}")
    if Hq % Hkv:
        raise ValueError(f"q_num_heads ({Hq}) must be a multiple of kv_num_heads ({Hkv})")
    if past_key is not None:
        if (
            past_key.shape[:2] != (B, Hkv)
            or past_key.shape[3] != D
            or past_value.shape[:2] != (B, Hkv)
            or past_value.shape[3] != V.shape[3]
            or past_key.shape[2] != past_value.shape[2]
        ):
            raise ValueError(
                f"past_key {past_key.shape} / past_value {past_value.shape} do not fit K {K.shape} "
                f"and V {V.shape}"
            )
        present_key = np.concatenate([past_key, K], axis=2)
        present_value = np.concatenate([past_value, V], axis=2)
    else:
        present_key, present_value = K, V
    if nonpad_kv_seqlen is not None and nonpad_kv_seqlen.shape != (B,):
        raise ValueError(f"nonpad_kv_seqlen must have shape ({B},), got {nonpad_kv_seqlen.shape}")
    Skv, Dv, G = present_key.shape[2], V.shape[3], Hq // Hkv

    out_dtype = Q.dtype
    wt = _compute_dtype(ctx, Q.dtype)
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    # Q and K are each scaled by sqrt(scale) (in the compute dtype) to keep Q @ K^T in range.
    s = np.asarray(math.sqrt(scale)).astype(wt)
    q = Q.astype(wt) * s
    k = present_key.astype(wt) * s
    v = present_value.astype(wt)
    # GQA: query head h reads KV head h // G; group the query heads instead of repeating K and V.
    scores = (
        np.matmul(q.reshape(B, Hkv, G, Sq, D), np.swapaxes(k, -1, -2)[:, :, None])
        .astype(wt)
        .reshape(B, Hq, Sq, Skv)
    )  # (B, Hq, Sq, Skv)
    raw = scores
    if softcap > 0:
        scores = np.tanh(scores / softcap) * softcap
    capped = scores
    bias = _attention_bias(
        attn_mask,
        nonpad_kv_seqlen,
        B=B,
        Hq=Hq,
        Sq=Sq,
        Skv=Skv,
        past=past_key.shape[2] if past_key is not None else None,
        is_causal=bool(is_causal),
        left=left_window_size,
        right=right_window_size,
        dtype=wt,
    )
    if bias is not None:
        scores = scores + bias
    with_bias = scores
    if softmax_precision and not (ctx is not None and ctx.exact):
        scores = scores.astype(np.dtype(ir.DataType(int(softmax_precision)).numpy()))
    probs = _softmax(scores)
    if bias is not None:
        # A row with no attendable key (decided on the bias, not on possibly-NaN logits) is zero.
        row_all_masked = np.isneginf(np.max(bias, axis=-1, keepdims=True))
        probs = np.where(row_all_masked, np.zeros((), probs.dtype), probs)
    qk = (raw, capped, with_bias, probs)[qk_matmul_output_mode]
    probs = probs.astype(wt)
    y = np.matmul(probs.reshape(B, Hkv, G, Sq, Skv), v[:, :, None])  # (B, Hkv, G, Sq, Dv)
    y = y.astype(wt).reshape(B, Hq, Sq, Dv)
    if is3d:
        y = y.transpose(0, 2, 1, 3).reshape(B, Sq, Hq * Dv)
    return (
        y.astype(out_dtype),
        present_key,
        present_value,
        qk.astype(out_dtype),
    )


@op
def Attention_23(
    Q,
    K,
    V,
    attn_mask=None,
    past_key=None,
    past_value=None,
    *,
    is_causal=0,
    kv_num_heads=None,
    q_num_heads=None,
    qk_matmul_output_mode=0,
    scale=None,
    softcap=0.0,
    softmax_precision=None,
    ctx=None,
):
    """Scaled dot-product attention (MHA/GQA/MQA, 3-D or 4-D), with optional KV cache concat."""
    return _attention(
        Q,
        K,
        V,
        attn_mask,
        past_key,
        past_value,
        None,
        scale=scale,
        is_causal=is_causal,
        q_num_heads=q_num_heads,
        kv_num_heads=kv_num_heads,
        softmax_precision=softmax_precision,
        softcap=softcap,
        qk_matmul_output_mode=qk_matmul_output_mode,
        ctx=ctx,
    )


@op
def Attention_24(
    Q,
    K,
    V,
    attn_mask=None,
    past_key=None,
    past_value=None,
    nonpad_kv_seqlen=None,
    *,
    is_causal=0,
    kv_num_heads=None,
    q_num_heads=None,
    qk_matmul_output_mode=0,
    scale=None,
    softcap=0.0,
    softmax_precision=None,
    ctx=None,
):
    """Attention-23 plus nonpad_kv_seqlen: an external KV cache (padding mask, per-batch causal
    offset)."""
    return _attention(
        Q,
        K,
        V,
        attn_mask,
        past_key,
        past_value,
        nonpad_kv_seqlen,
        scale=scale,
        is_causal=is_causal,
        q_num_heads=q_num_heads,
        kv_num_heads=kv_num_heads,
        softmax_precision=softmax_precision,
        softcap=softcap,
        qk_matmul_output_mode=qk_matmul_output_mode,
        ctx=ctx,
    )


@op
def Attention_25(
    Q,
    K,
    V,
    attn_mask=None,
    past_key=None,
    past_value=None,
    nonpad_kv_seqlen=None,
    *,
    is_causal=0,
    kv_num_heads=None,
    left_window_size=-1,
    q_num_heads=None,
    qk_matmul_output_mode=0,
    right_window_size=-1,
    scale=None,
    softcap=0.0,
    softmax_precision=None,
    ctx=None,
):
    """Attention-24 plus sliding windows; head counts must not be given with 4-D inputs."""
    return _attention(
        Q,
        K,
        V,
        attn_mask,
        past_key,
        past_value,
        nonpad_kv_seqlen,
        scale=scale,
        is_causal=is_causal,
        q_num_heads=q_num_heads,
        kv_num_heads=kv_num_heads,
        softmax_precision=softmax_precision,
        softcap=softcap,
        qk_matmul_output_mode=qk_matmul_output_mode,
        left_window_size=left_window_size,
        right_window_size=right_window_size,
        check_4d_heads=True,
        ctx=ctx,
    )


@op
def RotaryEmbedding_23(
    X,
    cos_cache,
    sin_cache,
    position_ids=None,
    *,
    interleaved=0,
    num_heads=None,
    rotary_embedding_dim=0,
    ctx=None,
):
    """Rotate the first `rotary_embedding_dim` features of each head (halves, or even/odd pairs
    when interleaved) by the cached angles; X is (B, H, S, D) or (B, S, H*D)."""
    if X.ndim == 4:
        x = X.transpose(0, 2, 1, 3)  # (B, S, H, D)
    elif X.ndim == 3:
        if not num_heads:
            raise ValueError("a 3-D input needs the num_heads attribute")
        B, S, hidden = X.shape
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by num_heads={num_heads}")
        x = X.reshape(B, S, num_heads, hidden // num_heads)
    else:
        raise ValueError(f"input must be 3-D or 4-D, got shape {X.shape}")
    B, S, H, D = x.shape
    rot = rotary_embedding_dim or D
    if rot > D or rot % 2:
        raise ValueError(f"rotary_embedding_dim={rot} must be even and <= head size {D}")
    if position_ids is not None:
        if position_ids.shape != (B, S):
            raise ValueError(f"position_ids must have shape {(B, S)}, got {position_ids.shape}")
        if cos_cache.ndim != 2 or sin_cache.ndim != 2:
            raise ValueError("with position_ids, cos_cache and sin_cache must be 2-D")
        n = cos_cache.shape[0]
        if position_ids.size and (position_ids.min() < 0 or position_ids.max() >= n):
            raise ValueError(f"position_ids must lie in [0, {n}) (the cache length)")
        cos, sin = cos_cache[position_ids], sin_cache[position_ids]  # (B, S, rot/2)
    else:
        cos, sin = cos_cache, sin_cache
        if cos.shape[:2] != (B, S) or sin.shape[:2] != (B, S) or cos.ndim != 3:
            raise ValueError(
                f"without position_ids, cos_cache/sin_cache must be (B, S, rot/2) = "
                f"({B}, {S}, {rot // 2}), got {cos.shape} and {sin.shape}"
            )
    if cos.shape[-1] != rot // 2 or sin.shape[-1] != rot // 2:
        raise ValueError(
            f"cos/sin cache last dimension must be rotary_embedding_dim / 2 = {rot // 2}, got "
            f"{cos.shape[-1]} and {sin.shape[-1]}"
        )
    wt = _compute_dtype(ctx, X.dtype)
    xw = x.astype(wt)
    cos = cos.astype(wt)[:, :, None, :]  # (B, S, 1, rot/2)
    sin = sin.astype(wt)[:, :, None, :]
    x_rot = xw[..., :rot]
    if interleaved:
        x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
    else:
        x1, x2 = x_rot[..., : rot // 2], x_rot[..., rot // 2 :]
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if interleaved:
        rotated = np.stack([real, imag], axis=-1).reshape(B, S, H, rot)
    else:
        rotated = np.concatenate([real, imag], axis=-1)
    y = np.concatenate([rotated, xw[..., rot:]], axis=-1).astype(X.dtype)  # (B, S, H, D)
    return y.transpose(0, 2, 1, 3) if X.ndim == 4 else y.reshape(X.shape)


@op
def LinearAttention_27(
    query,
    key,
    value,
    past_state=None,
    decay=None,
    beta=None,
    *,
    chunk_size=64,
    kv_num_heads=None,
    q_num_heads=None,
    scale=0.0,
    update_rule="gated_delta",
    ctx=None,
):
    """Recurrent linear attention (linear / gated / delta / gated_delta), run token by token.

    State S (B, Hkv, dk, dv) accumulates in float32 (float64 in exact mode); chunk_size is a tuning
    hint with no effect on the result.
    """
    del chunk_size
    if update_rule not in ("linear", "gated", "delta", "gated_delta"):
        raise ValueError(
            f"update_rule must be 'linear', 'gated', 'delta' or 'gated_delta', got {update_rule!r}"
        )
    if q_num_heads is None or kv_num_heads is None:
        raise ValueError("LinearAttention needs the q_num_heads and kv_num_heads attributes")
    if q_num_heads <= 0 or kv_num_heads <= 0 or q_num_heads % kv_num_heads:
        raise ValueError(
            f"q_num_heads ({q_num_heads}) must be a positive multiple of "
            f"kv_num_heads ({kv_num_heads})"
        )
    gated = update_rule in ("gated", "gated_delta")
    delta = update_rule in ("delta", "gated_delta")
    for name, arr, needed in (("decay", decay, gated), ("beta", beta, delta)):
        if needed and arr is None:
            raise ValueError(f"update_rule {update_rule!r} needs the {name} input")
        if not needed and arr is not None:
            raise ValueError(f"update_rule {update_rule!r} takes no {name} input")
    for name, arr in (("query", query), ("key", key), ("value", value)):
        if arr.ndim != 3:
            raise ValueError(f"{name} must be 3-D (B, T, H*D), got shape {arr.shape}")
    wt = np.dtype(np.float64) if ctx is not None and ctx.exact else np.dtype(np.float32)
    B, T, _ = query.shape
    G = q_num_heads // kv_num_heads
    q = _split_heads(query, q_num_heads, "query").astype(wt)  # (B, Hq, T, dk)
    k = _split_heads(key, kv_num_heads, "key").astype(wt)  # (B, Hkv, T, dk)
    v = _split_heads(value, kv_num_heads, "value").astype(wt)  # (B, Hkv, T, dv)
    dk, dv = q.shape[-1], v.shape[-1]
    if k.shape[:3] != (B, kv_num_heads, T) or k.shape[-1] != dk or v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"query {query.shape}, key {key.shape} and value {value.shape} do not agree on "
            f"batch, length and head size"
        )
    g = None
    if decay is not None:
        if decay.ndim != 3 or decay.shape[:2] != (B, T):
            raise ValueError(f"decay must be (B, T, H_kv) or (B, T, H_kv*d_k), got {decay.shape}")
        if decay.shape[-1] == kv_num_heads:
            g = decay.reshape(B, T, kv_num_heads, 1).transpose(0, 2, 1, 3)  # (B, Hkv, T, 1)
        elif decay.shape[-1] == kv_num_heads * dk:
            g = _split_heads(decay, kv_num_heads, "decay")  # (B, Hkv, T, dk)
        else:
            raise ValueError(
                f"decay's last dimension ({decay.shape[-1]}) must be kv_num_heads "
                f"({kv_num_heads}) or kv_num_heads*d_k ({kv_num_heads * dk})"
            )
        g = np.exp(g.astype(wt))
    b = None
    if beta is not None:
        if beta.ndim != 3 or beta.shape[:2] != (B, T) or beta.shape[-1] not in (kv_num_heads, 1):
            raise ValueError(f"beta must be (B, T, H_kv) or (B, T, 1), got {beta.shape}")
        b = beta.reshape(B, T, beta.shape[-1], 1).transpose(0, 2, 1, 3).astype(wt)  # (B, H|1, T, 1)
    if past_state is not None:
        if past_state.shape != (B, kv_num_heads, dk, dv):
            raise ValueError(
                f"past_state must have shape {(B, kv_num_heads, dk, dv)}, got {past_state.shape}"
            )
        state = past_state.astype(wt)
        state_dtype = past_state.dtype
    else:
        state = np.zeros((B, kv_num_heads, dk, dv), wt)
        state_dtype = query.dtype
    scale_val = scale if scale else 1.0 / math.sqrt(dk)
    out = np.empty((B, kv_num_heads, G, T, dv), wt)
    qg = q.reshape(B, kv_num_heads, G, T, dk)
    for t in range(T):  # the recurrence: one step per token
        k_t, v_t = k[:, :, t], v[:, :, t]  # (B, Hkv, dk), (B, Hkv, dv)
        if g is not None:
            state = state * g[:, :, t][..., None]  # decay over dk (or per head), broadcast over dv
        if b is not None:
            retrieved = np.matmul(k_t[:, :, None, :], state)[:, :, 0]  # S^T k: (B, Hkv, dv)
            v_t = b[:, :, t] * (v_t - retrieved)
        state = state + k_t[..., :, None] * v_t[..., None, :]
        out[:, :, :, t] = np.matmul(qg[:, :, :, t], state) * scale_val  # (B, Hkv, G, dv)
    y = out.reshape(B, q_num_heads, T, dv).transpose(0, 2, 1, 3).reshape(B, T, q_num_heads * dv)
    return y.astype(query.dtype), state.astype(state_dtype)


@op
def CausalConvWithState_27(X, weight, bias=None, past_state=None, *, activation="none", ctx=None):
    """Depthwise causal conv1d over [past_state | X] (B, C, L), optional fused SiLU; also returns
    the last k-1 positions of that padded sequence as the next state."""
    if activation not in ("none", "silu", "swish"):
        raise ValueError(f"activation must be 'none', 'silu' or 'swish', got {activation!r}")
    if X.ndim != 3:
        raise ValueError(f"input must be 3-D (B, C, L), got shape {X.shape}")
    B, C, L = X.shape
    if weight.ndim != 3 or weight.shape[:2] != (C, 1) or weight.shape[2] < 1:
        raise ValueError(f"weight must have shape ({C}, 1, k), got {weight.shape}")
    k = weight.shape[2]
    if bias is not None and bias.shape != (C,):
        raise ValueError(f"bias must have shape ({C},), got {bias.shape}")
    if past_state is None:
        past_state = np.zeros((B, C, k - 1), X.dtype)
    elif past_state.shape != (B, C, k - 1):
        raise ValueError(f"past_state must have shape {(B, C, k - 1)}, got {past_state.shape}")
    padded = np.concatenate([past_state.astype(X.dtype), X], axis=2)  # (B, C, L + k - 1)
    wt = _compute_dtype(ctx, X.dtype)
    if wt.itemsize < 4:
        wt = np.dtype(np.float32)  # sum the k taps in float32, round once
    p = padded.astype(wt)
    w = weight[:, 0, :].astype(wt)  # (C, k)
    y = np.zeros((B, C, L), wt)
    for j in range(k):  # kernel taps
        y += w[:, j, None] * p[:, :, j : j + L]
    if bias is not None:
        y += bias.astype(wt)[:, None]
    if not (ctx is not None and ctx.exact):
        y = y.astype(X.dtype)
    if activation != "none":
        yf = y.astype(np.float64 if y.dtype == np.float64 else np.float32)
        y = yf / (1.0 + np.exp(-yf))
    return y.astype(X.dtype), padded[:, :, L:]


# softmax_precision (an ONNX TensorProto data type) -> the dtype FlexAttention's softmax runs in.
_SOFTMAX_PRECISIONS = {
    int(ir.DataType.FLOAT): np.dtype(np.float32),
    int(ir.DataType.FLOAT16): np.dtype(np.float16),
    int(ir.DataType.BFLOAT16): np.dtype(ml_dtypes.bfloat16),
    int(ir.DataType.DOUBLE): np.dtype(np.float64),
}


def _call_modifier(body: Any, name: str, x: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """Run a FlexAttention modifier subgraph once on the whole (B, Hq, L, S) tensor."""
    if body.n_inputs != 1:
        raise ValueError(f"{name} must take exactly 1 input (the scores), it takes {body.n_inputs}")
    declared = body.plan.graph.inputs[0].dtype
    if declared is not None and np.dtype(declared.numpy()) != dtype:
        raise TypeError(
            f"{name} declares a {declared.name} input, but the scores are {dtype} "
            f"(softmax_precision decides their element type)"
        )
    outs = body(x.astype(dtype))
    if len(outs) != 1:
        raise ValueError(f"{name} must produce exactly 1 output, it produces {len(outs)}")
    y = np.asarray(outs[0])
    if y.shape != x.shape:
        raise ValueError(f"{name} must keep the shape {x.shape}, it returned shape {y.shape}")
    return y


@op(domain="ai.onnx.preview")
def FlexAttention(
    Q, K, V, *, prob_mod=None, scale=None, score_mod=None, softmax_precision=None, ctx=None
):
    """softmax(score_mod(Q @ K^T * scale)) -> prob_mod -> @ V over rank-4 (B, H, S, D) inputs, GQA.

    Each modifier subgraph runs once on the whole (B, Hq, L, S) tensor, in the softmax precision
    (float32 for half inputs unless softmax_precision says otherwise). As in the spec's function
    body, Q @ K^T runs in the input dtype and Probs @ V in the softmax precision; exact mode runs
    both in float64 and rounds only where a modifier subgraph's signature demands it.
    """
    for name, x in (("Q", Q), ("K", K), ("V", V)):
        if x.ndim != 4:
            raise ValueError(f"FlexAttention needs rank-4 (B, H, S, D) inputs; {name} is {x.shape}")
    B, Hq, L, E = Q.shape
    _, Hkv, S, _ = K.shape
    Ev = V.shape[3]
    if K.shape[0] != B or V.shape[0] != B:
        raise ValueError(f"Q {Q.shape}, K {K.shape} and V {V.shape} must share the batch size")
    if K.shape[3] != E:
        raise ValueError(f"Q {Q.shape} and K {K.shape} must share the head size")
    if V.shape[1:3] != (Hkv, S):
        raise ValueError(f"K {K.shape} and V {V.shape} must share heads and sequence length")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"Q's {Hq} heads must be a multiple of K/V's {Hkv} heads")
    G = Hq // Hkv
    if softmax_precision is None:
        sm = np.dtype(np.float64) if Q.dtype == np.float64 else np.dtype(np.float32)
    elif int(softmax_precision) in _SOFTMAX_PRECISIONS:
        sm = _SOFTMAX_PRECISIONS[int(softmax_precision)]
    else:
        raise ValueError(
            f"softmax_precision must be FLOAT (1), FLOAT16 (10), DOUBLE (11) or BFLOAT16 (16), "
            f"got {softmax_precision}"
        )
    exact = ctx is not None and ctx.exact
    wt = _compute_dtype(ctx, Q.dtype)  # the Q @ K^T dtype
    pt = np.dtype(np.float64) if exact else sm  # the softmax and Probs @ V dtype
    if scale is None:
        scale = 1.0 / math.sqrt(E)
    # Q and K are each scaled by sqrt(scale) (in the compute dtype) to keep Q @ K^T in range.
    s = np.asarray(math.sqrt(scale)).astype(wt)
    q = (Q.astype(wt) * s).reshape(B, Hkv, G, L, E)
    k = K.astype(wt) * s  # (B, Hkv, S, E)
    # GQA: query head h reads KV head h // G; group the query heads instead of repeating K and V.
    scores = np.matmul(q, np.swapaxes(k, -1, -2)[:, :, None]).astype(wt)  # (B, Hkv, G, L, S)
    scores = scores.reshape(B, Hq, L, S).astype(pt)
    if score_mod is not None:
        scores = _call_modifier(score_mod, "score_mod", scores, sm).astype(pt)
    # NOTE: ONNX Softmax, so a row that score_mod masks entirely (all -inf) is NaN, as in the
    # function body; Attention instead zeroes such rows.
    with np.errstate(invalid="ignore"):
        e = np.exp(scores - np.max(scores, axis=-1, keepdims=True))
        probs = (e / np.sum(e, axis=-1, keepdims=True)).astype(pt)
    if prob_mod is not None:
        probs = _call_modifier(prob_mod, "prob_mod", probs, sm).astype(pt)
    v = V.astype(pt)[:, :, None]  # (B, Hkv, 1, S, Ev)
    y = np.matmul(probs.reshape(B, Hkv, G, L, S), v).astype(pt)  # (B, Hkv, G, L, Ev)
    return y.reshape(B, Hq, L, Ev).astype(V.dtype)
