"""Attention, RotaryEmbedding, LinearAttention and CausalConvWithState against loop-by-definition
float64 twins: head layouts, GQA, every masking source, KV caches, output modes, exact mode and the
errors a user reads."""

from __future__ import annotations

import functools
import math

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper
from tests.ops.node import run_node as _run_node

import ember
from ember.errors import ExecutionError
from ember.ops.attention import (
    Attention_23,
    Attention_25,
    CausalConvWithState_27,
    LinearAttention_27,
    RotaryEmbedding_23,
)
from ember.ops.registry import OpContext

run_node = functools.partial(_run_node, opset=23)

RNG = np.random.default_rng(0)
EXACT = OpContext(exact=True)


def rand(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Attention twin: one query row at a time, in float64
# ----------------------------------------------------------------------------------------------


def attention_twin(
    Q,
    K,
    V,
    mask=None,
    past_k=None,
    past_v=None,
    nonpad=None,
    *,
    scale=None,
    causal=False,
    softcap=0.0,
    left=-1,
    right=-1,
):
    """4-D Q (B, Hq, Sq, D), K (B, Hkv, Skv, D), V (B, Hkv, Skv, Dv) -> (Y, probs)."""
    Q, K, V = (a.astype(np.float64) for a in (Q, K, V))
    past = 0
    if past_k is not None:
        past = past_k.shape[2]
        K = np.concatenate([past_k.astype(np.float64), K], axis=2)
        V = np.concatenate([past_v.astype(np.float64), V], axis=2)
    B, Hq, Sq, D = Q.shape
    Hkv, Skv = K.shape[1], K.shape[2]
    scale = 1 / math.sqrt(D) if scale is None else scale
    if mask is not None and mask.shape[-1] < Skv:
        fill = False if mask.dtype == bool else -np.inf
        pad = [(0, 0)] * (mask.ndim - 1) + [(0, Skv - mask.shape[-1])]
        mask = np.pad(mask, pad, constant_values=fill)
    full_mask = None if mask is None else np.broadcast_to(mask, (B, Hq, Sq, Skv))
    Y = np.zeros((B, Hq, Sq, V.shape[3]))
    P = np.zeros((B, Hq, Sq, Skv))
    j = np.arange(Skv)
    for b in range(B):
        for h in range(Hq):
            kh = h // (Hq // Hkv)
            for i in range(Sq):
                offset = past if nonpad is None else int(nonpad[b]) - Sq
                pos = i + offset
                s = scale * (K[b, kh] @ Q[b, h, i])
                if softcap > 0:
                    s = softcap * np.tanh(s / softcap)
                ok = np.ones(Skv, bool)
                if causal:
                    ok &= j <= pos
                if left >= 0:
                    ok &= pos - j <= left
                if right >= 0:
                    ok &= j - pos <= right
                if nonpad is not None:
                    ok &= j < nonpad[b]
                if full_mask is not None:
                    m = full_mask[b, h, i]
                    if m.dtype == bool:
                        ok &= m
                    else:
                        s = s + m.astype(np.float64)
                s = np.where(ok, s, -np.inf)
                if np.all(np.isneginf(s)):
                    continue  # a fully masked row is zero
                e = np.exp(s - s.max())
                P[b, h, i] = e / e.sum()
                Y[b, h, i] = P[b, h, i] @ V[b, kh]
    return Y, P


def to_3d(x):
    B, H, S, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, S, H * D)


ATTENTION_CASES = {
    # name: (Hq, Hkv, Sq, Skv, D, Dv, extra)
    "mha": (3, 3, 4, 6, 8, 8, {}),
    "gqa": (6, 2, 4, 6, 8, 8, {}),
    "mqa": (4, 1, 5, 3, 4, 4, {}),
    "v_head_size": (2, 2, 3, 5, 8, 3, {}),
    "causal": (2, 2, 4, 4, 8, 8, {"is_causal": 1}),
    "causal_cross": (2, 1, 3, 7, 8, 8, {"is_causal": 1}),  # top-left: no cache offset
    "scaled_softcap": (2, 2, 3, 5, 8, 8, {"scale": 0.3, "softcap": 1.5}),
    "float_mask_2d": (2, 2, 3, 5, 8, 8, {"mask": (3, 5)}),
    "float_mask_3d": (2, 2, 3, 5, 8, 8, {"mask": (2, 3, 5)}),  # (heads, q, kv)
    "bool_mask_4d_causal": (2, 2, 4, 4, 8, 8, {"mask": (1, 2, 4, 4), "bool": True, "is_causal": 1}),
    "short_mask": (2, 2, 3, 6, 8, 8, {"mask": (3, 4)}),  # padded with -inf
    "past": (2, 2, 2, 3, 8, 8, {"past": 4}),
    "past_causal_gqa": (4, 2, 3, 3, 8, 8, {"past": 5, "is_causal": 1, "mask": (3, 8)}),
}


