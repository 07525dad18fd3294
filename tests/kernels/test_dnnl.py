"""oneDNN kernels (ember.kernels.cpu.dnnl) against ember's NumPy reference ops.

Odd shapes (channels not a multiple of 16, H=7, asymmetric pads, dilation, groups), both layouts,
every fused activation, strided inputs, out=, bad inputs, thread counts and concurrent callers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ember.kernels.cpu import dnnl
from ember.ops import activation as act_ops
from ember.ops import conv as conv_ops
from ember.ops import linalg, pool
from ember.ops.elementwise import Clip_6

conv_ref = conv_ops.Conv
gemm_ref = linalg.Gemm_7
matmul_ref = linalg.MatMul
avg_pool_ref = pool.AveragePool_19
global_avg_pool_ref = pool.GlobalAveragePool
max_pool_ref = pool.MaxPool_10

F32_TOL = 1e-4
BF16_TOL = 2e-2

# name -> (params the kernels get, reference(x, params))
ACTIVATIONS = {
    "": ((), lambda x, p: x),
    "Relu": ((), lambda x, p: act_ops.Relu_6(x)),
    "LeakyRelu": ((0.3,), lambda x, p: act_ops.LeakyRelu_6(x, alpha=p[0])),
    "Clip": ((-0.5, 0.7), lambda x, p: Clip_6(x, min=p[0], max=p[1])),
    "Sigmoid": ((), lambda x, p: act_ops.Sigmoid_6(x)),
    "Tanh": ((), lambda x, p: act_ops.Tanh_6(x)),
    "HardSigmoid": ((0.3, 0.4), lambda x, p: act_ops.HardSigmoid_6(x, alpha=p[0], beta=p[1])),
    "HardSwish": ((), lambda x, p: act_ops.HardSwish_14(x)),
    "Gelu": ((), lambda x, p: act_ops.Gelu_20(x)),
    "GeluTanh": ((), lambda x, p: act_ops.Gelu_20(x, approximate="tanh")),
    "Elu": ((0.7,), lambda x, p: act_ops.Elu_6(x, alpha=p[0])),
}


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def assert_close(got: np.ndarray, want: np.ndarray, tol: float = F32_TOL) -> None:
    """Equal up to `tol` relative to the output's scale (oneDNN sums in another order)."""
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    assert got.dtype == np.float32
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def test_activation_table_matches_the_kernels() -> None:
    assert set(ACTIVATIONS) - {""} == set(dnnl.ACTIVATIONS)
    for name, (params, _) in ACTIVATIONS.items():
        if name:
            assert len(params) == dnnl.ACTIVATIONS[name]


# ----------------------------------------------------------------------------------------------
# Conv
# ----------------------------------------------------------------------------------------------


def conv_expected(x, w, b, z, *, strides, pads, dilations, group, activation="", params=()):
    """The reference for NCHW tensors: act(Conv(x, w, b) + z)."""
    y = conv_ref(x, w, b, strides=strides, pads=pads, dilations=dilations, group=group)
    if z is not None:
        y = y + z
    return ACTIVATIONS[activation][1](y, params)


