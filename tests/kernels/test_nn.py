"""Native transformer kernels (ember.kernels.cpu.nn) against ember's NumPy reference ops, on every
code path this CPU has (scalar, AVX2, AVX-512), odd shapes, strided inputs and extreme values."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ember.kernels import cpu
from ember.kernels.cpu import nn
from ember.ops.activation import Gelu_20, Softmax_13
from ember.ops.fused import MultiHeadAttention
from ember.ops.norm import LayerNormalization_17


def _isas() -> list[str]:
    info = cpu.cpu_info()
    isas = ["scalar"]
    if info["avx2"] and info["fma"]:
        isas.append("avx2")
    if info["avx512f"] and info["fma"]:
        isas.append("avx512")
    return isas


ISAS = _isas()
LAST_AXES = [1, 3, 15, 17, 31, 33, 384, 1000]
LEADING = [(), (1,), (3,), (2, 5)]


@contextmanager
def forced(isa: str) -> Iterator[None]:
    nn.set_isa(isa)  # type: ignore[arg-type]
    try:
        assert nn.isa() == isa
        yield
    finally:
        nn.set_isa("auto")


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    with forced(request.param):
        yield request.param


def randn(shape: tuple[int, ...], seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# --- ISA switch ----------------------------------------------------------------------------------


def test_isa_switch() -> None:
    assert nn.isa() == ISAS[-1]  # auto = the best path this CPU has
    for name in ISAS:
        with forced(name):
            pass
    assert nn.isa() == ISAS[-1]
    with pytest.raises(
        ValueError, match="expected 'auto', 'avx512', 'avx2' or 'scalar', got 'sse'"
    ):
        nn.set_isa("sse")  # type: ignore[arg-type]


# --- softmax -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", LAST_AXES)
@pytest.mark.parametrize("lead", LEADING)
def test_softmax_shapes(isa: str, lead: tuple[int, ...], n: int) -> None:
    x = randn((*lead, n), seed=n, scale=3.0)
    np.testing.assert_allclose(nn.softmax(x), Softmax_13(x), rtol=1e-5, atol=1e-7)


def test_softmax_extremes(isa: str) -> None:
    inf = np.inf
    x = np.array(
        [
            [1e30, -1e30, 0.0, 1e30, 5.0],
            [1000.0, 1000.0, -inf, 999.0, 0.0],
            [-inf, -inf, -inf, -inf, -inf],  # all masked: nan, as the reference's 0/0
            [-1e38, -3e38, -inf, -1e38, -2e38],
            [inf, 1.0, 2.0, -inf, 0.0],  # +inf: nan where it is, 0 elsewhere (reference)
            [np.nan, 1.0, 2.0, 3.0, 4.0],  # a nan poisons its row
            [-100.0, 0.0, -200.0, -87.0, -104.0],  # exp underflows to denormals / 0
        ],
        np.float32,
    )
    with np.errstate(invalid="ignore", over="ignore"):
        ref = Softmax_13(x)
    got = nn.softmax(x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    assert np.isnan(got[2]).all() and np.isnan(got[5]).all()


def test_softmax_out_in_place_and_strided(isa: str) -> None:
    x = randn((40, 66), seed=1)
    view = x[::3, 1::2]  # strided in both axes
    np.testing.assert_allclose(nn.softmax(view), Softmax_13(view), rtol=1e-5, atol=1e-7)
    out = np.full((40, 66), np.nan, np.float32)
    assert nn.softmax(x, out=out) is out
    np.testing.assert_allclose(out, Softmax_13(x), rtol=1e-5, atol=1e-7)
    y = x.copy()
    nn.softmax(y, out=y)  # in place
    np.testing.assert_allclose(y, Softmax_13(x), rtol=1e-5, atol=1e-7)


def test_softmax_parallel_rows(isa: str) -> None:
    x = randn((4, 12, 128, 128), seed=2, scale=4.0)  # big enough to split over threads
    np.testing.assert_allclose(nn.softmax(x), Softmax_13(x), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("isa_name", ISAS)
@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=40),
        elements=st.floats(-1e4, 1e4, width=32),
    )
)
def test_softmax_matches_reference(isa_name: str, x: np.ndarray) -> None:
    with forced(isa_name):
        np.testing.assert_allclose(nn.softmax(x), Softmax_13(x), rtol=1e-5, atol=1e-7)


def test_softmax_empty_and_bad_inputs() -> None:
    assert nn.softmax(np.zeros((3, 0), np.float32)).shape == (3, 0)
    assert nn.softmax(np.zeros((0, 5), np.float32)).shape == (0, 5)
    with pytest.raises(TypeError, match="softmax takes float32 x, got float64"):
        nn.softmax(np.zeros(3))
    with pytest.raises(ValueError, match=r"rank >= 1, got a scalar"):
        nn.softmax(np.ones((), np.float32))
    with pytest.raises(
        ValueError, match=r"out must be a C-contiguous float32 array of shape \(2, 3\)"
    ):
        nn.softmax(np.zeros((2, 3), np.float32), out=np.zeros((3, 2), np.float32))


# --- LayerNorm -----------------------------------------------------------------------------------


def layer_norm_ref(x, scale, bias, epsilon):
    return LayerNormalization_17(x, scale, bias, axis=-1, epsilon=epsilon)[0]


@pytest.mark.parametrize("n", LAST_AXES)
@pytest.mark.parametrize("lead", LEADING)
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm_shapes(isa: str, lead: tuple[int, ...], n: int, with_bias: bool) -> None:
    x = randn((*lead, n), seed=n, scale=2.0) + 0.5
    scale = randn((n,), seed=n + 1)
    bias = randn((n,), seed=n + 2) if with_bias else None
    got = nn.layer_norm(x, scale, bias, epsilon=1e-5)
    np.testing.assert_allclose(got, layer_norm_ref(x, scale, bias, 1e-5), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("offset", [1e2, 1e4, 1e6])
def test_layer_norm_far_from_zero(isa: str, offset: float) -> None:
    # Rows with a large mean and a small spread: a plain float32 mean loses digits, and a one-pass
    # E[x^2] - E[x]^2 loses everything. The kernel stays within float64 statistics' rounding.
    x = (offset + randn((8, 384), seed=3)).astype(np.float32)
    scale, bias = randn((384,), seed=4), randn((384,), seed=5)
    exact = layer_norm_ref(x.astype(np.float64), scale, bias, 1e-5)
    np.testing.assert_allclose(nn.layer_norm(x, scale, bias), exact, rtol=1e-5, atol=5e-6)


def test_layer_norm_constant_rows(isa: str) -> None:
    x = np.full((3, 33), 7.25, np.float32)
    scale, bias = randn((33,), seed=6), randn((33,), seed=7)
    got = nn.layer_norm(x, scale, bias, epsilon=1e-3)
    np.testing.assert_allclose(got, layer_norm_ref(x, scale, bias, 1e-3), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, np.broadcast_to(bias, x.shape), atol=1e-5)


def test_layer_norm_out_and_strided(isa: str) -> None:
    x = randn((30, 100), seed=8)
    view = x[::2, ::2]
    scale, bias = randn((50,), seed=9), randn((50,), seed=10)
    ref = layer_norm_ref(view, scale, bias, 1e-5)
    np.testing.assert_allclose(nn.layer_norm(view, scale, bias), ref, rtol=1e-5, atol=2e-5)
    out = np.empty((15, 50), np.float32)
    assert nn.layer_norm(view, scale, bias, out=out) is out
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-5)
    y = np.ascontiguousarray(view)
    nn.layer_norm(y, scale[::-1], bias, out=y)  # in place, reversed (strided) scale
    np.testing.assert_allclose(
        y, layer_norm_ref(view, scale[::-1], bias, 1e-5), rtol=1e-5, atol=2e-5
    )


def test_layer_norm_parallel_rows(isa: str) -> None:
    x = randn((8, 128, 384), seed=11)
    scale, bias = randn((384,), seed=12), randn((384,), seed=13)
    got = nn.layer_norm(x, scale, bias, epsilon=1e-12)
    np.testing.assert_allclose(got, layer_norm_ref(x, scale, bias, 1e-12), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("isa_name", ISAS)
@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=40),
        elements=st.floats(-1e3, 1e3, width=32),
    )
)
def test_layer_norm_matches_reference(isa_name: str, x: np.ndarray) -> None:
    n = x.shape[-1]
    scale = np.linspace(-2, 2, n, dtype=np.float32)
    bias = np.linspace(1, -1, n, dtype=np.float32)
    exact = layer_norm_ref(x.astype(np.float64), scale, bias, 1e-5)
    with forced(isa_name):
        np.testing.assert_allclose(nn.layer_norm(x, scale, bias), exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 17, 384])
def test_add_layer_norm(isa: str, n: int) -> None:
    x, r = randn((2, 7, n), seed=14), randn((2, 7, n), seed=15)
    scale, bias = randn((n,), seed=16), randn((n,), seed=17)
    s, y = nn.add_layer_norm(x, r, scale, bias, epsilon=1e-6)
    np.testing.assert_array_equal(s, x + r)
    np.testing.assert_allclose(y, layer_norm_ref(x + r, scale, bias, 1e-6), rtol=1e-5, atol=2e-5)
    s2, y2 = np.empty_like(x), np.empty_like(x)
    got = nn.add_layer_norm(x, r, scale, None, epsilon=1e-6, out=y2, sum_out=s2)
    assert got[0] is s2 and got[1] is y2
    np.testing.assert_allclose(y2, layer_norm_ref(x + r, scale, None, 1e-6), rtol=1e-5, atol=2e-5)


def test_layer_norm_bad_inputs() -> None:
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(
        ValueError, match=r"scale has shape \(4,\), expected \(3,\) \(the last axis of x \(2, 3\)\)"
    ):
        nn.layer_norm(x, np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"bias has shape \(1, 3\), expected \(3,\)"):
        nn.layer_norm(x, np.ones(3, np.float32), np.ones((1, 3), np.float32))
    with pytest.raises(
        ValueError, match=r"add_layer_norm: residual has shape \(2, 4\), expected \(2, 3\)"
    ):
        nn.add_layer_norm(x, np.zeros((2, 4), np.float32), np.ones(3, np.float32))
    with pytest.raises(TypeError, match="layer_norm takes float32 scale, got float64"):
        nn.layer_norm(x, np.ones(3))


# --- GELU ----------------------------------------------------------------------------------------


def gelu_ref(x: np.ndarray, approximate: str) -> np.ndarray:
    """Gelu_20 in float64, rounded once. The tanh form is written x / (1 + exp(-2u)), which is
    0.5 x (1 + tanh(u)) without the cancellation of 1 + tanh(u) for x << 0 (in float64 too)."""
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if approximate == "tanh":
            u = math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)
            stable = x64 / (1 + np.exp(-2 * u))
            np.testing.assert_allclose(stable, Gelu_20(x64, approximate="tanh"), atol=1e-12)
            return stable.astype(np.float32)
        return Gelu_20(x64).astype(np.float32)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("n", LAST_AXES)
def test_gelu_shapes(isa: str, approximate: str, n: int) -> None:
    for lead in LEADING:
        x = randn((*lead, n), seed=n, scale=3.0)
        got = nn.gelu(x, approximate=approximate)
        np.testing.assert_allclose(got, gelu_ref(x, approximate), rtol=1e-5, atol=1e-7)
        # and the float32 reference op as it is, to its own rounding
        np.testing.assert_allclose(got, Gelu_20(x, approximate=approximate), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_range_and_extremes(isa: str, approximate: str) -> None:
    # Every branch of the erf/erfc evaluation (|x/sqrt2| <= 1, < 8, >= 8), their borders, the
    # far tails where the result is denormal or 0, and inf / nan.
    edges = np.array([math.sqrt(2), 8 * math.sqrt(2), 20.0], np.float32)
    near = np.concatenate([edges, np.nextafter(edges, 0), np.nextafter(edges, np.inf)])
    x = np.concatenate(
        [
            np.linspace(-16, 16, 4001, dtype=np.float32),
            near,
            -near,
            np.array([0.0, -0.0, 1e-30, -1e-30, 1e-45, 1e30, -1e30, 3e38, -3e38], np.float32),
            np.array([np.inf, -np.inf, np.nan], np.float32),
        ]
    )
    got = nn.gelu(x, approximate=approximate)
    np.testing.assert_allclose(got, gelu_ref(x, approximate), rtol=1e-5, atol=1e-25)


@pytest.mark.parametrize("isa_name", ISAS)
@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=40),
        elements=st.floats(-30, 30, width=32),
    ),
    approximate=st.sampled_from(["none", "tanh"]),
)
def test_gelu_matches_reference(isa_name: str, x: np.ndarray, approximate: str) -> None:
    with forced(isa_name):
        got = nn.gelu(x, approximate=approximate)
    np.testing.assert_allclose(got, gelu_ref(x, approximate), rtol=1e-5, atol=1e-25)


def test_gelu_out_strided_and_parallel(isa: str) -> None:
    x = randn((64, 3000), seed=18, scale=2.0)  # big enough to split over threads
    view = x[:, 1::2]
    np.testing.assert_allclose(nn.gelu(view), gelu_ref(view, "none"), rtol=1e-5, atol=1e-7)
    out = np.empty_like(x)
    assert nn.gelu(x, out=out) is out
    np.testing.assert_allclose(out, gelu_ref(x, "none"), rtol=1e-5, atol=1e-7)
    nn.gelu(x, approximate="tanh", out=x)  # in place
    np.testing.assert_allclose(
        x, gelu_ref(randn((64, 3000), seed=18, scale=2.0), "tanh"), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(1,), (5, 3), (2, 3, 17), (4, 1000), (128, 1536)])
def test_bias_gelu(isa: str, approximate: str, shape: tuple[int, ...]) -> None:
    x, b = randn(shape, seed=19), randn(shape[-1:], seed=20)
    got = nn.bias_gelu(x, b, approximate=approximate)
    np.testing.assert_allclose(got, gelu_ref(x + b, approximate), rtol=1e-5, atol=1e-7)


def test_gelu_bad_inputs() -> None:
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh', got 'fast'"):
        nn.gelu(x, approximate="fast")
    with pytest.raises(ValueError, match=r"bias_gelu: bias has shape \(2,\), expected \(3,\)"):
        nn.bias_gelu(x, np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="gelu takes float32 x, got float16"):
        nn.gelu(x.astype(np.float16))


# --- attention -----------------------------------------------------------------------------------

# (B, Sq, Sk, H, D, Dv)
ATTENTION_SHAPES = [
    (1, 1, 1, 1, 1, 1),
    (2, 7, 33, 3, 5, 7),
    (1, 128, 128, 12, 32, 32),
    (3, 17, 50, 2, 64, 80),
    (2, 30, 129, 4, 16, 17),
    (1, 25, 9, 2, 128, 3),
]


def qkv(B, Sq, Sk, H, D, Dv, seed=0):
    return (
        randn((B, Sq, H * D), seed),
        randn((B, Sk, H * D), seed + 1),
        randn((B, Sk, H * Dv), seed + 2),
    )


def mask_shapes(B, H, Sq, Sk):
    return [
        None,
        (B, 1, 1, Sk),
        (B, 1, Sq, Sk),
        (1, 1, Sq, Sk),
        (B, H, Sq, Sk),
        (Sq, Sk),
        (Sk,),
        (B, H, Sq, 1),
    ]


@pytest.mark.parametrize("dims", ATTENTION_SHAPES, ids=str)
def test_attention_shapes_and_masks(isa: str, dims) -> None:
    B, Sq, Sk, H, _, _ = dims
    q, k, v = qkv(*dims)
    for i, mshape in enumerate(mask_shapes(B, H, Sq, Sk)):
        mask = None if mshape is None else randn(mshape, seed=i, scale=2.0)
        got = nn.attention(q, k, v, mask, num_heads=H)
        ref = MultiHeadAttention(q, k, v, mask, num_heads=H)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=f"mask {mshape}")


def test_attention_scale_and_big_batch(isa: str) -> None:
    q, k, v = qkv(8, 128, 128, 12, 32, 32, seed=3)
    mask = np.where(np.random.default_rng(4).random((8, 1, 1, 128)) < 0.2, -1e4, 0).astype(
        np.float32
    )
    got = nn.attention(q, k, v, mask, num_heads=12, scale=0.3)
    ref = MultiHeadAttention(q, k, v, mask, num_heads=12, scale=0.3)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_attention_inf_mask_and_all_masked_rows(isa: str) -> None:
    B, Sq, Sk, H, D = 2, 5, 19, 2, 8
    q, k, v = qkv(B, Sq, Sk, H, D, D, seed=5)
    mask = np.zeros((B, 1, Sq, Sk), np.float32)
    mask[:, :, :, ::3] = -np.inf  # -inf entries: weight exactly 0
    mask[1, 0, 2, :] = -np.inf  # a row with every key masked: nan, as the reference
    got = nn.attention(q, k, v, mask, num_heads=H)
    with np.errstate(invalid="ignore"):
        ref = MultiHeadAttention(q, k, v, mask, num_heads=H)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert np.isnan(got[1, 2]).all() and not np.isnan(np.delete(got[1], 2, axis=0)).any()
    # large finite scores do not overflow
    big = nn.attention(q * 1e3, k * 1e3, v, None, num_heads=H)
    np.testing.assert_allclose(
        big, MultiHeadAttention(q * 1e3, k * 1e3, v, num_heads=H), rtol=1e-5, atol=1e-5
    )


def test_attention_strided_views(isa: str) -> None:
    # q, k and v sliced out of one packed QKV projection [B, S, 3*H*D]: read in place.
    B, S, H, D = 2, 21, 3, 16
    packed = randn((B, S, 3 * H * D), seed=6)
    q, k, v = packed[..., : H * D], packed[..., H * D : 2 * H * D], packed[..., 2 * H * D :]
    mask = randn((B, 1, 1, S), seed=7)
    ref = MultiHeadAttention(*(np.ascontiguousarray(t) for t in (q, k, v)), mask, num_heads=H)
    np.testing.assert_allclose(nn.attention(q, k, v, mask, num_heads=H), ref, rtol=1e-5, atol=1e-6)
    # every other sequence position (a step along S) and a transposed copy (a last axis that
    # is not contiguous: the wrapper copies it)
    qs, ks, vs = (t[:, ::2] for t in (q, k, v))
    ref = MultiHeadAttention(*(np.ascontiguousarray(t) for t in (qs, ks, vs)), num_heads=H)
    np.testing.assert_allclose(nn.attention(qs, ks, vs, num_heads=H), ref, rtol=1e-5, atol=1e-6)
    qt = np.ascontiguousarray(q.transpose(0, 2, 1)).transpose(0, 2, 1)
    ref = MultiHeadAttention(
        np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v), num_heads=H
    )
    np.testing.assert_allclose(nn.attention(qt, k, v, num_heads=H), ref, rtol=1e-5, atol=1e-6)
    # broadcast views as the mask, also one whose last axis has stride 0
    for small in [(1, 1, 1, S), (B, 1, S, 1)]:
        m = np.broadcast_to(randn(small, seed=8), (B, H, S, S))
        ref = MultiHeadAttention(*(np.ascontiguousarray(t) for t in (q, k, v)), m, num_heads=H)
        got = nn.attention(q, k, v, m, num_heads=H)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_attention_out() -> None:
    q, k, v = qkv(2, 9, 11, 2, 4, 6, seed=9)
    out = np.full((2, 9, 12), np.nan, np.float32)
    assert nn.attention(q, k, v, num_heads=2, out=out) is out
    np.testing.assert_allclose(out, MultiHeadAttention(q, k, v, num_heads=2), rtol=1e-5, atol=1e-6)
    assert nn.attention(q[:0], k[:0], v[:0], num_heads=2).shape == (0, 9, 12)


@pytest.mark.parametrize("isa_name", ISAS)
@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 3),
    Sq=st.integers(1, 40),
    Sk=st.integers(1, 70),
    H=st.integers(1, 4),
    D=st.integers(1, 40),
    Dv=st.integers(1, 40),
    mask_kind=st.integers(0, 3),
    seed=st.integers(0, 1000),
)
def test_attention_matches_reference(isa_name, B, Sq, Sk, H, D, Dv, mask_kind, seed) -> None:
    q, k, v = qkv(B, Sq, Sk, H, D, Dv, seed)
    mask = [
        None,
        randn((B, 1, 1, Sk), seed),
        randn((B, 1, Sq, Sk), seed),
        randn((B, H, Sq, Sk), seed),
    ][mask_kind]
    with forced(isa_name):
        got = nn.attention(q, k, v, mask, num_heads=H)
    np.testing.assert_allclose(
        got, MultiHeadAttention(q, k, v, mask, num_heads=H), rtol=1e-5, atol=1e-6
    )


def test_attention_bad_inputs() -> None:
    q, k, v = qkv(2, 4, 5, 2, 3, 3)
    with pytest.raises(ValueError, match=r"q must have rank 3 \[B, S, H\*D\], got shape \(4, 6\)"):
        nn.attention(q[0], k, v, num_heads=2)
    with pytest.raises(
        ValueError, match=r"num_heads=4 must divide the hidden sizes of q and v.*got q \(2, 4, 6\)"
    ):
        nn.attention(q, k, v, num_heads=4)
    with pytest.raises(
        ValueError,
        match=r"k and v must share the sequence length, got q \(2, 4, 6\), k \(2, 5, 6\), "
        r"v \(2, 4, 6\)",
    ):
        nn.attention(q, k, v[:, :4], num_heads=2)
    with pytest.raises(ValueError, match=r"share the batch size"):
        nn.attention(q, k[:1], v[:1], num_heads=2)
    with pytest.raises(
        ValueError,
        match=r"mask has shape \(2, 1, 4, 4\), which does not broadcast to "
        r"\[B, H, Sq, Sk\] = \(2, 2, 4, 5\)",
    ):
        nn.attention(q, k, v, np.zeros((2, 1, 4, 4), np.float32), num_heads=2)
    with pytest.raises(ValueError, match=r"mask has shape \(1, 1, 1, 1, 5\)"):
        nn.attention(q, k, v, np.zeros((1, 1, 1, 1, 5), np.float32), num_heads=2)
    with pytest.raises(ValueError, match="num_heads must be positive, got 0"):
        nn.attention(q, k, v, num_heads=0)
    with pytest.raises(
        ValueError, match=r"out must be a C-contiguous float32 array of shape \(2, 4, 6\)"
    ):
        nn.attention(q, k, v, num_heads=2, out=np.empty((2, 4, 5), np.float32))
    with pytest.raises(ValueError, match="out must not overlap q, k or v"):
        nn.attention(q, k, v, num_heads=2, out=q)
    with pytest.raises(TypeError, match="attention takes float32 mask, got float64"):
        nn.attention(q, k, v, np.zeros(5), num_heads=2)