@pytest.mark.parametrize("name", list(ATTENTION_CASES))
@pytest.mark.parametrize("layout", ["4d", "3d"])
@pytest.mark.parametrize("exact", [False, True])
def test_attention_matches_twin(name, layout, exact):
    Hq, Hkv, Sq, Skv, D, Dv, extra = ATTENTION_CASES[name]
    B = 2
    Q, K, V = rand(B, Hq, Sq, D), rand(B, Hkv, Skv, D), rand(B, Hkv, Skv, Dv)
    mask = None
    if "mask" in extra:
        mask = RNG.random(extra["mask"]) > 0.3 if extra.get("bool") else rand(*extra["mask"])
    past_k = past_v = None
    if "past" in extra:
        past_k, past_v = rand(B, Hkv, extra["past"], D), rand(B, Hkv, extra["past"], Dv)
    attrs = {k: v for k, v in extra.items() if k in ("is_causal", "scale", "softcap")}
    if layout == "3d":
        attrs.update(q_num_heads=Hq, kv_num_heads=Hkv)
        qkv = [("Q", to_3d(Q)), ("K", to_3d(K)), ("V", to_3d(V))]
    else:
        qkv = [("Q", Q), ("K", K), ("V", V)]
    inputs = [
        *qkv,
        None if mask is None else ("mask", mask),
        None if past_k is None else ("pk", past_k),
        None if past_v is None else ("pv", past_v),
    ]
    y, pk, pv = run_node("Attention", inputs, attrs, opset=23, exact=exact, n_outputs=3)
    expected, _ = attention_twin(
        Q,
        K,
        V,
        mask,
        past_k,
        past_v,
        scale=extra.get("scale"),
        causal=bool(extra.get("is_causal")),
        softcap=extra.get("softcap", 0.0),
    )
    if layout == "3d":
        expected = to_3d(expected)
    assert y.dtype == np.float32 and y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-6 if exact else 2e-5, atol=1e-6)
    if past_k is not None:
        np.testing.assert_array_equal(pk, np.concatenate([past_k, K], axis=2))
        np.testing.assert_array_equal(pv, np.concatenate([past_v, V], axis=2))


def test_attention_nonpad_kv_seqlen_external_cache():
    B, Hq, Hkv, Sq, Skv, D = 3, 4, 2, 2, 6, 8
    Q, K, V = rand(B, Hq, Sq, D), rand(B, Hkv, Skv, D), rand(B, Hkv, Skv, D)
    nonpad = np.array([6, 3, 1], np.int64)  # the last batch has offset -1: its first row is empty
    inputs = [("Q", Q), ("K", K), ("V", V), None, None, None, ("n", nonpad)]
    y = run_node("Attention", inputs, {"is_causal": 1}, opset=24)
    expected, _ = attention_twin(Q, K, V, nonpad=nonpad, causal=True)
    np.testing.assert_allclose(y, expected, rtol=2e-5, atol=1e-6)
    assert np.all(y[2, :, 0] == 0)  # fully masked row: zero, not NaN


@pytest.mark.parametrize(
    ("left", "right", "causal"), [(2, -1, 1), (1, 2, 0), (0, 0, 0), (-1, 1, 0)]
)
def test_attention_sliding_window(left, right, causal):
    Q, K, V = rand(2, 2, 5, 4), rand(2, 2, 7, 4), rand(2, 2, 7, 4)
    past_k, past_v = rand(2, 2, 2, 4), rand(2, 2, 2, 4)
    attrs = {"left_window_size": left, "right_window_size": right, "is_causal": causal}
    inputs = [("Q", Q), ("K", K), ("V", V), None, ("pk", past_k), ("pv", past_v)]
    y = run_node("Attention", inputs, attrs, opset=25)
    expected, _ = attention_twin(
        Q, K, V, None, past_k, past_v, causal=bool(causal), left=left, right=right
    )
    np.testing.assert_allclose(y, expected, rtol=2e-5, atol=1e-6)


