"""oneDNN-backed CPU kernels (ember._C: csrc/dnnl_kernels.h) with NumPy-friendly signatures.

Conv and MatMul prepack their constant weights once; matmul reads strided views in place; pooling
gives ONNX output sizes. Arrays are float32 (a contiguous copy is made only when a kernel needs
one) and `out=` takes a preallocated C-contiguous float32 array. Nothing here knows ONNX graphs:
the runtime maps FusedConv / FusedMatMul / FusedGemm / pooling nodes onto these.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ember.kernels.cpu import _C

#: a buffer of a Program (ember._C.Program): (buffer number, shape)
BufferRef = tuple[int, Sequence[int]]

# The activations Conv and MatMul fuse, with how many params each takes (ONNX attribute order;
# missing ones take the ONNX defaults). Semantics = the ONNX op of that name.
ACTIVATIONS: dict[str, int] = {
    "Relu": 0,
    "LeakyRelu": 1,  # alpha
    "Clip": 2,  # min, max
    "Sigmoid": 0,
    "Tanh": 0,
    "HardSigmoid": 2,  # alpha, beta
    "HardSwish": 0,
    "Gelu": 0,  # erf
    "GeluTanh": 0,
    "Elu": 1,  # alpha
}


def set_num_threads(n: int) -> None:
    """Threads every native kernel uses (one OpenMP pool, shared with oneDNN), from any thread.

    Calls too small to gain from splitting (under ~0.25 MFLOP, or 32 KB moved) run on one thread.

    >>> n = get_num_threads(); set_num_threads(1); get_num_threads()
    1
    >>> set_num_threads(n)
    """
    _C.set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads every native kernel uses."""
    return int(_C.get_num_threads())


def bf16_native() -> bool:
    """Whether `bf16=True` runs bfloat16 kernels on this CPU (AVX512-BF16 or AMX).

    Elsewhere oneDNN has only slow reference bf16 kernels, so Conv and MatMul compute in float32.
    """
    return bool(_C.bf16_native())


def _ints(value: Sequence[int] | None, n: int, default: int) -> list[int]:
    return [default] * n if value is None else [int(v) for v in value]


class Conv(_C.Conv):
    """A convolution with prepacked weights: `Conv(W, B, ...)(x, z) = act(conv(x, W) + B + z)`.

    weight is ONNX (K, C/group, k...) with 1 to 3 spatial axes; pads are ONNX order (begins, then
    ends); dilations count ONNX's way (1 = dense). With channels_last, x, z and y are N...C
    arrays ((N, H, W, C) for 2-D), the layout oneDNN's fastest kernels read; else NC... .
    bf16 packs the weights and converts x to bfloat16 (f32 accumulation and output): about 2x
    faster, ~1e-2 relative error; float32 where the CPU lacks bf16 (see `bf16_native`).
    NC... convs run as N...C inside when oneDNN's NC... kernel is gemm-based (x, z converted in,
    y out: still 1.3-30x faster).
    NOTE: out must not overlap x or z (oneDNN may accumulate partial sums in dst).

    >>> w = np.ones((2, 1, 3, 3), np.float32)
    >>> conv = Conv(w, np.array([0.0, -5.0], np.float32), pads=[1, 1, 1, 1], activation="Relu")
    >>> conv(np.ones((1, 1, 3, 3), np.float32))[0, :, 1]
    array([[6., 9., 6.],
           [1., 4., 1.]], dtype=float32)
    """

    def __init__(
        self,
        weight: np.ndarray,
        bias: np.ndarray | None = None,
        *,
        strides: Sequence[int] | None = None,
        pads: Sequence[int] | None = None,
        dilations: Sequence[int] | None = None,
        group: int = 1,
        channels_last: bool | int = False,
        activation: str = "",
        activation_params: Sequence[float] = (),
        bf16: bool = False,
    ) -> None:
        nd = max(np.ndim(weight) - 2, 1)
        super().__init__(
            weight,
            bias,
            strides=_ints(strides, nd, 1),
            pads=_ints(pads, 2 * nd, 0),
            dilations=_ints(dilations, nd, 1),
            group=int(group),
            channels_last=bool(channels_last),
            activation=activation,
            activation_params=[float(p) for p in activation_params],
            bf16=bool(bf16),
        )


class MatMul(_C.MatMul):
    """A matmul with a constant, prepacked B: `MatMul(B, bias)(a) = act(alpha * a @ B + bias)`.

    a is (..., K) (leading axes flattened into rows), B is (K, N) or, with trans_b, (N, K) as
    Gemm's transB gives it (no copy). bias is (N,). alpha is folded into the packed B.

    >>> mm = MatMul(np.eye(3, 2, dtype=np.float32), np.ones(2, np.float32), activation="Relu")
    >>> mm(np.array([[1.0, -5.0, 3.0]], np.float32))
    array([[2., 0.]], dtype=float32)
    """

    def __init__(
        self,
        b: np.ndarray,
        bias: np.ndarray | None = None,
        *,
        trans_b: bool = False,
        activation: str = "",
        activation_params: Sequence[float] = (),
        alpha: float = 1.0,
        bf16: bool = False,
    ) -> None:
        super().__init__(
            b,
            bias,
            trans_b=bool(trans_b),
            activation=activation,
            activation_params=[float(p) for p in activation_params],
            alpha=float(alpha),
            bf16=bool(bf16),
        )


