"""Signal ops: DFT, STFT, the Hann/Hamming/Blackman windows and MelWeightMatrix.

Complex values travel as a trailing axis of size 2 (real, imaginary); a real signal has a trailing
axis of size 1. Transforms use `numpy.fft`: in single precision for float32/float16 inputs (as
onnxruntime does), in double precision for float64 inputs and in exact mode.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from ember.ops.registry import OpContext, op


def _np_dtype(onnx_dtype: int, what: str) -> np.dtype[Any]:
    try:
        return np.dtype(ir.DataType(onnx_dtype).numpy())
    except (ValueError, TypeError) as e:
        raise TypeError(f"{what}={onnx_dtype} is not a supported ONNX tensor type") from e


def _work_dtype(x: np.ndarray, ctx: OpContext | None) -> type[np.floating[Any]]:
    exact = ctx is not None and ctx.exact
    return np.float64 if exact or x.dtype == np.float64 else np.float32


def _to_complex(x: np.ndarray, op_name: str, real: type[np.floating[Any]]) -> np.ndarray:
    """(..., 1 or 2) real representation -> complex array without the trailing axis."""
    if x.ndim < 2 or x.shape[-1] not in (1, 2):
        raise ValueError(
            f"{op_name} input must end in an axis of size 1 (real) or 2 (complex), got {x.shape}"
        )
    x = x.astype(real)
    z = np.empty(x.shape[:-1], dtype=np.result_type(real, np.complex64))
    z.real = x[..., 0]
    z.imag = x[..., 1] if x.shape[-1] == 2 else 0
    return z


def _to_real_pairs(z: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1).astype(dtype)


def _signal_axis(axis: int, rank: int) -> int:
    # The trailing real/imaginary axis is not a signal axis: valid range [-r, -2] U [0, r-2].
    if not (-rank <= axis <= -2 or 0 <= axis <= rank - 2):
        raise ValueError(
            f"DFT axis {axis} is out of range for a rank-{rank} input "
            f"(valid: [{-rank}, -2] or [0, {rank - 2}])"
        )
    return axis % rank


def _dft(
    x: np.ndarray,
    dft_length: np.ndarray | None,
    axis: int,
    inverse: int,
    onesided: int,
    ctx: OpContext | None,
) -> np.ndarray:
    ax = _signal_axis(axis, x.ndim)
    # Dropping the trailing real/imaginary axis leaves the signal axis at the same index.
    z = _to_complex(x, "DFT", _work_dtype(x, ctx))
    n_in = z.shape[ax]
    if dft_length is not None:
        n = int(np.asarray(dft_length).reshape(-1)[0])
        if n <= 0:
            raise ValueError(f"DFT dft_length must be positive, got {n}")
    elif inverse and onesided:
        n = 2 * (n_in - 1)  # IRFFT: the input holds floor(n/2) + 1 bins of an even-length signal
    else:
        n = n_in
    if inverse and onesided:
        if x.shape[-1] != 2:
            raise ValueError("DFT with inverse=1 and onesided=1 (IRFFT) needs a complex input")
        return np.fft.irfft(z, n=n, axis=ax)[..., None].astype(x.dtype)
    if inverse:
        return _to_real_pairs(np.fft.ifft(z, n=n, axis=ax), x.dtype)
    if onesided:
        if x.shape[-1] != 1:
            raise ValueError("DFT with onesided=1 (RFFT) needs a real input (last axis of size 1)")
        return _to_real_pairs(np.fft.rfft(z.real, n=n, axis=ax), x.dtype)
    return _to_real_pairs(np.fft.fft(z, n=n, axis=ax), x.dtype)


@op
def DFT_17(
    input: np.ndarray,
    dft_length: np.ndarray | None = None,
    *,
    axis: int = 1,
    inverse: int = 0,
    onesided: int = 0,
    ctx: OpContext | None = None,
) -> np.ndarray:
    """DFT along `axis` (an attribute); onesided gives RFFT, onesided+inverse gives IRFFT."""
    return _dft(input, dft_length, axis, inverse, onesided, ctx)


@op
def DFT_20(
    input: np.ndarray,
    dft_length: np.ndarray | None = None,
    axis: np.ndarray | None = None,
    *,
    inverse: int = 0,
    onesided: int = 0,
    ctx: OpContext | None = None,
) -> np.ndarray:
    """DFT with `axis` as an optional input (default -2, the last signal axis)."""
    ax = -2 if axis is None else int(np.asarray(axis).reshape(-1)[0])
    return _dft(input, dft_length, ax, inverse, onesided, ctx)


@op
def STFT_17(
    signal: np.ndarray,
    frame_step: np.ndarray,
    window: np.ndarray | None = None,
    frame_length: np.ndarray | None = None,
    *,
    onesided: int = 1,
    ctx: OpContext | None = None,
) -> np.ndarray:
    """Short-time Fourier transform: signal (B, N, 1|2) -> (B, frames, bins, 2)."""
    if signal.ndim != 3:
        raise ValueError(f"STFT signal must have shape (batch, length, 1 or 2), got {signal.shape}")
    step = int(np.asarray(frame_step).reshape(-1)[0])
    if step <= 0:
        raise ValueError(f"STFT frame_step must be positive, got {step}")
    if frame_length is not None:
        L = int(np.asarray(frame_length).reshape(-1)[0])
        if window is not None and window.shape[0] != L:
            raise ValueError(f"STFT window length {window.shape[0]} differs from frame_length {L}")
    elif window is not None:
        L = window.shape[0]
    else:
        raise ValueError("STFT needs a window or a frame_length")
    N = signal.shape[1]
    if not 0 < L <= N:
        raise ValueError(f"STFT frame length {L} must be in [1, signal length {N}]")
    if onesided and signal.shape[-1] == 2:
        raise ValueError("STFT with onesided=1 needs a real signal (last axis of size 1)")
    n_frames = 1 + (N - L) // step
    real = _work_dtype(signal, ctx)
    z = _to_complex(signal, "STFT", real)  # (B, N)
    frames = z[:, np.arange(n_frames)[:, None] * step + np.arange(L)[None, :]]  # (B, F, L)
    if window is not None:
        frames = frames * window.astype(real)
    spectrum = np.fft.rfft(frames.real, axis=-1) if onesided else np.fft.fft(frames, axis=-1)
    return _to_real_pairs(spectrum, signal.dtype)


def _cosine_window(
    size: np.ndarray, coefficients: tuple[float, ...], output_datatype: int, periodic: int
) -> np.ndarray:
    """sum_k (-1)^k a_k cos(2 pi k n / N), N = size (periodic) or size - 1 (symmetric)."""
    n_out = int(np.asarray(size).reshape(-1)[0])
    if n_out < 0:
        raise ValueError(f"window size must be non-negative, got {n_out}")
    dtype = _np_dtype(output_datatype, "output_datatype")
    denominator = n_out if periodic else n_out - 1
    if denominator == 0:
        return np.ones(n_out, dtype=dtype)  # a symmetric window of one point: 0/0, 1 by convention
    n = np.arange(n_out, dtype=np.float64)
    w = np.zeros(n_out, dtype=np.float64)
    for k, a in enumerate(coefficients):
        w += (-1) ** k * a * np.cos(2 * np.pi * k * n / denominator)
    return w.astype(dtype)


@op
def HannWindow_17(size: np.ndarray, *, output_datatype: int = 1, periodic: int = 1) -> np.ndarray:
    """0.5 - 0.5 cos(2 pi n / N)."""
    return _cosine_window(size, (0.5, 0.5), output_datatype, periodic)


@op
def HammingWindow_17(
    size: np.ndarray, *, output_datatype: int = 1, periodic: int = 1
) -> np.ndarray:
    """25/46 - 21/46 cos(2 pi n / N)."""
    return _cosine_window(size, (25 / 46, 1 - 25 / 46), output_datatype, periodic)


@op
def BlackmanWindow_17(
    size: np.ndarray, *, output_datatype: int = 1, periodic: int = 1
) -> np.ndarray:
    """0.42 - 0.5 cos(2 pi n / N) + 0.08 cos(4 pi n / N)."""
    return _cosine_window(size, (0.42, 0.5, 0.08), output_datatype, periodic)


@op
def MelWeightMatrix_17(
    num_mel_bins: np.ndarray,
    dft_length: np.ndarray,
    sample_rate: np.ndarray,
    lower_edge_hertz: np.ndarray,
    upper_edge_hertz: np.ndarray,
    *,
    output_datatype: int = 1,
) -> np.ndarray:
    """(dft_length // 2 + 1, num_mel_bins) triangular filters evenly spaced on the mel scale.

    Follows the spec's reference formula, including its integer flooring of the bin edges.
    """
    n_mel = int(np.asarray(num_mel_bins).reshape(-1)[0])
    n_dft = int(np.asarray(dft_length).reshape(-1)[0])
    rate = np.asarray(sample_rate).reshape(())
    low, high = np.asarray(lower_edge_hertz).reshape(()), np.asarray(upper_edge_hertz).reshape(())
    if n_mel <= 0 or n_dft <= 0 or rate <= 0:
        raise ValueError(
            f"MelWeightMatrix needs positive num_mel_bins, dft_length and sample_rate, got "
            f"{n_mel}, {n_dft}, {rate}"
        )
    if not 0 <= low < high:
        raise ValueError(
            f"MelWeightMatrix needs 0 <= lower_edge_hertz < upper_edge_hertz, got {low}, {high}"
        )
    dtype = _np_dtype(output_datatype, "output_datatype")
    n_bins = n_dft // 2 + 1
    # NOTE: the arithmetic keeps the inputs' dtypes (as the spec's reference does) because the
    # floor below makes the bin edges sensitive to rounding.
    low_mel = 2595 * np.log1p(low / 700) / np.log(10)
    high_mel = 2595 * np.log1p(high / 700) / np.log(10)
    mel_step = (high_mel - low_mel) / (n_mel + 2)
    mels = np.arange(0, n_mel + 2) * mel_step + low_mel
    hertz = 700 * np.expm1(mels / 2595 * np.log(10))
    edges = ((n_dft + 1) * hertz // rate).astype(np.int64)  # (n_mel + 2,)
    lo, center, hi = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]  # (1, n_mel) each
    j = np.arange(n_bins)[:, None]  # (n_bins, 1)
    rise = np.where(center > lo, (j - lo) / np.maximum(center - lo, 1), 1.0)
    rise = np.where((j >= lo) & (j <= center), rise, 0.0)
    fall = (hi - j) / np.maximum(hi - center, 1)
    out = np.where((j >= center) & (j < hi), fall, rise)
    return out.astype(dtype)