def test_attention_qk_matmul_output_modes():
    Q, K, V = rand(1, 2, 3, 4) * 3, rand(1, 2, 5, 4) * 3, rand(1, 2, 5, 4)
    mask = rand(3, 5)
    scale = 0.5
    raw = (Q.astype(np.float64) @ K.astype(np.float64).transpose(0, 1, 3, 2)) * scale
    capped = 2.0 * np.tanh(raw / 2.0)
    _, probs = attention_twin(Q, K, V, mask, scale=scale, softcap=2.0)
    for mode, expected in enumerate([raw, capped, capped + mask, probs]):
        attrs = {"qk_matmul_output_mode": mode, "softcap": 2.0, "scale": scale}
        inputs = [("Q", Q), ("K", K), ("V", V), ("m", mask)]
        _, _, _, qk = run_node("Attention", inputs, attrs, n_outputs=4)
        np.testing.assert_allclose(qk, expected, rtol=1e-5, atol=1e-6, err_msg=f"mode {mode}")


def test_attention_fully_masked_rows_are_zero_in_y_and_mode_3():
    Q, K, V = rand(1, 1, 3, 4), rand(1, 1, 3, 4), rand(1, 1, 3, 4)
    mask = np.array([[True, False, True], [False, False, False], [True, True, True]])
    y, _, _, p = Attention_23(Q, K, V, mask, qk_matmul_output_mode=3)
    assert not np.isnan(y).any() and not np.isnan(p).any()
    assert np.all(y[0, 0, 1] == 0) and np.all(p[0, 0, 1] == 0)
    np.testing.assert_allclose(p.sum(-1)[0, 0], [1, 0, 1], rtol=1e-6)
    # A float mask of -inf everywhere in a row behaves the same.
    fmask = np.where(mask, 0.0, -np.inf).astype(np.float32)
    y2 = Attention_23(Q, K, V, fmask)[0]
    np.testing.assert_allclose(y2, y, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_attention_half_precision_keeps_dtype_and_is_close(dtype):
    Q, K, V = rand(1, 2, 3, 8), rand(1, 2, 4, 8), rand(1, 2, 4, 8)
    y = Attention_23(Q.astype(dtype), K.astype(dtype), V.astype(dtype), is_causal=1)[0]
    assert y.dtype == dtype
    expected, _ = attention_twin(Q, K, V, causal=True)
    np.testing.assert_allclose(y.astype(np.float32), expected, rtol=0.05, atol=0.02)
    y, _, _, p = Attention_23(
        Q.astype(dtype),
        K.astype(dtype),
        V.astype(dtype),
        qk_matmul_output_mode=3,
        softmax_precision=TensorProto.FLOAT,
    )
    assert p.dtype == dtype  # mode 3 is emitted at the output precision


def test_attention_exact_mode_is_float64_inside():
    Q, K, V = rand(1, 1, 2, 16) * 4, rand(1, 1, 9, 16) * 4, rand(1, 1, 9, 16)
    y = Attention_23(Q, K, V, ctx=EXACT)[0]
    expected, _ = attention_twin(Q, K, V)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, expected.astype(np.float32))


def test_attention_errors():
    Q, K, V = rand(1, 2, 3, 4), rand(1, 2, 3, 4), rand(1, 2, 3, 4)
    with pytest.raises(ValueError, match="past_key and past_value must be given together"):
        Attention_23(Q, K, V, None, rand(1, 2, 1, 4))
    with pytest.raises(ValueError, match="3-D Q/K/V need the q_num_heads and kv_num_heads"):
        Attention_23(rand(1, 3, 8), rand(1, 3, 8), rand(1, 3, 8))
    with pytest.raises(ValueError, match="hidden size 8 is not divisible by num_heads=3"):
        Attention_23(rand(1, 3, 8), rand(1, 3, 8), rand(1, 3, 8), q_num_heads=3, kv_num_heads=1)
    with pytest.raises(
        ValueError, match=r"q_num_heads \(3\) must be a multiple of kv_num_heads \(2\)"
    ):
        Attention_23(rand(1, 3, 3, 4), K, V)
    with pytest.raises(ValueError, match="must all be 3-D or all 4-D"):
        Attention_23(rand(1, 3, 8), K, V)
    with pytest.raises(ValueError, match="must not be set for 4-D inputs"):
        Attention_25(Q, K, V, q_num_heads=2, kv_num_heads=2)
    with pytest.raises(ValueError, match="left_window_size must be -1"):
        Attention_25(Q, K, V, left_window_size=-2)
    with pytest.raises(ValueError, match=r"attn_mask's last dimension \(5\) exceeds"):
        Attention_23(Q, K, V, rand(3, 5))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(4, 3\) .* does not broadcast"):
        Attention_23(Q, K, V, rand(4, 3))
    with pytest.raises(ValueError, match="K and V sequence lengths differ"):
        Attention_23(Q, K, rand(1, 2, 4, 4))
    with pytest.raises(ExecutionError, match=r"Attention.*qk_matmul_output_mode must be"):
        run_node(
            "Attention", [("Q", Q), ("K", K), ("V", V)], {"qk_matmul_output_mode": 7}, n_outputs=1
        )


