"""Native CPU kernels from the C++ extension ember._C, with NumPy-friendly wrappers.

Each wrapper accepts any array layout (it makes a contiguous float32 copy only when needed) and
matches the reference op in ember.ops exactly for the dtypes it claims.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np


def _preload_onednn() -> None:
    """Load libdnnl.so.3 (pip package onednn-cpu-gomp) before ember._C needs it.

    _C's rpath finds it in a venv's lib/; this also covers --user and --target installs, where
    the library sits under a prefix that site-packages implies.
    """
    prefixes = [Path(sys.prefix)] + [
        Path(p).parents[2] for p in sys.path if p.endswith("site-packages")
    ]
    for prefix in prefixes:
        lib = prefix / "lib" / "libdnnl.so.3"
        if lib.exists():
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            return


_preload_onednn()

import ember._C as _C  # noqa: E402  (after the preload above)


def cpu_info() -> dict[str, bool]:
    """CPU features the native kernels dispatch on (avx2, avx512f, avx512vnni, avx512bf16, ...)."""
    return dict(_C.cpu_info())


def bias_relu(x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """max(x + bias, 0) with `bias` broadcast along the last axis; float32 only.

    >>> bias_relu(np.array([[-1.0, 2.0]], np.float32), np.array([0.5, -3.0], np.float32))
    array([[0., 0.]], dtype=float32)
    """
    if x.dtype != np.float32:
        raise TypeError(f"bias_relu takes float32, got {x.dtype}")
    if bias is not None and (bias.ndim != 1 or x.ndim == 0 or bias.shape[0] != x.shape[-1]):
        raise ValueError(
            f"bias_relu: bias shape {bias.shape} must be ({x.shape[-1] if x.ndim else '?'},), "
            "the size of x's last axis"
        )
    x = np.ascontiguousarray(x)
    b = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    y = np.empty_like(x)
    _C.bias_relu(x, b, y)
    return y


def isa() -> str:
    """The widest code path the native kernels take on this CPU: avx512, avx2 or scalar."""
    return str(_C.bias_relu_isa())
