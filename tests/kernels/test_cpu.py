"""Native CPU kernels (ember._C) against the NumPy reference ops, on odd shapes and layouts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ember.kernels import cpu


def reference(x: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    return np.maximum(x + bias, 0) if bias is not None else np.maximum(x, 0)


def test_cpu_info_reports_features() -> None:
    info = cpu.cpu_info()
    assert {"avx2", "avx512f", "avx512vnni", "avx512bf16"} <= set(info)
    assert cpu.isa() in ("avx512", "avx2", "scalar")


@pytest.mark.parametrize("shape", [(1,), (7,), (15,), (16,), (17,), (3, 33), (2, 5, 129), (0, 4)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_relu_odd_shapes(shape, with_bias) -> None:
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    bias = rng.standard_normal(shape[-1]).astype(np.float32) if with_bias else None
    np.testing.assert_array_equal(cpu.bias_relu(x, bias), reference(x, bias))


def test_bias_relu_non_contiguous() -> None:
    x = np.random.default_rng(1).standard_normal((40, 30)).astype(np.float32)
    view = x[::3, 1::2]  # strided in both axes
    bias = np.linspace(-1, 1, view.shape[1], dtype=np.float32)
    np.testing.assert_array_equal(cpu.bias_relu(view, bias), reference(view, bias))
    np.testing.assert_array_equal(cpu.bias_relu(x.T), reference(x.T, None))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=40),
        elements=st.floats(-1e6, 1e6, width=32),
    )
)
def test_bias_relu_matches_reference(x) -> None:
    bias = np.arange(x.shape[-1], dtype=np.float32) - x.shape[-1] / 2
    np.testing.assert_array_equal(cpu.bias_relu(x, bias), reference(x, bias))


def test_bias_relu_bad_inputs() -> None:
    with pytest.raises(TypeError, match="takes float32, got float64"):
        cpu.bias_relu(np.zeros(3))
    with pytest.raises(ValueError, match=r"bias shape \(4,\) must be \(3,\)"):
        cpu.bias_relu(np.zeros(3, np.float32), np.zeros(4, np.float32))