# ----------------------------------------------------------------------------------------------
# RotaryEmbedding
# ----------------------------------------------------------------------------------------------


def rotary_twin(x, cos, sin, rot, interleaved):
    """x (B, S, H, D); cos/sin (B, S, rot/2): rotate complex pairs by the cached angles."""
    x = x.astype(np.float64).copy()
    half = rot // 2
    if interleaved:
        re, im = x[..., 0:rot:2], x[..., 1:rot:2]
    else:
        re, im = x[..., :half], x[..., half:rot]
    z = (re + 1j * im) * (cos + 1j * sin)[:, :, None, :]
    if interleaved:
        x[..., 0:rot:2], x[..., 1:rot:2] = z.real, z.imag
    else:
        x[..., :half], x[..., half:rot] = z.real, z.imag
    return x


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("rot", [0, 4])
@pytest.mark.parametrize("with_positions", [True, False])
def test_rotary_embedding_matches_complex_rotation(interleaved, rot, with_positions):
    B, H, S, D = 2, 3, 5, 8
    r = rot or D
    x = rand(B, H, S, D)
    angles = RNG.uniform(0, 2 * np.pi, (11, r // 2))
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    pos = RNG.integers(0, 11, (B, S))
    if with_positions:
        inputs = [("x", x), ("c", cos), ("s", sin), ("p", pos)]
        cb, sb = cos[pos], sin[pos]
    else:
        cb, sb = cos[pos], sin[pos]
        inputs = [("x", x), ("c", cb), ("s", sb)]
    attrs = {"interleaved": interleaved, "rotary_embedding_dim": rot}
    y = run_node("RotaryEmbedding", inputs, attrs, opset=23)
    expected = rotary_twin(x.transpose(0, 2, 1, 3), cb, sb, r, interleaved).transpose(0, 2, 1, 3)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_rotary_embedding_3d_input_and_errors():
    B, S, H, D = 1, 4, 2, 6
    x = rand(B, S, H * D)
    angles = RNG.uniform(0, 6, (4, D // 2))
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    pos = np.arange(S)[None]
    y = RotaryEmbedding_23(x, cos, sin, pos, num_heads=H, ctx=EXACT)
    expected = rotary_twin(x.reshape(B, S, H, D), cos[pos], sin[pos], D, 0).reshape(x.shape)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="needs the num_heads attribute"):
        RotaryEmbedding_23(x, cos, sin, pos)
    with pytest.raises(ValueError, match=r"position_ids must lie in \[0, 4\)"):
        RotaryEmbedding_23(x, cos, sin, pos + 1, num_heads=H)
    with pytest.raises(ValueError, match="rotary_embedding_dim=3 must be even"):
        RotaryEmbedding_23(x, cos, sin, pos, num_heads=H, rotary_embedding_dim=3)
    with pytest.raises(ValueError, match="last dimension must be rotary_embedding_dim / 2 = 2"):
        RotaryEmbedding_23(x, cos, sin, pos, num_heads=H, rotary_embedding_dim=4)


# ----------------------------------------------------------------------------------------------
# LinearAttention
# ----------------------------------------------------------------------------------------------


def linear_attention_twin(q, k, v, decay=None, beta=None, state=None, *, Hq, Hkv, scale=None):
    """Per-head recurrence in float64 over 4-D views; decay is (B, Hkv, T, 1 or dk)."""
    q4 = q.reshape(q.shape[0], q.shape[1], Hq, -1).transpose(0, 2, 1, 3).astype(np.float64)
    k4 = k.reshape(k.shape[0], k.shape[1], Hkv, -1).transpose(0, 2, 1, 3).astype(np.float64)
    v4 = v.reshape(v.shape[0], v.shape[1], Hkv, -1).transpose(0, 2, 1, 3).astype(np.float64)
    B, _, T, dk = q4.shape
    dv = v4.shape[-1]
    S = np.zeros((B, Hkv, dk, dv)) if state is None else state.astype(np.float64).copy()
    scale = scale if scale else 1 / math.sqrt(dk)
    out = np.zeros((B, Hq, T, dv))
    for b in range(B):
        for t in range(T):
            for h in range(Hkv):
                if decay is not None:
                    S[b, h] *= (
                        np.exp(decay[b, h, t])[:, None]
                        if decay.shape[-1] > 1
                        else np.exp(decay[b, h, t, 0])
                    )
                vt = v4[b, h, t]
                if beta is not None:
                    vt = beta[b, min(h, beta.shape[1] - 1), t] * (vt - S[b, h].T @ k4[b, h, t])
                S[b, h] += np.outer(k4[b, h, t], vt)
            for hq in range(Hq):
                out[b, hq, t] = scale * q4[b, hq, t] @ S[b, hq // (Hq // Hkv)]
    return out.transpose(0, 2, 1, 3).reshape(B, T, -1), S


def test_linear_rule_is_unnormalized_causal_attention():
    B, T, H, d = 2, 5, 2, 4
    q, k, v = rand(B, T, H * d), rand(B, T, H * d), rand(B, T, H * d)
    y, state = run_node(
        "LinearAttention",
        [("q", q), ("k", k), ("v", v)],
        {"q_num_heads": H, "kv_num_heads": H, "update_rule": "linear"},
        opset=27,
        n_outputs=2,
    )
    q4 = q.reshape(B, T, H, d).astype(np.float64)
    k4 = k.reshape(B, T, H, d).astype(np.float64)
    v4 = v.reshape(B, T, H, d).astype(np.float64)
    scores = np.einsum("bthd,bshd->bhts", q4, k4) * np.tril(np.ones((T, T)))
    expected = np.einsum("bhts,bshd->bthd", scores, v4).reshape(B, T, H * d) / math.sqrt(d)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state, np.einsum("bthd,bthe->bhde", k4, v4), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("rule", "decay_last", "beta_last", "Hq", "Hkv"),
    [
        ("gated", "head", None, 2, 2),
        ("gated", "dim", None, 4, 2),
        ("delta", None, "head", 2, 2),
        ("gated_delta", "dim", "one", 4, 1),
        ("gated_delta", "head", "head", 6, 3),
    ],
)
def test_linear_attention_rules_match_twin(rule, decay_last, beta_last, Hq, Hkv):
    B, T, dk, dv = 2, 4, 3, 5
    q, k, v = rand(B, T, Hq * dk), rand(B, T, Hkv * dk), rand(B, T, Hkv * dv)
    k = k / np.linalg.norm(k.reshape(B, T, Hkv, dk), axis=-1).repeat(dk, axis=-1)
    past = rand(B, Hkv, dk, dv)
    decay = beta = None
    decay4 = beta4 = None
    if decay_last:
        width = Hkv if decay_last == "head" else Hkv * dk
        decay = -np.abs(rand(B, T, width))
        decay4 = decay.reshape(B, T, Hkv, -1).transpose(0, 2, 1, 3)
    if beta_last:
        width = Hkv if beta_last == "head" else 1
        beta = RNG.uniform(0.1, 0.9, (B, T, width)).astype(np.float32)
        beta4 = beta.reshape(B, T, width).transpose(0, 2, 1)
    y, state = LinearAttention_27(
        q, k, v, past, decay, beta, q_num_heads=Hq, kv_num_heads=Hkv, update_rule=rule, ctx=EXACT
    )
    ey, es = linear_attention_twin(q, k, v, decay4, beta4, past, Hq=Hq, Hkv=Hkv)
    assert y.dtype == np.float32 and y.shape == (B, T, Hq * dv) and state.shape == (B, Hkv, dk, dv)
    np.testing.assert_allclose(y, ey, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state, es, rtol=1e-5, atol=1e-6)


def test_linear_attention_streams_through_its_state():
    B, T, H, d = 1, 6, 2, 4
    q, k, v = rand(B, T, H * d), rand(B, T, H * d), rand(B, T, H * d)
    decay = -np.abs(rand(B, T, H))
    beta = RNG.uniform(0.1, 0.9, (B, T, H)).astype(np.float32)
    attrs = {"q_num_heads": H, "kv_num_heads": H, "scale": 0.7}
    y, s = LinearAttention_27(q, k, v, None, decay, beta, **attrs)
    y1, s1 = LinearAttention_27(
        q[:, :4], k[:, :4], v[:, :4], None, decay[:, :4], beta[:, :4], **attrs
    )
    y2, s2 = LinearAttention_27(
        q[:, 4:], k[:, 4:], v[:, 4:], s1, decay[:, 4:], beta[:, 4:], **attrs
    )
    np.testing.assert_allclose(np.concatenate([y1, y2], axis=1), y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s2, s, rtol=1e-5, atol=1e-6)


def test_linear_attention_fp16_and_errors():
    q = rand(1, 2, 8).astype(np.float16)
    y, s = LinearAttention_27(q, q, q, q_num_heads=2, kv_num_heads=2, update_rule="linear")
    assert y.dtype == np.float16 and s.dtype == np.float16
    s32 = np.zeros((1, 2, 4, 4), np.float32)
    _, s = LinearAttention_27(q, q, q, s32, q_num_heads=2, kv_num_heads=2, update_rule="linear")
    assert s.dtype == np.float32  # the state keeps its own dtype
    with pytest.raises(ValueError, match="update_rule 'gated' needs the decay input"):
        LinearAttention_27(q, q, q, q_num_heads=2, kv_num_heads=2, update_rule="gated")
    with pytest.raises(ValueError, match="update_rule 'linear' takes no beta input"):
        LinearAttention_27(
            q, q, q, None, None, q[..., :2], q_num_heads=2, kv_num_heads=2, update_rule="linear"
        )
    with pytest.raises(ValueError, match="update_rule must be"):
        LinearAttention_27(q, q, q, q_num_heads=2, kv_num_heads=2, update_rule="softmax")
    with pytest.raises(ValueError, match=r"q_num_heads \(3\) must be a positive multiple"):
        LinearAttention_27(q, q, q, q_num_heads=3, kv_num_heads=2, update_rule="linear")
    with pytest.raises(ValueError, match=r"past_state must have shape \(1, 2, 4, 4\)"):
        LinearAttention_27(q, q, q, s32[:, :1], q_num_heads=2, kv_num_heads=2, update_rule="linear")


# ----------------------------------------------------------------------------------------------
# CausalConvWithState
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("L", "k"), [(8, 4), (2, 5), (6, 1), (1, 3)])
@pytest.mark.parametrize("activation", ["none", "silu"])
def test_causal_conv_matches_np_convolve(L, k, activation):
    B, C = 2, 3
    x, w, b = rand(B, C, L), rand(C, 1, k), rand(C)
    past = rand(B, C, k - 1)
    y, state = run_node(
        "CausalConvWithState",
        [("x", x), ("w", w), ("b", b), ("p", past)],
        {"activation": activation},
        opset=27,
        n_outputs=2,
    )
    padded = np.concatenate([past, x], axis=2).astype(np.float64)
    expected = np.empty((B, C, L))
    for bi in range(B):
        for c in range(C):
            # np.convolve flips the kernel: correlate with w by convolving with its reverse.
            expected[bi, c] = np.convolve(padded[bi, c], w[c, 0, ::-1], mode="valid") + b[c]
    if activation == "silu":
        expected = expected / (1 + np.exp(-expected))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(state, padded[:, :, L:].astype(np.float32))


def test_causal_conv_streams_and_errors():
    x, w = rand(1, 2, 9), rand(2, 1, 3)
    y, s = CausalConvWithState_27(x, w)
    y1, s1 = CausalConvWithState_27(x[:, :, :4], w)
    y2, s2 = CausalConvWithState_27(x[:, :, 4:], w, None, s1)
    np.testing.assert_allclose(np.concatenate([y1, y2], axis=2), y, rtol=1e-6)
    np.testing.assert_array_equal(s2, s)
    assert CausalConvWithState_27(x.astype(np.float16), w.astype(np.float16))[0].dtype == np.float16
    with pytest.raises(ValueError, match=r"weight must have shape \(2, 1, k\)"):
        CausalConvWithState_27(x, rand(3, 1, 3))
    with pytest.raises(ValueError, match=r"past_state must have shape \(1, 2, 2\)"):
        CausalConvWithState_27(x, w, None, rand(1, 2, 3))
    with pytest.raises(ValueError, match="activation must be"):
        CausalConvWithState_27(x, w, activation="relu")


# ----------------------------------------------------------------------------------------------
# FlexAttention (ai.onnx.preview)
# ----------------------------------------------------------------------------------------------

PREVIEW = "ai.onnx.preview"


def flex_twin(Q, K, V, *, scale=None, score_mod=None, prob_mod=None):
    """Per query head, in float64: softmax(mod(q @ k^T * scale)) -> mod -> @ v."""
    Q, K, V = (a.astype(np.float64) for a in (Q, K, V))
    B, Hq, _, E = Q.shape
    G = Hq // K.shape[1]
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    scores = np.stack(
        [np.stack([Q[b, h] @ K[b, h // G].T * scale for h in range(Hq)]) for b in range(B)]
    )
    if score_mod is not None:
        scores = score_mod(scores)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)
    if prob_mod is not None:
        probs = prob_mod(probs)
    return np.stack([np.stack([probs[b, h] @ V[b, h // G] for h in range(Hq)]) for b in range(B)])


def mod_graph(name, nodes, initializers=(), dtype=TensorProto.FLOAT):
    """A one-input, one-output modifier subgraph: x -> ... -> out."""
    return helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", dtype, None)],
        [helper.make_tensor_value_info("out", dtype, None)],
        list(initializers),
    )


def causal_score_mod(dtype=TensorProto.FLOAT):
    """Where(q_idx >= k_idx, x, -inf), the indices built from x's own shape."""
    return mod_graph(
        "causal",
        [
            helper.make_node("Shape", ["x"], ["L"], start=2, end=3),
            helper.make_node("Shape", ["x"], ["S"], start=3, end=4),
            helper.make_node("Squeeze", ["L"], ["Ls"]),
            helper.make_node("Squeeze", ["S"], ["Ss"]),
            helper.make_node("Range", ["zero", "Ls", "one"], ["qr"]),
            helper.make_node("Range", ["zero", "Ss", "one"], ["kr"]),
            helper.make_node("Unsqueeze", ["qr", "ax1"], ["q"]),
            helper.make_node("GreaterOrEqual", ["q", "kr"], ["mask"]),
            helper.make_node("Where", ["mask", "x", "ninf"], ["out"]),
        ],
        [
            helper.make_tensor("zero", TensorProto.INT64, [], [0]),
            helper.make_tensor("one", TensorProto.INT64, [], [1]),
            helper.make_tensor("ax1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("ninf", dtype, [], [-np.inf]),
        ],
        dtype,
    )


def run_flex(Q, K, V, attrs=None, *, extra_inputs=(), exact=False):
    """One FlexAttention node through ember.load (opset 26 + ai.onnx.preview 1)."""
    feeds = {"Q": Q, "K": K, "V": V, **dict(extra_inputs)}
    node = helper.make_node(
        "FlexAttention", ["Q", "K", "V"], ["Y"], domain=PREVIEW, **(attrs or {})
    )
    vi = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in feeds.items()
    ]
    graph = helper.make_graph(
        [node], "g", vi, [helper.make_tensor_value_info("Y", TensorProto.UNDEFINED, None)]
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 26), helper.make_opsetid(PREVIEW, 1)]
    )
    return ember.load(model, exact=exact).run(feeds)["Y"]


class FakeModifier:
    """Stands in for a Subgraph: records every call and applies `fn`."""

    def __init__(self, fn, dtype=None, n_inputs=1):
        from types import SimpleNamespace

        self.fn, self.n_inputs, self.seen = fn, n_inputs, []
        value = SimpleNamespace(dtype=dtype)
        self.plan = SimpleNamespace(graph=SimpleNamespace(inputs=[value]))

    def __call__(self, *inputs):
        self.seen.append(inputs[0])
        return [self.fn(inputs[0])]


@pytest.mark.parametrize(
    ("B", "Hq", "Hkv", "L", "S", "E", "Ev"),
    [(1, 1, 1, 1, 1, 1, 1), (2, 6, 2, 5, 7, 3, 5), (1, 4, 1, 3, 9, 8, 2), (3, 3, 3, 4, 4, 6, 6)],
)
def test_flex_attention_matches_twin(B, Hq, Hkv, L, S, E, Ev):
    Q, K, V = rand(B, Hq, L, E), rand(B, Hkv, S, E), rand(B, Hkv, S, Ev)
    y = run_flex(Q, K, V)
    assert y.shape == (B, Hq, L, Ev) and y.dtype == np.float32
    np.testing.assert_allclose(y, flex_twin(Q, K, V), rtol=1e-5, atol=1e-6)


def test_flex_attention_scale_score_mod_and_prob_mod():
    Q, K, V = rand(2, 4, 5, 8), rand(2, 2, 6, 8), rand(2, 2, 6, 3)
    causal = np.tril(np.ones((5, 6), dtype=bool))
    attrs = {
        "scale": 0.3,
        "score_mod": causal_score_mod(),
        "prob_mod": mod_graph(
            "half",
            [helper.make_node("Mul", ["x", "h"], ["out"])],
            [helper.make_tensor("h", TensorProto.FLOAT, [], [0.5])],
        ),
    }
    y = run_flex(Q, K, V, attrs)
    expected = flex_twin(
        Q,
        K,
        V,
        scale=0.3,
        score_mod=lambda s: np.where(causal, s, -np.inf),
        prob_mod=lambda p: p * 0.5,
    )
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_flex_attention_score_mod_reads_the_outer_scope():
    Q, K, V = rand(1, 2, 3, 4), rand(1, 2, 5, 4), rand(1, 2, 5, 4)
    bias = rand(1, 1, 3, 5)
    score_mod = mod_graph("bias", [helper.make_node("Add", ["x", "bias"], ["out"])])
    y = run_flex(Q, K, V, {"score_mod": score_mod}, extra_inputs=[("bias", bias)])
    expected = flex_twin(Q, K, V, score_mod=lambda s: s + bias)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_flex_attention_calls_each_modifier_once_on_the_whole_tensor():
    from ember.ops.attention import FlexAttention

    Q, K, V = rand(2, 4, 3, 8), rand(2, 2, 5, 8), rand(2, 2, 5, 8)
    score_mod = FakeModifier(lambda s: s * 2.0)
    prob_mod = FakeModifier(lambda p: p)
    FlexAttention(Q, K, V, score_mod=score_mod, prob_mod=prob_mod)
    assert len(score_mod.seen) == 1 and len(prob_mod.seen) == 1
    assert score_mod.seen[0].shape == (2, 4, 3, 5) and score_mod.seen[0].dtype == np.float32
    np.testing.assert_allclose(prob_mod.seen[0].sum(axis=-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float64])
def test_flex_attention_dtypes_and_softmax_precision(dtype):
    from ember.ops.attention import FlexAttention

    Q, K, V = (
        rand(1, 2, 4, 8, dtype=dtype),
        rand(1, 1, 6, 8, dtype=dtype),
        rand(1, 1, 6, 8, dtype=dtype),
    )
    y = FlexAttention(Q, K, V)
    assert y.dtype == np.dtype(dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-2
    np.testing.assert_allclose(y.astype(np.float64), flex_twin(Q, K, V), rtol=tol, atol=tol)
    # The modifiers see the softmax precision: float32 for half inputs, double for double ones,
    # or whatever softmax_precision says.
    seen = FakeModifier(lambda s: s)
    FlexAttention(Q, K, V, score_mod=seen)
    assert seen.seen[0].dtype == (np.float64 if dtype == np.float64 else np.float32)
    seen = FakeModifier(lambda s: s)
    FlexAttention(Q, K, V, score_mod=seen, softmax_precision=int(TensorProto.DOUBLE))
    assert seen.seen[0].dtype == np.float64


def test_flex_attention_exact_mode_is_float64_inside():
    from ember.ops.attention import FlexAttention

    Q, K, V = rand(1, 2, 3, 16) * 4, rand(1, 2, 9, 16) * 4, rand(1, 2, 9, 16)
    y = FlexAttention(Q, K, V, ctx=EXACT)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, flex_twin(Q, K, V).astype(np.float32), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        run_flex(Q, K, V, exact=True), flex_twin(Q, K, V), rtol=1e-6, atol=1e-7
    )


def test_flex_attention_fully_masked_row_is_nan_like_onnx_softmax():
    mask_all = mod_graph(
        "mask_all",
        [
            helper.make_node("Mul", ["x", "zero"], ["z"]),
            helper.make_node("Add", ["z", "ninf"], ["out"]),
        ],
        [
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("ninf", TensorProto.FLOAT, [], [-np.inf]),
        ],
    )
    y = run_flex(rand(1, 1, 2, 4), rand(1, 1, 3, 4), rand(1, 1, 3, 4), {"score_mod": mask_all})
    assert np.isnan(y).all()


def test_flex_attention_errors():
    from ember.ops.attention import FlexAttention

    Q, K, V = rand(1, 2, 3, 4), rand(1, 2, 5, 4), rand(1, 2, 5, 4)
    with pytest.raises(ValueError, match=r"rank-4 \(B, H, S, D\) inputs; K is \(2, 5, 4\)"):
        FlexAttention(Q, K[0], V)
    with pytest.raises(ValueError, match="Q's 3 heads must be a multiple of K/V's 2 heads"):
        FlexAttention(rand(1, 3, 3, 4), K, V)
    with pytest.raises(ValueError, match="must share the head size"):
        FlexAttention(Q, rand(1, 2, 5, 3), V)
    with pytest.raises(ValueError, match="must share heads and sequence length"):
        FlexAttention(Q, K, rand(1, 2, 4, 4))
    with pytest.raises(ValueError, match="must share the batch size"):
        FlexAttention(Q, rand(2, 2, 5, 4), rand(2, 2, 5, 4))
    with pytest.raises(ValueError, match="softmax_precision must be FLOAT"):
        FlexAttention(Q, K, V, softmax_precision=7)
    with pytest.raises(TypeError, match="expected a float16, bfloat16, float32 or float64"):
        FlexAttention(Q.astype(np.int32), K, V)
    with pytest.raises(ValueError, match=r"score_mod must keep the shape \(1, 2, 3, 5\)"):
        FlexAttention(Q, K, V, score_mod=FakeModifier(lambda s: s[..., :2]))
    with pytest.raises(ValueError, match="prob_mod must take exactly 1 input"):
        FlexAttention(Q, K, V, prob_mod=FakeModifier(lambda s: s, n_inputs=2))
    with pytest.raises(
        ExecutionError, match="score_mod declares a FLOAT input, but the scores are float64"
    ):
        run_flex(
            Q, K, V, {"score_mod": causal_score_mod(), "softmax_precision": TensorProto.DOUBLE}
        )
