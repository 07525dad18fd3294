"""The ai.ember fused ops mean exactly the ONNX subgraphs they replace."""

from __future__ import annotations

import numpy as np
import pytest

from ember.ops import activation as act
from ember.ops import conv, fused, linalg, norm, pool
from ember.ops.registry import EMBER_DOMAIN, lookup

rng = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def test_every_fused_op_is_registered_in_the_ember_domain() -> None:
    names = fused.fused_ops()
    for name in ["FusedConv", "FusedGemm", "FusedMatMul", "LayerNorm", "MultiHeadAttention"]:
        assert name in names
        assert lookup(name, EMBER_DOMAIN, 1).domain == EMBER_DOMAIN


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("Relu", (), lambda x: act.Relu_6(x)),
        ("LeakyRelu", (0.1,), lambda x: act.LeakyRelu_6(x, alpha=0.1)),
        ("Clip", (0.0, 6.0), lambda x: np.clip(x, 0, 6)),
        ("HardSigmoid", (0.3, 0.4), lambda x: act.HardSigmoid_6(x, alpha=0.3, beta=0.4)),
        ("HardSwish", (), lambda x: act.HardSwish_14(x)),
        ("Gelu", (), lambda x: act.Gelu_20(x)),
        ("GeluTanh", (), lambda x: act.Gelu_20(x, approximate="tanh")),
        ("Elu", (0.5,), lambda x: act.Elu_6(x, alpha=0.5)),
        ("", (), lambda x: x),
    ],
)
def test_activations_are_the_onnx_ops(name, params, expected) -> None:
    x = rand(3, 7) * 4
    np.testing.assert_allclose(fused.apply_activation(x, name, params), expected(x), rtol=1e-6)


def test_bad_activation_names_and_params_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fused activation 'Swish'"):
        fused.apply_activation(rand(2), "Swish", ())
    with pytest.raises(ValueError, match=r"LeakyRelu takes 1 activation_params, got \[\]"):
        fused.apply_activation(rand(2), "LeakyRelu", ())


@pytest.mark.parametrize("channels_last", [0, 1])
def test_fused_conv_is_conv_plus_residual_plus_activation(channels_last) -> None:
    x, w, b = rand(2, 5, 9, 7), rand(6, 5, 3, 3), rand(6)
    attrs = dict(pads=[1, 0, 1, 2], strides=[2, 1])
    ref = conv.Conv(x, w, b, **attrs)
    z = rand(*ref.shape)
    want = np.maximum(ref + z, 0)
    if channels_last:
        got = fused.FusedConv(nhwc(x), w, b, nhwc(z), activation="Relu", channels_last=1, **attrs)
        want = nhwc(want)
    else:
        got = fused.FusedConv(x, w, b, z, activation="Relu", **attrs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fused_conv_refuses_a_residual_of_another_shape() -> None:
    with pytest.raises(ValueError, match="Z has shape"):
        fused.FusedConv(rand(1, 2, 4, 4), rand(3, 2, 1, 1), None, rand(1, 3, 4, 5))


def test_fused_gemm_and_matmul() -> None:
    a, b, c = rand(4, 6), rand(5, 6), rand(5)
    got = fused.FusedGemm(a, b, c, transB=1, alpha=0.5, activation="Relu")
    np.testing.assert_allclose(got, np.maximum(0.5 * a @ b.T + c, 0), rtol=1e-5, atol=1e-6)
    a3, w = rand(2, 3, 6), rand(6, 5)
    got = fused.FusedMatMul(a3, w, c, activation="Gelu")
    np.testing.assert_allclose(got, act.Gelu_20(linalg.MatMul(a3, w) + c), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        fused.FusedMatMul(a3, w, rand(4))


def test_channels_last_pools_match_nchw_pools() -> None:
    x = rand(2, 3, 9, 8)
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    np.testing.assert_array_equal(
        fused.MaxPool(nhwc(x), channels_last=1, **attrs), nhwc(pool.MaxPool_10(x, **attrs))
    )
    np.testing.assert_allclose(
        fused.AveragePool(nhwc(x), channels_last=1, **attrs),
        nhwc(pool.AveragePool_19(x, **attrs)),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        fused.GlobalAveragePool(nhwc(x), channels_last=1),
        nhwc(pool.GlobalAveragePool(x)),
        rtol=1e-6,
    )


def test_layer_norm_and_gelu_are_the_onnx_ops() -> None:
    x, s, b = rand(2, 3, 8), rand(8), rand(8)
    want = norm.LayerNormalization_17(x, s, b, epsilon=1e-6)[0]
    np.testing.assert_array_equal(fused.LayerNorm(x, s, b, epsilon=1e-6), want)
    np.testing.assert_array_equal(
        fused.Gelu(x, approximate="tanh"), act.Gelu_20(x, approximate="tanh")
    )


def test_multi_head_attention_is_per_head_softmax_attention() -> None:
    B, S, H, D = 2, 5, 3, 4
    q, k, v = rand(B, S, H * D), rand(B, S + 1, H * D), rand(B, S + 1, H * 2)
    mask = np.where(rng.random((B, 1, 1, S + 1)) < 0.3, -1e4, 0).astype(np.float32)
    got = fused.MultiHeadAttention(q, k, v, mask, num_heads=H)
    assert got.shape == (B, S, H * 2)
    for h in range(H):
        qh, kh, vh = (
            q[..., h * D : (h + 1) * D],
            k[..., h * D : (h + 1) * D],
            v[..., h * 2 : h * 2 + 2],
        )
        scores = qh @ kh.transpose(0, 2, 1) / np.sqrt(D) + mask[:, 0]
        p = act.Softmax_13(scores)
        np.testing.assert_allclose(got[..., h * 2 : h * 2 + 2], p @ vh, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_heads=5 must divide"):
        fused.MultiHeadAttention(q, k, v, num_heads=5)
