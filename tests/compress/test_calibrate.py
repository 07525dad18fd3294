"""Calibration: the streaming histogram (bounded, exact re-binning), each range method on known
distributions, calibrate() on a zoo model, and the empty / capped calibration sets."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.compress import QuantConfig, calibrate
from ember.compress.calibrate import HISTOGRAM_BINS, Histogram, compute_range
from ember.errors import ConfigError
from ember.ir import load_model
from ember.zoo import load_eval, model_path

RNG = np.random.default_rng(0)


def filled(*chunks: np.ndarray) -> Histogram:
    h = Histogram()
    for c in chunks:
        h.add(c)
    return h


# --- the histogram ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-1e3, 1e3), st.floats(1e-3, 1e3), st.integers(1, 200)),
        min_size=1,
        max_size=8,
    )
)
def test_histogram_keeps_every_value_in_a_fixed_number_of_bins(
    chunks: list[tuple[float, float, int]],
) -> None:
    rng = np.random.default_rng(1)
    h = Histogram(bins=64)
    values = []
    for center, spread, n in chunks:  # ranges that grow in both directions, batch by batch
        v = (center + spread * rng.standard_normal(n)).astype(np.float32)
        values.append(v)
        h.add(v)
        assert h.counts.shape == (64,)
    allv = np.concatenate(values)
    assert h.total == allv.size
    assert h.lo <= allv.min() and allv.max() <= h.hi
    assert (h.min, h.max) == (float(allv.min()), float(allv.max()))
    # Re-binning is exact: every value sits in the final bin that contains it (up to values on a
    # bin edge, which rounding in the edge arithmetic may put on either side).
    expected, _ = np.histogram(allv, bins=64, range=(h.lo, h.hi))
    assert np.abs(expected - h.counts).sum() <= 2 * len(chunks)


def test_histogram_ignores_nan_and_inf_and_handles_a_constant_tensor() -> None:
    h = filled(np.array([np.nan, np.inf, -np.inf, 2.0, 2.0], np.float32))
    assert h.total == 2 and h.min == h.max == 2.0
    assert h.lo < 2.0 < h.hi
    r = compute_range(h, "minmax", symmetric=False)
    assert (r.lo, r.hi) == (2.0, 2.0)


def test_histogram_memory_does_not_grow_with_samples() -> None:
    h = Histogram()
    h.add(RNG.standard_normal(1000))
    size_after_one = h.counts.nbytes
    for i in range(200):
        h.add(RNG.standard_normal(1000) * (1 + i))  # the range keeps widening
    assert h.counts.nbytes == size_after_one == HISTOGRAM_BINS * 8
    assert h.total == 201 * 1000


def test_calibration_memory_is_bounded_by_one_batch() -> None:
    """Peak traced memory of calibrating 10 vs 100 batches: the same, within noise."""
    model = load_model(model_path("mnist_mlp"))
    x = load_eval("mnist_mlp").x[:50]
    tensors = [n.outputs[0].name or "" for n in model.graph]

    def peak(batches: int) -> int:
        def gen() -> Iterator[dict[str, np.ndarray]]:
            for _ in range(batches):
                yield {"input": x}

        tracemalloc.start()
        calibrate(model, gen(), QuantConfig(), tensors=tensors)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(10), peak(100)
    # 100 batches of activations held at once would be ~ 100 x 50 x (256+128+10) x 4 B = 7.9 MB.
    assert large < 1.5 * small + 1_000_000


# --- the range methods on known distributions ---------------------------------------------------


def test_minmax_is_the_exact_extremes() -> None:
    v = RNG.uniform(-3.0, 5.0, 100_000).astype(np.float32)
    r = compute_range(filled(v), "minmax", symmetric=False)
    assert (r.lo, r.hi) == (float(v.min()), float(v.max()))
    s = compute_range(filled(v), "minmax", symmetric=True)
    assert s.lo == -s.hi == -float(np.abs(v).max())


def test_percentile_on_a_normal_distribution() -> None:
    v = RNG.standard_normal(1_000_000).astype(np.float32)
    h = filled(v)
    asym = compute_range(h, "percentile", symmetric=False, percentile=99.0)
    assert asym.lo == pytest.approx(-2.326, abs=0.03) and asym.hi == pytest.approx(2.326, abs=0.03)
    sym = compute_range(h, "percentile", symmetric=True, percentile=99.0)
    assert sym.hi == -sym.lo == pytest.approx(2.576, abs=0.03)  # 99% of |x|


def test_percentile_100_is_minmax() -> None:
    v = RNG.standard_normal(10_000).astype(np.float32)
    r = compute_range(filled(v), "percentile", symmetric=False, percentile=100.0)
    assert r.lo == pytest.approx(float(v.min())) and r.hi == pytest.approx(float(v.max()))


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_search_methods_clip_a_lone_outlier(method: str) -> None:
    v = RNG.laplace(size=1_000_000).astype(np.float32)
    h = filled(v, np.array([200.0], np.float32))
    r = compute_range(h, method, symmetric=True)
    # far below the outlier, above the bulk (|x| < 5 for 99.3%); mse pays the outlier's squared
    # error, so it stops higher than entropy
    assert 5.0 < r.hi < 50.0
    assert r.lo == -r.hi


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_search_methods_keep_the_full_range_of_a_uniform_distribution(method: str) -> None:
    v = RNG.uniform(-1.0, 1.0, 1_000_000).astype(np.float32)
    r = compute_range(filled(v), method, symmetric=False)
    assert r.lo < -0.95 and r.hi > 0.95


@pytest.mark.parametrize("method", ["entropy", "mse", "percentile"])
def test_relu_outputs_keep_zero_and_a_sensible_top(method: str) -> None:
    v = np.maximum(RNG.standard_normal(1_000_000), 0).astype(np.float32)  # half exact zeros
    r = compute_range(filled(v), method, symmetric=False)
    assert r.lo >= 0.0 and r.lo < 1e-3
    assert 3.0 < r.hi <= float(v.max())


def test_empty_histogram_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no finite values"):
        compute_range(Histogram(), "minmax", symmetric=False)


# --- calibrate() on a model ---------------------------------------------------------------------


def test_calibrate_mnist_mlp_ranges() -> None:
    model = load_model(model_path("mnist_mlp"))
    x = load_eval("mnist_mlp").x
    batches = [{"input": x[i : i + 100]} for i in range(0, 500, 100)]
    tensors = ["input", "/1/Relu_output_0", "logits"]
    seen: list[int] = []
    ranges = calibrate(model, batches, QuantConfig(), tensors=tensors, progress=seen.append)
    assert seen == [1, 2, 3, 4, 5]
    assert ranges["input"] == (float(x[:500].min()), float(x[:500].max()))
    assert ranges["/1/Relu_output_0"][0] == 0.0 and ranges["/1/Relu_output_0"][1] > 0
    logits = model_logits(model, x[:500])
    assert ranges["logits"] == pytest.approx((logits.min(), logits.max()), rel=1e-5)
    # the model was not changed by running it
    assert [n.op_type for n in model.graph] == ["Gemm", "Relu", "Gemm", "Relu", "Gemm"]


def test_big_batches_run_in_chunks_with_the_same_ranges(monkeypatch) -> None:
    """A run keeps every measured tensor alive to its end, so a batch of 100 runs in chunks that
    keep those tensors under CALIBRATION_BYTES: memory follows the budget, the ranges do not
    change."""
    import importlib

    import ember

    calibration = importlib.import_module("ember.compress.calibrate")  # not the function

    model = load_model(model_path("mnist_mlp"))
    x = load_eval("mnist_mlp").x[:100]
    tensors = ["input", "/1/Relu_output_0", "logits"]
    one_by_one = calibrate(
        model, [{"input": x[i : i + 1]} for i in range(100)], QuantConfig(), tensors=tensors
    )
    sizes: list[int] = []
    run = ember.Model.run

    def recording(self, inputs, outputs=None):  # type: ignore[no-untyped-def]
        sizes.append(len(inputs["input"]))
        return run(self, inputs, outputs)

    one = ember.Model(model, level=0).run({"input": x[:1]}, outputs=tensors)
    per_sample = sum(v.nbytes for v in one.values())  # what one sample's tensors weigh
    monkeypatch.setattr(ember.Model, "run", recording)
    monkeypatch.setattr(calibration, "CALIBRATION_BYTES", per_sample * 10)
    chunked = calibrate(model, [{"input": x}], QuantConfig(), tensors=tensors)
    assert sizes == [1] + [10] * 9 + [9] and sum(sizes) == 100
    assert chunked == one_by_one


def model_logits(model: object, x: np.ndarray) -> np.ndarray:
    import ember

    return ember.Model(load_model(model_path("mnist_mlp")), level=0).run({"input": x})["logits"]


def test_calibration_samples_caps_what_is_read() -> None:
    model = load_model(model_path("mnist_mlp"))
    x = load_eval("mnist_mlp").x
    x_big = x.copy()
    x_big[150:] *= 10  # anything past the cap would widen the input range
    batches = [{"input": x_big[i : i + 100]} for i in range(0, 1000, 100)]
    seen: list[int] = []
    ranges = calibrate(
        model,
        batches,
        QuantConfig(calibration_samples=150),
        tensors=["input"],
        progress=seen.append,
    )
    assert seen == [1, 2]  # 100 + the first 50 of the second batch
    assert ranges["input"][1] == float(x[:150].max())


@pytest.mark.parametrize("samples", [[], iter(())])
def test_empty_calibration_set(samples: object) -> None:
    model = load_model(model_path("mnist_mlp"))
    with pytest.raises(ConfigError, match="empty calibration set"):
        calibrate(model, samples, QuantConfig(), tensors=["input"])  # type: ignore[arg-type]


def test_symmetric_ranges_for_int8_activations() -> None:
    model = load_model(model_path("mnist_mlp"))
    x = load_eval("mnist_mlp").x[:200]
    ranges = calibrate(
        model, [{"input": x}], QuantConfig(activation_type="int8"), tensors=["logits"]
    )
    lo, hi = ranges["logits"]
    assert lo == -hi and hi > 0