# (N, C, H, W, K, kernel, strides, pads [top, left, bottom, right], dilations, group)
CONV_CASES = [
    (1, 5, 7, 7, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (3, 5, 7, 9, 6, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (1, 6, 7, 7, 4, (5, 5), (2, 2), (2, 1, 0, 2), (1, 1), 2),  # asymmetric pads, group 2
    (3, 7, 7, 7, 7, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 7),  # depthwise
    (1, 3, 11, 7, 5, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1),  # dilation 2
    (2, 17, 7, 7, 33, (3, 3), (2, 2), (1, 0, 1, 0), (1, 1), 1),
    (1, 24, 7, 7, 24, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 24),  # depthwise 5x5, stride 2
    (1, 4, 7, 6, 8, (1, 3), (1, 2), (0, 1, 0, 1), (1, 1), 1),  # non-square kernel
    (1, 32, 14, 14, 48, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_matches_reference(case, channels_last) -> None:
    N, C, H, W, K, k, s, p, d, g = case
    rng = np.random.default_rng(N * 1000 + C * 10 + K)
    x, w, b = rand(rng, N, C, H, W), rand(rng, K, C // g, *k), rand(rng, K)
    attrs = dict(strides=s, pads=p, dilations=d, group=g)
    want = conv_expected(x, w, b, None, **attrs)
    conv = dnnl.Conv(w, b, channels_last=channels_last, **attrs)
    if channels_last:
        assert_close(nchw(conv(nhwc(x))), want)
    else:
        assert_close(conv(x), want)
    # No bias, second shape through the same object (a second cached primitive).
    conv = dnnl.Conv(w, None, channels_last=channels_last, **attrs)
    x2 = rand(rng, N + 1, C, H + 2, W + 1)
    want2 = conv_expected(x2, w, None, None, **attrs)
    got2 = nchw(conv(nhwc(x2))) if channels_last else conv(x2)
    assert_close(got2, want2)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_activation_and_z(activation, channels_last) -> None:
    rng = np.random.default_rng(7)
    x, w, b = rand(rng, 2, 5, 7, 7), rand(rng, 6, 5, 3, 3) * 0.3, rand(rng, 6)
    z = rand(rng, 2, 6, 4, 4)
    params = ACTIVATIONS[activation][0]
    attrs = dict(strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), group=1)
    conv = dnnl.Conv(
        w, b, channels_last=channels_last, activation=activation, activation_params=params, **attrs
    )
    for zz in (None, z):
        want = conv_expected(x, w, b, zz, activation=activation, params=params, **attrs)
        if channels_last:
            got = nchw(conv(nhwc(x), None if zz is None else nhwc(zz)))
        else:
            got = conv(x, zz)
        assert_close(got, want)


def test_conv_activation_defaults_and_edge_params() -> None:
    rng = np.random.default_rng(8)
    x, w = rand(rng, 1, 3, 7, 7), rand(rng, 4, 3, 3, 3)
    y = conv_ref(x, w)
    cases = [
        ("LeakyRelu", (), act_ops.LeakyRelu_6(y)),  # ONNX default alpha 0.01
        ("HardSigmoid", (), act_ops.HardSigmoid_6(y)),
        ("Elu", (), act_ops.Elu_6(y)),
        ("Clip", (), y),  # no bounds
        ("Clip", (0.5, -0.5), Clip_6(y, min=0.5, max=-0.5)),  # min > max: all max, as ONNX
        ("Clip", (-np.inf, 0.25), Clip_6(y, max=0.25)),
    ]
    for name, params, want in cases:
        got = dnnl.Conv(w, activation=name, activation_params=params)(x)
        assert_close(got, want)


def test_conv_out_is_written_and_returned() -> None:
    rng = np.random.default_rng(9)
    x, w, b, z = rand(rng, 3, 5, 7, 7), rand(rng, 4, 5, 3, 3), rand(rng, 4), rand(rng, 3, 4, 7, 7)
    conv = dnnl.Conv(w, b, pads=(1, 1, 1, 1), channels_last=True)
    out = np.full((3, 7, 7, 4), np.nan, np.float32)
    got = conv(nhwc(x), nhwc(z), out=out)
    assert got is out
    want = conv_expected(x, w, b, z, strides=None, pads=(1, 1, 1, 1), dilations=None, group=1)
    assert_close(nchw(out), want)


def test_conv_1d_and_3d() -> None:
    rng = np.random.default_rng(10)
    x1, w1, b1 = rand(rng, 2, 5, 13), rand(rng, 6, 5, 3), rand(rng, 6)
    attrs1 = dict(strides=(2,), pads=(1, 2), dilations=(2,), group=1)
    want1 = conv_expected(x1, w1, b1, None, **attrs1)
    assert_close(dnnl.Conv(w1, b1, **attrs1)(x1), want1)
    got1 = dnnl.Conv(w1, b1, channels_last=True, **attrs1)(nhwc(x1))
    assert_close(nchw(got1), want1)

    x3, w3 = rand(rng, 1, 4, 5, 6, 7), rand(rng, 6, 2, 3, 1, 3)
    attrs3 = dict(strides=(1, 2, 1), pads=(1, 0, 1, 1, 0, 0), dilations=(1, 1, 2), group=2)
    want3 = conv_expected(x3, w3, None, None, **attrs3)
    assert_close(dnnl.Conv(w3, **attrs3)(x3), want3)
    assert_close(nchw(dnnl.Conv(w3, channels_last=True, **attrs3)(nhwc(x3))), want3)


def test_conv_non_contiguous_inputs() -> None:
    rng = np.random.default_rng(11)
    w, b = rand(rng, 6, 5, 3, 3), rand(rng, 6)
    attrs = dict(strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), group=1)
    big = rand(rng, 2, 5, 9, 16)
    x = big[:, :, 1:8, ::2]  # a slice with a step: (2, 5, 7, 8)
    want = conv_expected(np.ascontiguousarray(x), w, b, None, **attrs)
    assert_close(dnnl.Conv(w, b, **attrs)(x), want)
    # NHWC data given as a transposed view of an NCHW array, and a strided z.
    z = rand(rng, 2, 6, 7, 8)
    want_z = conv_expected(np.ascontiguousarray(x), w, b, z, **attrs)
    conv_cl = dnnl.Conv(w, b, channels_last=True, **attrs)
    got = conv_cl(x.transpose(0, 2, 3, 1), z.transpose(0, 2, 3, 1))
    assert_close(nchw(got), want_z)
    # A Fortran-ordered weight.
    assert_close(dnnl.Conv(np.asfortranarray(w), b, **attrs)(x), want)


def test_conv_bad_inputs() -> None:
    w = np.zeros((6, 5, 3, 3), np.float32)
    conv = dnnl.Conv(w, pads=(1, 1, 1, 1))
    with pytest.raises(
        ValueError, match=r"x \(N, C, H, W\) has shape \(1, 4, 7, 7\) with 4 channels, expected 5"
    ):
        conv(np.zeros((1, 4, 7, 7), np.float32))
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\), got shape \(5, 7, 7\)"):
        conv(np.zeros((5, 7, 7), np.float32))
    with pytest.raises(
        ValueError, match=r"z has shape \(1, 6, 7, 6\), expected the output's \(1, 6, 7, 7\)"
    ):
        conv(np.zeros((1, 5, 7, 7), np.float32), np.zeros((1, 6, 7, 6), np.float32))
    with pytest.raises(ValueError, match=r"out has shape \(1, 6, 7\), expected \(1, 6, 7, 7\)"):
        conv(np.zeros((1, 5, 7, 7), np.float32), out=np.zeros((1, 6, 7), np.float32))
    x = np.zeros((1, 5, 7, 7), np.float32)
    with pytest.raises(TypeError, match=r"out must be a writeable C-contiguous .* got float64$"):
        conv(x, out=np.zeros((1, 6, 7, 7)))
    with pytest.raises(TypeError, match=r"got float32 \(not C-contiguous\)$"):
        conv(x, out=np.zeros((1, 7, 7, 6), np.float32).transpose(0, 3, 1, 2))
    read_only = np.zeros((1, 6, 7, 7), np.float32)
    read_only.setflags(write=False)
    with pytest.raises(TypeError, match=r"got float32 \(read-only\)$"):
        conv(x, out=read_only)
    x.setflags(write=False)  # read-only inputs are fine
    assert conv(x).shape == (1, 6, 7, 7)
    with pytest.raises(TypeError, match="x must be a float32 NumPy array, got float64"):
        conv(np.zeros((1, 5, 7, 7)))
    with pytest.raises(TypeError, match="x must be a float32 NumPy array, got list"):
        conv([1.0])
    with pytest.raises(ValueError, match="smaller than the kernel extent 3"):
        dnnl.Conv(w)(np.zeros((1, 5, 2, 7), np.float32))
    with pytest.raises(ValueError, match=r"group=4 must be >= 1 and divide the 6 output channels"):
        dnnl.Conv(w, group=4)
    with pytest.raises(ValueError, match=r"bias has shape \(5,\), expected \(6,\)"):
        dnnl.Conv(w, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="pads has 2 values, expected 4"):
        dnnl.Conv(w, pads=(1, 1))
    with pytest.raises(ValueError, match="strides must be >= 1, got 0"):
        dnnl.Conv(w, strides=(0, 1))
    with pytest.raises(ValueError, match=r"weight must be \(K, C/group, k...\) with 1 to 3"):
        dnnl.Conv(np.zeros((6, 5), np.float32))
    with pytest.raises(ValueError, match="unknown activation 'Swish'"):
        dnnl.Conv(w, activation="Swish")
    with pytest.raises(
        ValueError, match="activation Relu takes at most 0 activation_params, got 1"
    ):
        dnnl.Conv(w, activation="Relu", activation_params=(1.0,))
    with pytest.raises(TypeError, match="weight must be a float32 NumPy array, got float64"):
        dnnl.Conv(np.zeros((6, 5, 3, 3)))


def test_conv_empty_batch() -> None:
    conv = dnnl.Conv(np.ones((4, 3, 3, 3), np.float32), channels_last=True)
    assert conv(np.zeros((0, 7, 7, 3), np.float32)).shape == (0, 5, 5, 4)


def test_conv_thread_counts_agree() -> None:
    rng = np.random.default_rng(12)
    x, w, b = rand(rng, 2, 19, 14, 14), rand(rng, 21, 19, 3, 3), rand(rng, 21)
    conv = dnnl.Conv(w, b, pads=(1, 1, 1, 1), channels_last=True, activation="Relu")
    before = dnnl.get_num_threads()
    try:
        dnnl.set_num_threads(1)
        assert dnnl.get_num_threads() == 1
        one = conv(nhwc(x))
        dnnl.set_num_threads(2)
        two = conv(nhwc(x))
    finally:
        dnnl.set_num_threads(before)
    assert_close(one, two, 1e-6)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        dnnl.set_num_threads(0)


def test_conv_concurrent_callers() -> None:
    rng = np.random.default_rng(13)
    w, b = rand(rng, 12, 9, 3, 3), rand(rng, 12)
    attrs = dict(strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), group=1)
    conv = dnnl.Conv(w, b, channels_last=True, activation="Relu", **attrs)
    inputs = {n: rand(rng, n, 9, 7, 7) for n in (1, 2, 3, 4)}
    wanted = {
        n: nhwc(conv_expected(x, w, b, None, activation="Relu", **attrs)) for n, x in inputs.items()
    }
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            x = nhwc(inputs[n])
            for _ in range(30):
                assert_close(conv(x), wanted[n])
        except BaseException as e:  # noqa: BLE001  (re-raised in the main thread)
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_bf16_uses_bf16_kernels_where_native() -> None:
    conv = dnnl.Conv(np.ones((16, 16, 3, 3), np.float32), channels_last=True, bf16=True)
    conv(np.ones((1, 7, 7, 16), np.float32))
    mm = dnnl.MatMul(np.ones((16, 16), np.float32), bf16=True)
    mm(np.ones((4, 16), np.float32))
    for impl in conv.implementations() + mm.implementations():
        assert ("bf16" in impl) == dnnl.bf16_native(), impl


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_bf16(channels_last) -> None:
    rng = np.random.default_rng(14)
    for N, C, K, g in ((1, 16, 32, 1), (2, 5, 7, 1), (1, 16, 16, 16)):
        x, w, b = rand(rng, N, C, 7, 7), rand(rng, K, C // g, 3, 3), rand(rng, K)
        attrs = dict(strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), group=g)
        want = conv_expected(x, w, b, None, activation="Relu", **attrs)
        conv = dnnl.Conv(w, b, channels_last=channels_last, activation="Relu", bf16=True, **attrs)
        got = nchw(conv(nhwc(x))) if channels_last else conv(x)
        assert_close(got, want, BF16_TOL)


@settings(max_examples=40, deadline=None)
@given(
    N=st.integers(1, 3),
    Cg=st.integers(1, 6),
    Kg=st.integers(1, 6),
    group=st.sampled_from([1, 1, 2, 3]),
    H=st.integers(1, 9),
    W=st.integers(1, 9),
    k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    s=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    d=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    p=st.tuples(*[st.integers(0, 2)] * 4),
    channels_last=st.booleans(),
)
def test_conv_property(N, Cg, Kg, group, H, W, k, s, d, p, channels_last) -> None:
    assume(all(n + p[i] + p[i + 2] >= (k[i] - 1) * d[i] + 1 for i, n in enumerate((H, W))))
    rng = np.random.default_rng(N + Cg + H * W)
    C, K = Cg * group, Kg * group
    x, w, b = rand(rng, N, C, H, W), rand(rng, K, Cg, *k), rand(rng, K)
    attrs = dict(strides=s, pads=p, dilations=d, group=group)
    want = conv_expected(x, w, b, None, **attrs)
    conv = dnnl.Conv(w, b, channels_last=channels_last, **attrs)
    got = nchw(conv(nhwc(x))) if channels_last else conv(x)
    assert_close(got, want)


# ----------------------------------------------------------------------------------------------
# MatMul with a constant B
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("a_shape", [(1, 5), (7, 5), (2, 3, 5), (2, 1, 3, 5), (5,), (0, 5)])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_prepacked(a_shape, trans_b) -> None:
    rng = np.random.default_rng(len(a_shape))
    a, B, bias = rand(rng, *a_shape), rand(rng, 5, 17), rand(rng, 17)
    mm = dnnl.MatMul(np.ascontiguousarray(B.T) if trans_b else B, bias, trans_b=trans_b)
    assert_close(mm(a), matmul_ref(a, B) + bias)
    assert_close(dnnl.MatMul(B)(a), matmul_ref(a, B))


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_matmul_activation_alpha_gemm(activation) -> None:
    rng = np.random.default_rng(20)
    a, B, c = rand(rng, 9, 33), rand(rng, 19, 33), rand(rng, 19)  # B is Gemm's (N, K)
    params = ACTIVATIONS[activation][0]
    mm = dnnl.MatMul(B, c, trans_b=True, alpha=0.5, activation=activation, activation_params=params)
    want = ACTIVATIONS[activation][1](gemm_ref(a, B, c, alpha=0.5, transB=1), params)
    assert_close(mm(a), want)
    out = np.empty((9, 19), np.float32)
    assert mm(a, out=out) is out
    assert_close(out, want)


def test_matmul_large_and_bf16() -> None:
    rng = np.random.default_rng(21)
    a, B, bias = rand(rng, 4, 32, 384), rand(rng, 384, 100) * 0.05, rand(rng, 100)
    want = matmul_ref(a, B) + bias
    assert_close(dnnl.MatMul(B, bias)(a), want)
    assert_close(dnnl.MatMul(B, bias, bf16=True)(a), want, BF16_TOL)
    assert_close(dnnl.MatMul(B, bias, bf16=True)(a[0, :1]), want[0, :1], BF16_TOL)


def test_matmul_non_contiguous_a() -> None:
    rng = np.random.default_rng(22)
    B = rand(rng, 6, 4)
    mm = dnnl.MatMul(B)
    big = rand(rng, 6, 10)
    for a in (big[:, ::2][:, :6].T[:, :6], big.T[1:7, :6], big[::2, 2:8]):
        assert_close(mm(a), matmul_ref(np.ascontiguousarray(a), B))


def test_matmul_bad_inputs() -> None:
    mm = dnnl.MatMul(np.zeros((5, 3), np.float32))
    with pytest.raises(
        ValueError, match=r"a must be \(\.\.\., 5\) to match b's K=5, got shape \(2, 4\)"
    ):
        mm(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"out has shape \(2, 5\), expected \(2, 3\)"):
        mm(np.zeros((2, 5), np.float32), out=np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"b must be 2-D \(K, N\), got shape \(5,\)"):
        dnnl.MatMul(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"bias has shape \(5,\), expected \(3,\)"):
        dnnl.MatMul(np.zeros((5, 3), np.float32), np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="a must be a float32 NumPy array, got int64"):
        mm(np.zeros((2, 5), np.int64))


# ----------------------------------------------------------------------------------------------
# matmul of two runtime tensors
# ----------------------------------------------------------------------------------------------


MATMUL_SHAPES = [
    ((7, 5), (5, 3)),
    ((2, 3, 4, 5), (2, 3, 5, 6)),
    ((1, 3, 4, 5), (2, 1, 5, 6)),  # broadcast both ways
    ((4, 5), (2, 3, 5, 6)),
    ((2, 3, 4, 5), (5, 6)),
    ((3, 1, 17), (3, 17, 1)),
    ((2, 0, 5), (2, 5, 3)),
    ((2, 4, 0), (2, 0, 3)),  # an empty sum: zeros
]


@pytest.mark.parametrize(("a_shape", "b_shape"), MATMUL_SHAPES, ids=str)
def test_batched_matmul(a_shape, b_shape) -> None:
    rng = np.random.default_rng(30)
    a, b = rand(rng, *a_shape), rand(rng, *b_shape)
    assert_close(dnnl.matmul(a, b), matmul_ref(a, b))
    assert_close(dnnl.matmul(a, b, alpha=0.125), matmul_ref(a, b) * np.float32(0.125))


def test_batched_matmul_strided_views() -> None:
    rng = np.random.default_rng(31)
    B, S, H, D = 2, 7, 3, 8
    qkv = rand(rng, B, S, 3 * H * D)
    q = qkv[:, :, : H * D].reshape(B, S, H, D).transpose(0, 2, 1, 3)  # (B, H, S, D), strided
    k = qkv[:, :, H * D : 2 * H * D].reshape(B, S, H, D).transpose(0, 2, 1, 3)
    kt = k.transpose(0, 1, 3, 2)  # (B, H, D, S)
    scores = dnnl.matmul(q, kt, alpha=D**-0.5)
    assert_close(scores, matmul_ref(np.ascontiguousarray(q), np.ascontiguousarray(kt)) * D**-0.5)
    v = qkv[:, :, 2 * H * D :].reshape(B, S, H, D).transpose(0, 2, 1, 3)
    out = np.empty((B, H, S, D), np.float32)
    assert dnnl.matmul(scores, v, out) is out
    assert_close(out, matmul_ref(scores, np.ascontiguousarray(v)))
    # Reversed and stepped views (negative strides are copied first).
    x = rand(rng, 6, 10)
    for a, b in ((x[::-1, :5], x[:5, ::-2]), (x[::2, 1:6], x[1:6, 3:7].T.T)):
        assert_close(
            dnnl.matmul(a, b), matmul_ref(np.ascontiguousarray(a), np.ascontiguousarray(b))
        )
    # A broadcast_to view: zero strides on a batch axis.
    w = rand(rng, 5, 4)
    a3 = rand(rng, 3, 2, 5)
    assert_close(dnnl.matmul(a3, np.broadcast_to(w, (3, 5, 4))), matmul_ref(a3, w))


def test_batched_matmul_bad_inputs() -> None:
    z = np.zeros
    with pytest.raises(
        ValueError, match=r"a \(2, 3\) has K=3 on its last axis but b \(4, 5\) has K=4"
    ):
        dnnl.matmul(z((2, 3), np.float32), z((4, 5), np.float32))
    with pytest.raises(
        ValueError, match=r"batch axes of a \(2, 3, 4\) and b \(3, 4, 5\) do not broadcast"
    ):
        dnnl.matmul(z((2, 3, 4), np.float32), z((3, 4, 5), np.float32))
    with pytest.raises(ValueError, match="must have rank 2 to 4"):
        dnnl.matmul(z(3, np.float32), z((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"out has shape \(3, 3\), expected \(2, 5\)"):
        dnnl.matmul(z((2, 3), np.float32), z((3, 5), np.float32), z((3, 3), np.float32))


@settings(max_examples=50, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    a_ones=st.lists(st.booleans(), min_size=2, max_size=2),
    b_rank=st.integers(2, 4),
    M=st.integers(1, 9),
    K=st.integers(1, 9),
    N=st.integers(1, 9),
    transpose_a=st.booleans(),
    transpose_b=st.booleans(),
)
def test_batched_matmul_property(batch, a_ones, b_rank, M, K, N, transpose_a, transpose_b) -> None:
    a_batch = [1 if one else n for n, one in zip(batch, a_ones, strict=False)]
    b_batch = batch[len(batch) - min(len(batch), b_rank - 2) :]
    rng = np.random.default_rng(M * 100 + K * 10 + N)
    a = rand(rng, *a_batch, K, M).swapaxes(-1, -2) if transpose_a else rand(rng, *a_batch, M, K)
    b = rand(rng, *b_batch, N, K).swapaxes(-1, -2) if transpose_b else rand(rng, *b_batch, K, N)
    assert_close(dnnl.matmul(a, b), matmul_ref(np.ascontiguousarray(a), np.ascontiguousarray(b)))


# ----------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------

# (shape NCHW, kernel, strides, pads, dilations, ceil_mode)
POOL_CASES = [
    ((1, 5, 7, 7), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0),
    ((3, 17, 7, 9), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    ((2, 3, 7, 7), (3, 2), (2, 1), (1, 0, 0, 1), (1, 1), 1),  # asymmetric pads, ceil
    ((1, 4, 9, 8), (3, 3), (1, 2), (2, 2, 2, 2), (2, 2), 0),  # dilation 2
    ((1, 4, 9, 8), (2, 3), (2, 2), (1, 1, 0, 1), (2, 1), 1),
    ((1, 2, 4, 4), (2, 2), (2, 2), (0, 0, 1, 1), (1, 1), 1),  # ceil drops a window in padding
    ((1, 3, 6, 6), (3, 3), (3, 3), (0, 0, 0, 0), (1, 1), 1),
    ((2, 3, 5, 6), (5, 6), (1, 1), (0, 0, 0, 0), (1, 1), 0),  # whole image
]


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_pools(case, channels_last) -> None:
    shape, k, s, p, d, ceil = case
    x = rand(np.random.default_rng(40), *shape)
    xin = nhwc(x) if channels_last else x
    back = nchw if channels_last else (lambda y: y)
    attrs = dict(kernel_shape=k, strides=s, pads=p, dilations=d, ceil_mode=ceil)
    got = back(dnnl.max_pool(xin, channels_last=channels_last, **attrs))
    assert_close(got, max_pool_ref(x, **attrs))
    for count_include_pad in (0, 1):
        got = dnnl.avg_pool(
            xin, count_include_pad=bool(count_include_pad), channels_last=channels_last, **attrs
        )
        assert_close(back(got), avg_pool_ref(x, count_include_pad=count_include_pad, **attrs))


def test_pool_1d_out_and_global() -> None:
    rng = np.random.default_rng(41)
    x = rand(rng, 2, 3, 11)
    attrs = dict(kernel_shape=(3,), strides=(2,), pads=(1, 2), dilations=(1,), ceil_mode=1)
    out = np.empty(max_pool_ref(x, **attrs).shape, np.float32)
    assert dnnl.max_pool(x, out=out, **attrs) is out
    assert_close(out, max_pool_ref(x, **attrs))
    assert_close(
        nchw(dnnl.avg_pool(nhwc(x), channels_last=True, **attrs)), avg_pool_ref(x, **attrs)
    )
    x4 = rand(rng, 3, 19, 7, 5)
    assert_close(dnnl.global_avg_pool(x4), global_avg_pool_ref(x4))
    got = dnnl.global_avg_pool(nhwc(x4), channels_last=True)
    assert got.shape == (3, 1, 1, 19)
    assert_close(nchw(got), global_avg_pool_ref(x4))
    assert_close(dnnl.global_avg_pool(x4[:, :, ::2]), global_avg_pool_ref(x4[:, :, ::2]))


def test_pool_bad_inputs() -> None:
    x = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(
        ValueError,
        match=r"rank 4 \(N, C, spatial...\) for kernel_shape of 2, got shape \(2, 4, 4\)",
    ):
        dnnl.max_pool(x[0], kernel_shape=(2, 2))
    with pytest.raises(ValueError, match="smaller than the window extent 5"):
        dnnl.avg_pool(x, kernel_shape=(5, 1))
    with pytest.raises(ValueError, match="strides, dilations and pads must have 2, 2 and 4 values"):
        dnnl.max_pool(x, kernel_shape=(2, 2), pads=(1, 1))
    with pytest.raises(ValueError, match=r"out has shape \(1, 2, 4, 4\), expected \(1, 2, 3, 3\)"):
        dnnl.max_pool(x, kernel_shape=(2, 2), out=np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="global_avg_pool: x must have rank >= 3"):
        dnnl.global_avg_pool(np.zeros((2, 3), np.float32))


@settings(max_examples=40, deadline=None)
@given(
    H=st.integers(1, 9),
    W=st.integers(1, 9),
    k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    d=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    p=st.tuples(*[st.integers(0, 1)] * 4),
    ceil_mode=st.integers(0, 1),
    count_include_pad=st.integers(0, 1),
    channels_last=st.booleans(),
)
def test_pool_property(H, W, k, s, d, p, ceil_mode, count_include_pad, channels_last) -> None:
    assume(all(n + p[i] + p[i + 2] >= (k[i] - 1) * d[i] + 1 for i, n in enumerate((H, W))))
    assume(all(p[i] < k[i] and p[i + 2] < k[i] for i in range(2)))  # ONNX: pads < kernel
    x = rand(np.random.default_rng(H * W), 2, 3, H, W)
    attrs = dict(kernel_shape=k, strides=s, pads=p, dilations=d, ceil_mode=ceil_mode)
    xin = nhwc(x) if channels_last else x
    back = nchw if channels_last else (lambda y: y)
    assert_close(
        back(dnnl.max_pool(xin, channels_last=channels_last, **attrs)), max_pool_ref(x, **attrs)
    )
    got = dnnl.avg_pool(
        xin, count_include_pad=bool(count_include_pad), channels_last=channels_last, **attrs
    )
    assert_close(back(got), avg_pool_ref(x, count_include_pad=count_include_pad, **attrs))


# ----------------------------------------------------------------------------------------------
# Layout reorders
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 5, 7), (3, 17, 7, 9), (1, 3, 4, 5, 6), (0, 3, 2, 2)])
def test_layout_reorders(shape) -> None:
    x = rand(np.random.default_rng(50), *shape)
    cl = dnnl.to_channels_last(x)
    np.testing.assert_array_equal(cl, np.moveaxis(x, 1, -1))
    np.testing.assert_array_equal(dnnl.to_channels_first(cl), x)
    out = np.empty_like(x)
    assert dnnl.to_channels_first(cl, out) is out
    np.testing.assert_array_equal(out, x)


def test_layout_reorders_strided_and_bad() -> None:
    x = rand(np.random.default_rng(51), 2, 6, 8, 10)
    view = x[:, 1:5, ::2, 3:]  # read in place
    np.testing.assert_array_equal(dnnl.to_channels_last(view), np.moveaxis(view, 1, -1))
    np.testing.assert_array_equal(dnnl.to_channels_first(view), np.moveaxis(view, -1, 1))
    np.testing.assert_array_equal(dnnl.to_channels_last(x[:, ::-1]), np.moveaxis(x[:, ::-1], 1, -1))
    with pytest.raises(
        ValueError, match=r"x must be \(N, C, spatial...\) with 1 to 3 spatial axes"
    ):
        dnnl.to_channels_last(np.zeros((2, 3), np.float32))
    with pytest.raises(
        ValueError, match=r"out has shape \(2, 6, 8, 10\), expected \(2, 8, 10, 6\)"
    ):
        dnnl.to_channels_last(x, out=np.empty_like(x))


# ----------------------------------------------------------------------------------------------
# Without AVX-512 (CI machines may lack it): every test above, with oneDNN held to AVX2
# ----------------------------------------------------------------------------------------------


def test_everything_on_avx2() -> None:
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}  # oneDNN's own switch, read at start
    args = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider"]
    args += ["-k", "not test_everything_on_avx2"]
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout
