"""DFT/STFT against complex NumPy twins; windows and MelWeightMatrix against their formulas."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from ember.ops.registry import OpContext
from ember.ops.signal import (
    DFT_17,
    DFT_20,
    STFT_17,
    BlackmanWindow_17,
    HammingWindow_17,
    HannWindow_17,
    MelWeightMatrix_17,
)

RNG = np.random.default_rng(0)
EXACT = OpContext(exact=True)


def real(*shape):
    return RNG.standard_normal((*shape, 1)).astype(np.float32)


def cplx(*shape):
    return RNG.standard_normal((*shape, 2)).astype(np.float32)


def as_complex(x):
    x = x.astype(np.float64)
    return x[..., 0] + 1j * x[..., 1] if x.shape[-1] == 2 else x[..., 0]


def pairs(z):
    return np.stack([z.real, z.imag], axis=-1)


@pytest.mark.parametrize("axis", [1, 2, -2, -3])
@pytest.mark.parametrize("make", [real, cplx])
def test_dft_along_each_axis(axis, make):
    x = make(2, 5, 6)
    got = DFT_20(x, None, np.int64(axis), ctx=EXACT)
    ax = axis % 4
    np.testing.assert_allclose(got, pairs(np.fft.fft(as_complex(x), axis=ax)), rtol=1e-5, atol=1e-5)
    assert got.dtype == np.float32 and got.shape == (2, 5, 6, 2)


def test_dft17_axis_attribute_matches_dft20_input():
    x = cplx(3, 4, 5)
    np.testing.assert_array_equal(DFT_17(x, axis=2), DFT_20(x, None, np.int64(2)))
    np.testing.assert_array_equal(DFT_17(x), DFT_20(x, None, np.int64(1)))  # 17's default is 1
    np.testing.assert_array_equal(DFT_20(x), DFT_20(x, None, np.int64(-2)))  # 20's default is -2


@pytest.mark.parametrize("length", [3, 8])
def test_dft_length_pads_or_truncates(length):
    x = real(2, 5)
    got = DFT_20(x, np.int64(length), np.int64(1), ctx=EXACT)
    np.testing.assert_allclose(got, pairs(np.fft.fft(as_complex(x), n=length, axis=1)), atol=1e-5)


def test_inverse_round_trips():
    x = cplx(2, 7)
    back = DFT_20(DFT_20(x, None, np.int64(1)), None, np.int64(1), inverse=1)
    np.testing.assert_allclose(back, x, atol=1e-5)


def test_rfft_and_irfft():
    x = real(2, 10)
    spectrum = DFT_20(x, None, np.int64(1), onesided=1, ctx=EXACT)
    assert spectrum.shape == (2, 6, 2)
    np.testing.assert_allclose(spectrum, pairs(np.fft.rfft(as_complex(x), axis=1)), atol=1e-5)
    back = DFT_20(spectrum, None, np.int64(1), onesided=1, inverse=1)
    assert back.shape == (2, 10, 1)
    np.testing.assert_allclose(back, x, atol=1e-5)
    odd = DFT_20(
        DFT_20(real(1, 9), None, np.int64(1), onesided=1),
        np.int64(9),
        np.int64(1),
        onesided=1,
        inverse=1,
    )
    assert odd.shape == (1, 9, 1)


def test_dft_float64_and_float16_keep_their_dtype():
    assert DFT_20(real(1, 4).astype(np.float64)).dtype == np.float64
    assert DFT_20(real(1, 4).astype(np.float16)).dtype == np.float16


def test_dft_exact_mode_is_double_precision():
    x = real(1, 64)
    ref = pairs(np.fft.fft(as_complex(x), axis=1))
    exact = DFT_20(x, None, np.int64(1), ctx=EXACT)
    np.testing.assert_array_equal(exact, ref.astype(np.float32))


def test_dft_bad_values():
    with pytest.raises(ValueError, match=r"DFT axis -1 is out of range for a rank-3 input"):
        DFT_20(real(2, 3), None, np.int64(-1))
    with pytest.raises(ValueError, match=r"end in an axis of size 1 \(real\) or 2 \(complex\)"):
        DFT_20(np.zeros((2, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"RFFT.*needs a real input"):
        DFT_20(cplx(2, 4), None, np.int64(1), onesided=1)
    with pytest.raises(ValueError, match=r"IRFFT.*needs a complex input"):
        DFT_20(real(2, 4), None, np.int64(1), onesided=1, inverse=1)
    with pytest.raises(ValueError, match="dft_length must be positive"):
        DFT_20(real(2, 4), np.int64(0), np.int64(1))


# ----------------------------------------------------------------------------------------------
# STFT
# ----------------------------------------------------------------------------------------------


def twin_stft(signal, step, window, length, onesided):
    z = as_complex(signal)
    n_frames = 1 + (z.shape[1] - length) // step
    w = np.ones(length) if window is None else window.astype(np.float64)
    frames = [np.fft.fft(z[:, f * step : f * step + length] * w, axis=-1) for f in range(n_frames)]
    out = np.stack(frames, axis=1)
    return pairs(out[..., : length // 2 + 1] if onesided else out)


@pytest.mark.parametrize("onesided", [0, 1])
@pytest.mark.parametrize("with_window", [False, True])
def test_stft_matches_twin(onesided, with_window):
    x = real(2, 37)
    window = HannWindow_17(np.int64(8)) if with_window else None
    got = STFT_17(x, np.int64(5), window, np.int64(8), onesided=onesided, ctx=EXACT)
    expected = twin_stft(x, 5, window, 8, onesided)
    assert got.shape == expected.shape == (2, 6, 5 if onesided else 8, 2)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_stft_complex_signal_two_sided():
    x = cplx(1, 16)
    got = STFT_17(x, np.int64(4), None, np.int64(4), onesided=0)
    np.testing.assert_allclose(got, twin_stft(x, 4, None, 4, 0), atol=1e-5)


def test_stft_bad_values():
    with pytest.raises(ValueError, match="needs a window or a frame_length"):
        STFT_17(real(1, 8), np.int64(2))
    with pytest.raises(ValueError, match="window length 4 differs from frame_length 5"):
        STFT_17(real(1, 8), np.int64(2), np.ones(4, np.float32), np.int64(5))
    with pytest.raises(ValueError, match=r"frame length 9 must be in \[1, signal length 8\]"):
        STFT_17(real(1, 8), np.int64(2), None, np.int64(9))
    with pytest.raises(ValueError, match="frame_step must be positive"):
        STFT_17(real(1, 8), np.int64(0), None, np.int64(4))
    with pytest.raises(ValueError, match="onesided=1 needs a real signal"):
        STFT_17(cplx(1, 8), np.int64(2), None, np.int64(4))


# ----------------------------------------------------------------------------------------------
# Windows
# ----------------------------------------------------------------------------------------------


def cosine_sum(coefficients, n_out, periodic):
    N = n_out if periodic else n_out - 1
    n = np.arange(n_out)
    return sum((-1) ** k * a * np.cos(2 * np.pi * k * n / N) for k, a in enumerate(coefficients))


@pytest.mark.parametrize("periodic", [0, 1])
@pytest.mark.parametrize("size", [2, 7, 10])
@pytest.mark.parametrize(
    ("fn", "coefficients"),
    [
        (HannWindow_17, (0.5, 0.5)),
        (HammingWindow_17, (25 / 46, 21 / 46)),
        (BlackmanWindow_17, (0.42, 0.5, 0.08)),
    ],
)
def test_windows(fn, coefficients, size, periodic):
    got = fn(np.int32(size), periodic=periodic)
    assert got.dtype == np.float32 and got.shape == (size,)
    np.testing.assert_allclose(got, cosine_sum(coefficients, size, periodic), atol=1e-6)


def test_window_dtypes_and_tiny_sizes():
    assert HannWindow_17(np.int64(4), output_datatype=TensorProto.DOUBLE).dtype == np.float64
    assert HannWindow_17(np.int64(0)).shape == (0,)
    np.testing.assert_array_equal(HannWindow_17(np.int64(1), periodic=0), [1.0])  # as NumPy, torch
    with pytest.raises(ValueError, match="window size must be non-negative"):
        HannWindow_17(np.int64(-1))
    with pytest.raises(TypeError, match="output_datatype=99 is not a supported ONNX tensor type"):
        HannWindow_17(np.int64(3), output_datatype=99)


# ----------------------------------------------------------------------------------------------
# MelWeightMatrix: the spec's reference loops, written out
# ----------------------------------------------------------------------------------------------


def twin_mel(n_mel, n_dft, rate, low, high):
    n_bins = n_dft // 2 + 1
    bins = np.arange(0, n_mel + 2)
    low_mel = 2595 * np.log1p(low / 700) / np.log(10)
    high_mel = 2595 * np.log1p(high / 700) / np.log(10)
    step = (high_mel - low_mel) / bins.shape[0]
    bins = 700 * np.expm1((bins * step + low_mel) / 2595 * np.log(10))
    bins = ((n_dft + 1) * bins // rate).astype(int)
    out = np.zeros((n_bins, n_mel))
    for i in range(n_mel):
        lo, c, hi = bins[i], bins[i + 1], bins[i + 2]
        if c == lo:
            out[c, i] = 1
        else:
            for j in range(lo, c + 1):
                out[j, i] = (j - lo) / (c - lo)
        for j in range(c, hi):
            out[j, i] = (hi - j) / (hi - c)
    return out


@pytest.mark.parametrize(
    "args",
    [(8, 16, 8192, 0.0, 4096.0), (10, 64, 16000, 100.0, 7000.0), (4, 512, 22050, 20.0, 11025.0)],
)
def test_mel_weight_matrix(args):
    n_mel, n_dft, rate, low, high = args
    got = MelWeightMatrix_17(
        np.int32(n_mel), np.int32(n_dft), np.int32(rate), np.float32(low), np.float32(high)
    )
    expected = twin_mel(
        np.int32(n_mel), np.int32(n_dft), np.int32(rate), np.float32(low), np.float32(high)
    )
    assert got.dtype == np.float32 and got.shape == (n_dft // 2 + 1, n_mel)
    np.testing.assert_allclose(got, expected, atol=1e-7)


def test_mel_weight_matrix_bad_values():
    with pytest.raises(ValueError, match="positive num_mel_bins"):
        MelWeightMatrix_17(np.int32(0), np.int32(16), np.int32(8000), np.float32(0), np.float32(10))
    with pytest.raises(ValueError, match="lower_edge_hertz < upper_edge_hertz"):
        MelWeightMatrix_17(np.int32(4), np.int32(16), np.int32(8000), np.float32(10), np.float32(5))