def matmul(
    a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, *, alpha: float = 1.0
) -> np.ndarray:
    """alpha * (a @ b) for rank 2-4 operands, broadcasting batch axes like np.matmul.

    Strided views (b = k.transpose(0, 1, 3, 2), heads sliced out of a wider tensor) are read in
    place when oneDNN has a kernel for their strides, else copied once per call.

    >>> a = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    >>> matmul(a, a.transpose(0, 2, 1), alpha=0.5)
    array([[[ 2.5,  7. ],
            [ 7. , 25. ]]], dtype=float32)
    """
    return _C.matmul(a, b, out, float(alpha))


def _window(
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    dilations: Sequence[int] | None,
) -> tuple[list[int], list[int], list[int], list[int]]:
    """A pooling window as the native pools take it, ONNX's defaults filled in."""
    nd = len(kernel_shape)
    return (
        [int(k) for k in kernel_shape],
        _ints(strides, nd, 1),
        _ints(pads, 2 * nd, 0),
        _ints(dilations, nd, 1),
    )


def _pool(
    x: np.ndarray,
    kind: int,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    dilations: Sequence[int] | None,
    ceil_mode: bool | int,
    channels_last: bool | int,
    out: np.ndarray | None,
) -> np.ndarray:
    window = _window(kernel_shape, strides, pads, dilations)
    return _C.pool(x, kind, *window, bool(ceil_mode), bool(channels_last), out)


def max_pool(
    x: np.ndarray,
    *,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    ceil_mode: bool | int = False,
    channels_last: bool | int = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """ONNX MaxPool (one output) over NC... or, with channels_last, N...C input.

    >>> max_pool(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4), kernel_shape=[2, 2],
    ...          strides=[2, 2])
    array([[[[ 5.,  7.],
             [13., 15.]]]], dtype=float32)
    """
    return _pool(x, 0, kernel_shape, strides, pads, dilations, ceil_mode, channels_last, out)


def avg_pool(
    x: np.ndarray,
    *,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    count_include_pad: bool | int = False,
    ceil_mode: bool | int = False,
    channels_last: bool | int = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """ONNX AveragePool over NC... or, with channels_last, N...C input.

    >>> avg_pool(np.ones((1, 1, 2, 2), np.float32), kernel_shape=[2, 2], pads=[1, 1, 0, 0],
    ...          count_include_pad=True)
    array([[[[0.25, 0.5 ],
             [0.5 , 1.  ]]]], dtype=float32)
    """
    kind = 1 if count_include_pad else 2
    return _pool(x, kind, kernel_shape, strides, pads, dilations, ceil_mode, channels_last, out)


def global_avg_pool(
    x: np.ndarray, *, channels_last: bool | int = False, out: np.ndarray | None = None
) -> np.ndarray:
    """ONNX GlobalAveragePool: (N, C, H, W) -> (N, C, 1, 1), or (N, H, W, C) -> (N, 1, 1, C).

    >>> global_avg_pool(np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2), channels_last=True)
    array([[[[3., 4.]]]], dtype=float32)
    """
    if np.ndim(x) < 3:
        raise ValueError(f"global_avg_pool: x must have rank >= 3, got shape {np.shape(x)}")
    spatial = x.shape[1:-1] if channels_last else x.shape[2:]
    return _pool(x, 2, spatial, None, None, None, False, channels_last, out)


def pool_step(
    x: BufferRef,
    out: BufferRef,
    *,
    kind: int,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    ceil_mode: bool | int = False,
    channels_last: bool | int = False,
) -> _C.ProgramStep:
    """The pooling `_pool` runs (kind 0 max, 1 average counting padding, 2 average), as a step of
    a Program on buffers given as (number, shape); shapes are checked now."""
    window = _window(kernel_shape, strides, pads, dilations)
    return _C.pool_step(x, kind, *window, bool(ceil_mode), bool(channels_last), out)


def relayout_step(x: BufferRef, out: BufferRef, *, to_channels_last: bool) -> _C.ProgramStep:
    """to_channels_last / to_channels_first as a step of a Program (see pool_step)."""
    return _C.relayout_step(x, out, to_channels_last)


def to_channels_last(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(N, C, spatial...) -> (N, spatial..., C), contiguous; strided views are read in place.

    >>> to_channels_last(np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1))[0, :, 0]
    array([[0., 2.],
           [1., 3.]], dtype=float32)
    """
    return _C.to_channels_last(x, out)


def to_channels_first(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(N, spatial..., C) -> (N, C, spatial...), contiguous; strided views are read in place.

    >>> to_channels_first(np.arange(4, dtype=np.float32).reshape(1, 2, 1, 2))[0, :, :, 0]
    array([[0., 2.],
           [1., 3.]], dtype=float32)
    """
    return _C.to_channels_first(x, out)
