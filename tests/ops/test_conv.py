"""Conv, ConvTranspose, DeformConv and Col2Im against loop-by-definition twins, on odd shapes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.ops.node import run_node

from ember.errors import ExecutionError
from ember.ops.conv import (
    Col2Im_18,
    Conv,
    ConvTranspose,
    ConvTranspose_11,
    DeformConv_19,
    extract_windows,
    window_geometry,
)
from ember.ops.registry import OpContext

RNG = np.random.default_rng(0)
EXACT = OpContext(exact=True)


def rand(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Twins: the definitions, one output element at a time
# ----------------------------------------------------------------------------------------------


def conv_twin(x, w, b, strides, dilations, pb, pe, group):
    N, _, *S = x.shape
    M, Cg, *K = w.shape
    nd = len(S)
    out = [
        (S[i] + pb[i] + pe[i] - (K[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(nd)
    ]
    y = np.zeros((N, M, *out))
    Mg = M // group
    for n, m, *o in itertools.product(range(N), range(M), *(range(v) for v in out)):
        g = m // Mg
        acc = 0.0 if b is None else float(b[m])
        for c, *k in itertools.product(range(Cg), *(range(v) for v in K)):
            pos = [o[i] * strides[i] - pb[i] + k[i] * dilations[i] for i in range(nd)]
            if all(0 <= p < s for p, s in zip(pos, S, strict=True)):
                acc += float(x[(n, g * Cg + c, *pos)]) * float(w[(m, c, *k)])
        y[(n, m, *o)] = acc
    return y


def conv_transpose_twin(x, w, b, strides, dilations, pb, out_shape, group):
    """Scatter every input pixel through the kernel; read the output window starting at pb."""
    N, C, *S = x.shape
    _, Mg, *K = w.shape
    nd = len(S)
    Cg = C // group
    full = [
        max((S[i] - 1) * strides[i] + (K[i] - 1) * dilations[i] + 1, pb[i] + out_shape[i])
        for i in range(nd)
    ]
    y = np.zeros((N, Mg * group, *full))
    for n, c, *i in itertools.product(range(N), range(C), *(range(v) for v in S)):
        g = c // Cg
        for m, *k in itertools.product(range(Mg), *(range(v) for v in K)):
            pos = tuple(i[a] * strides[a] + k[a] * dilations[a] for a in range(nd))
            y[(n, g * Mg + m, *pos)] += float(x[(n, c, *i)]) * float(w[(c, m, *k)])
    y = y[
        (slice(None), slice(None), *(slice(p, p + o) for p, o in zip(pb, out_shape, strict=True)))
    ]
    if b is not None:
        y = y + b.reshape(1, -1, *([1] * nd))
    return y


# (x shape, w shape, attributes): odd shapes, non-square kernels, stride > kernel, asymmetric pads.
CONV_CASES = [
    ((2, 3, 7), (4, 3, 3), {}),
    ((1, 2, 9), (3, 2, 2), {"strides": [3], "pads": [2, 0], "dilations": [2]}),
    ((2, 3, 7, 5), (4, 3, 3, 2), {}),
    ((1, 2, 6, 7), (3, 2, 1, 3), {"strides": [3, 2], "pads": [0, 2, 1, 1]}),
    ((1, 2, 8, 9), (2, 2, 2, 2), {"strides": [3, 4]}),  # stride > kernel: skipped pixels
    ((1, 3, 9, 8), (2, 3, 3, 3), {"dilations": [2, 3], "pads": [1, 0, 2, 3]}),
    ((2, 4, 5, 6), (6, 2, 3, 2), {"group": 2, "pads": [1, 1, 0, 1]}),
    (
        (1, 4, 6, 5),
        (8, 1, 3, 3),
        {"group": 4, "strides": [2, 1], "pads": [1, 1, 1, 1]},
    ),  # depthwise x2
    ((1, 2, 4, 5, 3), (3, 2, 2, 3, 2), {"strides": [1, 2, 1], "pads": [0, 1, 1, 1, 0, 0]}),
]


@pytest.mark.parametrize(("xs", "ws", "attrs"), CONV_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_conv_matches_definition(xs, ws, attrs, bias):
    x, w = rand(*xs), rand(*ws)
    b = rand(ws[0]) if bias else None
    nd = len(xs) - 2
    pads = attrs.get("pads", [0] * 2 * nd)
    want = conv_twin(
        x,
        w,
        b,
        attrs.get("strides", [1] * nd),
        attrs.get("dilations", [1] * nd),
        pads[:nd],
        pads[nd:],
        attrs.get("group", 1),
    )
    got = Conv(x, w, b, **attrs)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("auto_pad", "pads_begin", "pads_end"),
    [("SAME_UPPER", [0, 1], [1, 1]), ("SAME_LOWER", [1, 1], [0, 1]), ("VALID", [0, 0], [0, 0])],
)
def test_conv_auto_pad_splits_odd_padding(auto_pad, pads_begin, pads_end):
    # H=5, k=2, s=2: out 3, total pad 1 -> the odd pixel goes to the end (UPPER) or start (LOWER).
    # W=7, k=3, s=2: out 4, total pad 2 -> split evenly.
    x, w = rand(1, 2, 5, 7), rand(3, 2, 2, 3)
    got = run_node(
        "Conv", [("x", x), ("w", w)], {"auto_pad": auto_pad, "strides": [2, 2]}, opset=11
    )
    want = conv_twin(x, w, None, [2, 2], [1, 1], pads_begin, pads_end, 1)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_same_padding_is_never_negative_when_stride_exceeds_kernel():
    win = window_geometry((5,), (1,), strides=[3], auto_pad="SAME_UPPER")
    assert win.out_shape == (2,) and win.pads_begin == (0,) and win.pads_end == (0,)


def test_conv_exact_mode_accumulates_in_float64():
    # 1e8 + 1 is not a float32; the bias then cancels the 1e8. Only float64 keeps the 1.
    x = np.array([[[1e8, 1.0]]], dtype=np.float32)
    w = np.array([[[1.0, 1.0]]], dtype=np.float32)
    b = np.array([-1e8], dtype=np.float32)
    assert Conv(x, w, b)[0, 0, 0] == 0.0
    exact = run_node("Conv", [("x", x), ("w", w), ("b", b)], exact=True)
    assert exact.dtype == np.float32 and exact[0, 0, 0] == 1.0


def test_conv_float16_keeps_dtype_and_is_accurate():
    x, w = rand(1, 3, 6, 5), rand(4, 3, 3, 3)
    got = Conv(x.astype(np.float16), w.astype(np.float16), pads=[1, 1, 1, 1])
    assert got.dtype == np.float16
    want = conv_twin(
        x.astype(np.float16), w.astype(np.float16), None, [1, 1], [1, 1], [1, 1], [1, 1], 1
    )
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=5e-3, atol=5e-3)


def test_conv_omitted_bias_through_the_runtime():
    x, w = rand(1, 2, 5, 5), rand(3, 2, 3, 3)
    got = run_node("Conv", [("x", x), ("w", w), None], {"kernel_shape": [3, 3]})
    np.testing.assert_allclose(
        got, conv_twin(x, w, None, [1, 1], [1, 1], [0, 0], [0, 0], 1), atol=1e-5
    )


@pytest.mark.parametrize(
    ("attrs", "w_shape", "message"),
    [
        ({"group": 2}, (4, 3, 3, 3), "X has 3 channels but W expects 3 per group x group=2"),
        ({"group": 3}, (4, 1, 3, 3), "4 output channels are not divisible by group=3"),
        ({"pads": [1, 1]}, (4, 3, 3, 3), "pads has 2 values, expected 4"),
        ({"pads": [1, -1, 0, 0]}, (4, 3, 3, 3), "must be non-negative"),
        ({"auto_pad": "SAME"}, (4, 3, 3, 3), "auto_pad='SAME' is not one of"),
        ({"kernel_shape": [2, 2]}, (4, 3, 3, 3), "does not match W spatial shape [3, 3]"),
        ({"strides": [1, 0]}, (4, 3, 3, 3), "strides=[1, 0] must be positive"),
        ({"dilations": [4, 1]}, (4, 3, 3, 3), "window extent 9 (kernel 3, dilation 4) is larger"),
    ],
)
def test_conv_rejects_bad_attributes(attrs, w_shape, message):
    with pytest.raises(ValueError) as e:
        Conv(rand(1, 3, 6, 6), rand(*w_shape), **attrs)
    assert message in str(e.value)


def test_conv_error_reaches_user_with_node_name():
    with pytest.raises(
        ExecutionError, match=r"\(Conv\) failed: ValueError: Conv: X has 2 channels"
    ):
        run_node("Conv", [("x", rand(1, 2, 5, 5)), ("w", rand(1, 3, 3, 3))])


# ----------------------------------------------------------------------------------------------
# Window arithmetic (shared with pool.py)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "k", "kw", "out", "pads"),
    [
        (5, 3, {"strides": [2]}, 2, (0, 0)),
        (6, 3, {"strides": [2], "ceil_mode": 1}, 3, (0, 0)),
        # ceil_mode: a last window starting inside the end padding is dropped
        (2, 3, {"strides": [3], "pads": [1, 1], "ceil_mode": 1}, 1, (1, 1)),
        (7, 2, {"strides": [3], "dilations": [2], "pads": [0, 2], "ceil_mode": 1}, 3, (0, 2)),
        (5, 3, {"auto_pad": "SAME_LOWER", "strides": [2]}, 3, (1, 1)),
        (6, 3, {"auto_pad": "SAME_LOWER", "strides": [2]}, 3, (1, 0)),
        (6, 3, {"auto_pad": "VALID", "strides": [2], "pads": [5, 5]}, 2, (0, 0)),
    ],
)
def test_window_geometry(n, k, kw, out, pads):
    win = window_geometry((n,), (k,), **kw)
    assert win.out_shape == (out,)
    assert (win.pads_begin[0], win.pads_end[0]) == pads


def test_extract_windows_is_a_view_of_the_padded_input():
    x = np.arange(7, dtype=np.float32).reshape(1, 1, 7)
    win = window_geometry((7,), (2,), strides=[3], dilations=[2], pads=[1, 0], ceil_mode=1)
    v = extract_windows(x, win, fill=-1)
    assert v.shape == (1, 1, win.out_shape[0], 2)
    np.testing.assert_array_equal(v[0, 0], [[-1, 1], [2, 4], [5, -1]])


# ----------------------------------------------------------------------------------------------
# ConvTranspose
# ----------------------------------------------------------------------------------------------

# (x shape, w shape, attributes, expected pads_begin, expected output spatial shape)
CONVT_CASES = [
    ((1, 2, 5), (2, 3, 3), {}, [0], [7]),
    ((2, 2, 4), (2, 2, 3), {"strides": [3], "dilations": [2], "pads": [1, 2]}, [1], [11]),
    ((1, 3, 3, 4), (3, 2, 3, 2), {"strides": [2, 3]}, [0, 0], [7, 11]),
    (
        (1, 2, 3, 3),
        (2, 2, 2, 3),
        {"strides": [3, 2], "pads": [1, 0, 2, 1], "output_padding": [2, 1]},
        [1, 0],
        [7, 7],
    ),
    (
        (1, 4, 3, 4),
        (4, 3, 3, 3),
        {"group": 2, "strides": [2, 1], "pads": [0, 1, 1, 0]},
        [0, 1],
        [6, 5],
    ),
    ((1, 4, 3, 3), (4, 1, 2, 2), {"group": 4, "strides": [2, 2]}, [0, 0], [6, 6]),  # depthwise
    ((1, 2, 3, 3), (2, 1, 3, 3), {"strides": [3, 2], "output_shape": [10, 8]}, [0, 0], [10, 8]),
    # output_shape smaller than the natural (12, 9): computed pads, the odd pixel at the beginning
    ((1, 2, 4, 4), (2, 1, 3, 3), {"strides": [3, 2], "output_shape": [11, 6]}, [1, 2], [11, 6]),
    (
        (1, 1, 2, 3, 2),
        (1, 2, 2, 2, 3),
        {"strides": [2, 1, 2], "pads": [0, 1, 1, 1, 0, 0]},
        [0, 1, 1],
        [3, 3, 4],
    ),
]


@pytest.mark.parametrize(("xs", "ws", "attrs", "pb", "out"), CONVT_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_conv_transpose_matches_definition(xs, ws, attrs, pb, out, bias):
    x, w = rand(*xs), rand(*ws)
    group = attrs.get("group", 1)
    b = rand(ws[1] * group) if bias else None
    nd = len(xs) - 2
    want = conv_transpose_twin(
        x, w, b, attrs.get("strides", [1] * nd), attrs.get("dilations", [1] * nd), pb, out, group
    )
    got = ConvTranspose_11(x, w, b, **attrs)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv_transpose_same_upper_changed_sides_at_opset_11():
    # x 3 wide, stride 2, kernel 3: natural 7, target 3*2 = 6, total pad 1 (odd).
    # Opset 11+: SAME_UPPER crops the end; opsets 1-10 crop the beginning (LOWER: the reverse).
    x, w = rand(1, 1, 3), rand(1, 1, 3)
    attrs = {"auto_pad": "SAME_UPPER", "strides": [2]}
    full = conv_transpose_twin(x, w, None, [2], [1], [0], [7], 1)
    new = run_node("ConvTranspose", [("x", x), ("w", w)], attrs, opset=11)
    old = run_node("ConvTranspose", [("x", x), ("w", w)], attrs, opset=10)
    np.testing.assert_allclose(new, full[..., :6], atol=1e-6)
    np.testing.assert_allclose(old, full[..., 1:], atol=1e-6)
    lower = ConvTranspose_11(x, w, auto_pad="SAME_LOWER", strides=[2])
    np.testing.assert_allclose(lower, full[..., 1:], atol=1e-6)
    np.testing.assert_allclose(
        ConvTranspose(x, w, auto_pad="SAME_LOWER", strides=[2]), full[..., :6], atol=1e-6
    )


def test_conv_transpose_output_shape_may_include_batch_and_channels():
    x, w = rand(1, 2, 3, 3), rand(2, 1, 3, 3)
    a = ConvTranspose_11(x, w, strides=[3, 2], output_shape=[10, 8])
    b = ConvTranspose_11(x, w, strides=[3, 2], output_shape=[1, 1, 10, 8])
    np.testing.assert_array_equal(a, b)


def test_conv_transpose_errors():
    with pytest.raises(ValueError, match="W has 3 input channels, X has 2"):
        ConvTranspose_11(rand(1, 2, 4), rand(3, 1, 3))
    with pytest.raises(ValueError, match="leave an empty output"):
        ConvTranspose_11(rand(1, 1, 1), rand(1, 1, 2), pads=[1, 1])
    with pytest.raises(ValueError, match="output_padding has 1 values, expected 2"):
        ConvTranspose_11(rand(1, 1, 3, 3), rand(1, 1, 2, 2), output_padding=[1])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 9),
    k=st.integers(1, 4),
    s=st.integers(1, 4),
    d=st.integers(1, 3),
    pb=st.integers(0, 3),
    pe=st.integers(0, 3),
    group=st.sampled_from([1, 2]),
)
def test_conv_transpose_is_the_adjoint_of_conv(n, k, s, d, pb, pe, group):
    # <Conv(x), y> == <x, ConvTranspose(y)> with the same W, strides, dilations and pads.
    ext = (k - 1) * d + 1
    if n + pb + pe < ext:
        return
    C, M = 2 * group, 3 * group
    x = rand(2, C, n, dtype=np.float64)
    w = rand(M, C // group, k, dtype=np.float64)
    y_conv = Conv(x, w, strides=[s], dilations=[d], pads=[pb, pe], group=group)
    o = y_conv.shape[2]
    natural = s * (o - 1) + ext - pb - pe
    adj = n - natural  # what the conv's floor dropped: given back as output_padding
    assert 0 <= adj < s
    yy = rand(*y_conv.shape, dtype=np.float64)
    xt = ConvTranspose_11(
        yy, w, strides=[s], dilations=[d], pads=[pb, pe], group=group, output_padding=[adj]
    )
    assert xt.shape == x.shape
    np.testing.assert_allclose(np.sum(y_conv * yy), np.sum(x * xt), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# Col2Im
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "block", "kw"),
    [
        ([5, 5], [2, 2], {}),
        ([6, 7], [3, 2], {"strides": [2, 3], "pads": [1, 0, 0, 2], "dilations": [1, 2]}),
        ([4], [3], {"pads": [2, 1]}),
        ([3, 4, 3], [2, 2, 2], {"strides": [1, 2, 1]}),
    ],
)
def test_col2im_is_the_adjoint_of_im2col(image, block, kw):
    # Col2Im sums every block back into place: <im2col(x), c> == <x, Col2Im(c)>.
    x = rand(2, 3, *image, dtype=np.float64)
    win = window_geometry(tuple(image), tuple(block), **kw)
    cols = extract_windows(x, win)  # (N, C, *O, *K)
    nd = len(image)
    L = int(np.prod(win.out_shape))
    K = int(np.prod(block))
    cols = np.moveaxis(cols, list(range(2 + nd, 2 + 2 * nd)), list(range(2, 2 + nd)))
    cols = cols.reshape(2, 3 * K, L)
    c = rand(*cols.shape, dtype=np.float64)
    folded = Col2Im_18(c, np.array(image), np.array(block), **kw)
    assert folded.shape == x.shape
    np.testing.assert_allclose(np.sum(cols * c), np.sum(x * folded), rtol=1e-10)


def test_col2im_counts_overlaps():
    ones = np.ones((1, 4, 9), dtype=np.float32)  # 2x2 blocks over a 4x4 image, stride 1
    got = Col2Im_18(ones, np.array([4, 4]), np.array([2, 2]))
    np.testing.assert_array_equal(
        got[0, 0], [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]]
    )


def test_col2im_rejects_wrong_block_count():
    with pytest.raises(ValueError, match="input has 8 blocks but image_shape"):
        Col2Im_18(rand(1, 4, 8), np.array([4, 4]), np.array([2, 2]))
    with pytest.raises(ValueError, match="not divisible by prod"):
        Col2Im_18(rand(1, 5, 9), np.array([4, 4]), np.array([2, 2]))


# ----------------------------------------------------------------------------------------------
# DeformConv
# ----------------------------------------------------------------------------------------------


def deform_twin(x, w, offset, b, mask, strides, dilations, pads, group, offset_group):
    """Bilinear sampling (zeros outside) at every tap, one output element at a time (2-D)."""
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    oh, ow = offset.shape[2:]
    off = offset.reshape(N, offset_group, kh, kw, 2, oh, ow)
    msk = None if mask is None else mask.reshape(N, offset_group, kh, kw, oh, ow)

    def sample(img, py, px):
        y0, x0 = int(np.floor(py)), int(np.floor(px))
        val = 0.0
        for yy, xx in itertools.product((y0, y0 + 1), (x0, x0 + 1)):
            if 0 <= yy < H and 0 <= xx < W:
                val += (1 - abs(py - yy)) * (1 - abs(px - xx)) * img[yy, xx]
        return val

    y = np.zeros((N, M, oh, ow))
    Mg = M // group
    for n, m, i, j in itertools.product(range(N), range(M), range(oh), range(ow)):
        g = m // Mg
        acc = 0.0 if b is None else b[m]
        for c, a, e in itertools.product(range(Cg), range(kh), range(kw)):
            cin = g * Cg + c
            og = cin // (C // offset_group)
            py = i * strides[0] - pads[0] + a * dilations[0] + off[n, og, a, e, 0, i, j]
            px = j * strides[1] - pads[1] + e * dilations[1] + off[n, og, a, e, 1, i, j]
            v = sample(x[n, cin], py, px)
            if msk is not None:
                v *= msk[n, og, a, e, i, j]
            acc += v * w[m, c, a, e]
        y[n, m, i, j] = acc
    return y


def test_deform_conv_with_zero_offsets_is_conv():
    x, w = rand(2, 4, 7, 6), rand(6, 2, 3, 2)
    kw = {"strides": [2, 1], "dilations": [1, 2], "pads": [1, 0, 2, 1], "group": 2}
    ref = Conv(x, w, **kw)
    offset = np.zeros((2, 2 * 6 * 2, *ref.shape[2:]), dtype=np.float32)
    got = DeformConv_19(x, w, offset, offset_group=2, **kw)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("xs", "ws", "kw"),
    [
        ((2, 2, 9), (3, 2, 3), {"strides": [2], "pads": [1, 2]}),
        (
            (1, 2, 4, 5, 4),
            (2, 1, 2, 3, 2),
            {"group": 2, "dilations": [1, 1, 2], "pads": [0, 1, 0, 1, 0, 0]},
        ),
    ],
)
def test_deform_conv_is_n_dimensional(xs, ws, kw):
    x, w = rand(*xs), rand(*ws)
    ref = Conv(x, w, **kw)
    nd = len(xs) - 2
    offset = np.zeros((xs[0], int(np.prod(ws[2:])) * nd, *ref.shape[2:]), dtype=np.float32)
    np.testing.assert_allclose(DeformConv_19(x, w, offset, **kw), ref, rtol=1e-5, atol=1e-5)


def test_bfloat16_keeps_its_dtype():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x, w = rand(1, 2, 5, 5), rand(3, 2, 3, 3)
    got = Conv(x.astype(ml_dtypes.bfloat16), w.astype(ml_dtypes.bfloat16), pads=[1, 1, 1, 1])
    assert got.dtype == ml_dtypes.bfloat16
    want = Conv(x, w, pads=[1, 1, 1, 1])
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=0.05, atol=0.1)


def test_deform_conv_fractional_offsets_mask_and_groups():
    x, w = rand(1, 4, 5, 6), rand(2, 2, 2, 3)
    b = rand(2)
    oh, ow = 4, 3
    offset = (RNG.uniform(-1.5, 1.5, (1, 2 * 6 * 2, oh, ow))).astype(np.float32)
    mask = RNG.uniform(0, 1, (1, 2 * 6, oh, ow)).astype(np.float32)
    kw = {"strides": [1, 2], "dilations": [1, 1], "pads": [0, 1, 0, 0], "group": 2}
    got = DeformConv_19(x, w, offset, b, mask, offset_group=2, **kw)
    want = deform_twin(x, w, offset, b, mask, [1, 2], [1, 1], [0, 1], 2, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_deform_conv_rejects_offset_shape():
    with pytest.raises(ValueError, match="offset must have shape"):
        DeformConv_19(rand(1, 2, 4, 4), rand(1, 2, 2, 2), rand(1, 7, 3, 3))


def test_deform_conv_exact_mode_keeps_dtype():
    x, w = rand(1, 2, 4, 4), rand(3, 2, 2, 2)
    off = rand(1, 8, 3, 3) * 0.3
    got = DeformConv_19(x, w, off, ctx=EXACT)
    assert got.dtype == np.float32
    want = deform_twin(x, w, off, None, None, [1, 1], [1, 1], [0, 0], 1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
