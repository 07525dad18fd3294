"""Calibration: stream samples through the float model (ember's runtime, level 0) and turn what the
tensors of interest held into clip ranges (minmax, percentile, entropy, mse).

Memory is bounded: each tensor keeps a running min/max and a fixed-size histogram that is re-binned
(never grown) when the range widens; no activation outlives its batch. Knows nothing about QDQ.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import onnx_ir as ir

from ember.compress.config import QuantConfig
from ember.errors import ConfigError

Sample = dict[str, np.ndarray]  # one batch: graph input name -> array

#: bins of every calibration histogram (16 KiB per tensor, whatever the number of samples)
HISTOGRAM_BINS = 2048
#: A calibration run holds every tensor it measures until its end: runs take as many samples as
#: keep those under CALIBRATION_BYTES (at least one, at most CALIBRATION_MAX_CHUNK).
CALIBRATION_BYTES = 32 * 2**20
CALIBRATION_MAX_CHUNK = 64


class Histogram:
    """A running histogram of one tensor's values over a range that only widens.

    When new values fall outside the range, the bin width grows by an integer factor and the range
    is re-anchored on an old bin edge, so every old bin falls inside exactly one new bin: re-binning
    is exact and the number of bins stays `bins`.

    >>> h = Histogram(bins=4)
    >>> h.add(np.array([0.0, 1.0, 2.0, 3.0]))
    >>> h.add(np.array([-5.0]))
    >>> float(h.counts.sum()), h.min, h.max, len(h.counts)
    (5.0, -5.0, 3.0, 4)
    """

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        self.bins = bins
        self.counts = np.zeros(bins, np.float64)
        self.lo = 0.0  # left edge of bin 0
        self.width = 0.0  # 0 until the first value arrives
        self.min = math.inf
        self.max = -math.inf
        self.zeros = 0.0  # exact zeros: always representable, so never a quantization error

    @property
    def hi(self) -> float:
        return self.lo + self.width * self.bins

    @property
    def edges(self) -> np.ndarray:
        return self.lo + self.width * np.arange(self.bins + 1, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float32).ravel()
        v = v[np.isfinite(v)]  # NaN/inf say nothing useful about a clip range
        if v.size == 0:
            return
        vmin, vmax = float(v.min()), float(v.max())
        self.min, self.max = min(self.min, vmin), max(self.max, vmax)
        self.zeros += float(np.count_nonzero(v == 0))
        if self.width == 0.0:
            span = vmax - vmin
            # A constant tensor still needs a non-empty range; widen around it.
            self.width = (span if span > 0 else max(abs(vmin), 1e-6)) / self.bins
            self.lo = vmin if span > 0 else vmin - self.width * self.bins / 2
        elif vmin < self.lo or vmax > self.hi:
            self._widen(vmin, vmax)
        counts, _ = np.histogram(v, bins=self.bins, range=(self.lo, self.hi))
        self.counts += counts

    def _widen(self, vmin: float, vmax: float) -> None:
        lo, hi = min(vmin, self.lo), max(vmax, self.hi)
        factor = 2
        while True:
            width = self.width * factor
            # Shift left by whole new bins so that the old left edge stays an edge.
            shift = max(0, math.ceil((self.lo - lo) / width - 1e-9))
            new_lo = self.lo - shift * width
            if new_lo + width * self.bins >= hi:
                break
            factor *= 2
        merged = np.zeros(self.bins, np.float64)
        # Old bin i covers [lo + i*w, lo + (i+1)*w): inside new bin shift + i // factor.
        np.add.at(merged, shift + np.arange(self.bins) // factor, self.counts)
        self.counts, self.lo, self.width = merged, new_lo, width


@dataclasses.dataclass(frozen=True)
class Range:
    """A clip range [lo, hi] for one tensor."""

    lo: float
    hi: float


def compute_range(
    hist: Histogram, method: str, *, symmetric: bool, percentile: float = 99.999, levels: int = 255
) -> Range:
    """The clip range `method` picks from `hist`, for a quantizer with `levels` steps.

    symmetric: the range is [-t, t] (int8 activations); else it is [lo, hi] (uint8, asymmetric),
    whose sides are clipped independently only by percentile, and by a common magnitude t otherwise.
    """
    if hist.total == 0:
        raise ConfigError("cannot compute a range from an empty histogram: no finite values seen")
    if method == "minmax":
        lo, hi = hist.min, hist.max
    elif method == "percentile":
        lo, hi = _percentile_range(hist, percentile, symmetric=symmetric)
    elif method in ("entropy", "mse"):
        t = _search_threshold(hist, method, symmetric=symmetric, levels=levels)
        lo, hi = max(hist.min, -t), min(hist.max, t)
    else:
        raise ConfigError(f"unknown calibration method {method!r}")
    if symmetric:
        t = max(abs(lo), abs(hi))
        return Range(-t, t)
    return Range(lo, hi)


def _cdf(hist: Histogram, x: np.ndarray) -> np.ndarray:
    """The fraction of values <= x, values spread uniformly within each bin."""
    cum = np.concatenate([[0.0], np.cumsum(hist.counts)]) / hist.total
    return np.interp(x, hist.edges, cum)


def _percentile_range(
    hist: Histogram, percentile: float, *, symmetric: bool
) -> tuple[float, float]:
    p = percentile / 100.0
    if symmetric:  # the smallest t with a fraction p of |x| <= t, by bisection on the CDF
        lo_t, hi_t = 0.0, max(abs(hist.min), abs(hist.max))
        for _ in range(60):
            mid = (lo_t + hi_t) / 2
            if _cdf(hist, np.array(mid)) - _cdf(hist, np.array(-mid)) >= p:
                hi_t = mid
            else:
                lo_t = mid
        return -hi_t, hi_t
    # Each side clips a fraction (1 - p); invert the CDF on the edges.
    cum = np.concatenate([[0.0], np.cumsum(hist.counts)]) / hist.total
    edges = hist.edges
    lo = float(np.interp(1.0 - p, cum, edges))
    hi = float(np.interp(p, cum, edges))
    return max(lo, hist.min), min(hi, hist.max)


def _candidates(hist: Histogram, count: int = 256) -> np.ndarray:
    """Clip magnitudes t to try, from a few bins up to the largest |x|."""
    top = max(abs(hist.min), abs(hist.max))
    return top * np.linspace(1.0 / count, 1.0, count)


def _search_threshold(hist: Histogram, method: str, *, symmetric: bool, levels: int) -> float:
    """The magnitude t minimizing the method's loss over clip ranges [max(min,-t), min(max,t)]."""
    best_t, best_loss = math.inf, math.inf
    centers = (hist.edges[:-1] + hist.edges[1:]) / 2
    for t in _candidates(hist):
        lo, hi = max(hist.min, -t), min(hist.max, t)
        if symmetric:
            lo, hi = -t, t
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # zero is always representable
        if hi - lo <= 0:
            continue
        if method == "mse":
            loss = _quantization_mse(hist.counts, centers, lo, hi, levels)
        else:
            loss = _kl_divergence(hist, lo, hi, levels)
        if loss < best_loss:
            best_t, best_loss = float(t), loss
    return best_t if math.isfinite(best_t) else max(abs(hist.min), abs(hist.max))


def _quantization_mse(
    counts: np.ndarray, centers: np.ndarray, lo: float, hi: float, levels: int
) -> float:
    """Expected squared error of quantizing the histogram with `levels` steps over [lo, hi]:
    clipped values lose their distance to the edge; the rest lose scale^2 / 12 to rounding."""
    scale = (hi - lo) / levels
    clipped = np.clip(centers, lo, hi)
    clip_err = (centers - clipped) ** 2
    inside = (centers >= lo) & (centers <= hi)
    rounding = np.where(inside, scale * scale / 12.0, 0.0)
    return float(np.sum(counts * (clip_err + rounding)) / max(counts.sum(), 1.0))


def _kl_divergence(hist: Histogram, lo: float, hi: float, levels: int) -> float:
    """KL(P || Q) as TensorRT's entropy calibration: P is the histogram inside [lo, hi] with the
    outliers folded into its edge bins; Q is the clipped histogram (outliers dropped) merged into
    `levels` buckets and spread back evenly over each bucket's non-empty bins. Q lacks the folded
    outlier mass, which is what makes clipping too much cost something."""
    i0 = int(np.clip(np.floor((lo - hist.lo) / hist.width), 0, hist.bins - 1))
    i1 = int(np.clip(np.ceil((hi - hist.lo) / hist.width), i0 + 1, hist.bins))
    counts = hist.counts.copy()
    if hist.zeros and hist.lo <= 0.0 < hist.hi:
        # Exact zeros (Relu's spike) quantize exactly; leaving them in would make every wide
        # window look lossy around zero and push the threshold far too low.
        zero_bin = min(int((0.0 - hist.lo) / hist.width), hist.bins - 1)
        counts[zero_bin] = max(counts[zero_bin] - hist.zeros, 0.0)
    inside = counts[i0:i1]
    n = len(inside)
    if n < levels:  # too few bins to tell the quantized distribution apart (as TensorRT)
        return math.inf
    p = inside.copy()
    p[0] += counts[:i0].sum()
    p[-1] += counts[i1:].sum()
    bucket = (np.arange(n) * levels) // n  # which of the `levels` buckets each bin falls in
    mass = np.bincount(bucket, weights=inside, minlength=levels)
    nonzero = np.bincount(bucket, weights=(inside > 0).astype(np.float64), minlength=levels)
    q = np.where(inside > 0, mass[bucket] / np.maximum(nonzero[bucket], 1.0), 0.0)
    return _kl(p, q)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / max(p.sum(), 1e-300)
    q = q / max(q.sum(), 1e-300)
    mask = p > 0
    # Bins P has and Q lacks (the folded outliers) get a small floor instead of infinity.
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-7))))


# ---------------------------------------------------------------------------------------------
# Streaming the model over the samples


def batch_size_of(sample: Sample) -> int:
    """Samples in one batch: the leading dim of its first input (1 for scalars)."""
    first = next(iter(sample.values()), None)
    return int(first.shape[0]) if first is not None and np.ndim(first) else 1


def limit_samples(samples: Iterable[Sample], limit: int | None) -> Iterator[Sample]:
    """`samples`, cut after `limit` samples (the last batch trimmed); all of them when None."""
    seen = 0
    for batch in samples:
        if limit is not None and seen >= limit:
            return
        n = batch_size_of(batch)
        if limit is not None and seen + n > limit:
            keep = limit - seen
            batch = {k: v[:keep] if np.ndim(v) else v for k, v in batch.items()}
            n = keep
        seen += n
        yield batch


def stream_tensors(
    model: ir.Model,
    samples: Iterable[Sample],
    tensors: Sequence[str],
    visit: Callable[[dict[str, np.ndarray]], None],
    *,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Run `model` (ember, level 0) on each batch and hand `visit` the values of `tensors`;
    returns the number of batches. ConfigError when there is no batch at all."""
    import ember

    runner = ember.Model(model, level=0, name="calibration")
    names = list(dict.fromkeys(tensors))
    # A run asked for these tensors keeps every one of them alive to its end: split batches along
    # a free batch axis so that memory follows CALIBRATION_BYTES, not the caller's batch size.
    free_batch = all(s.shape is not None and not isinstance(s.shape[0], int) for s in runner.inputs)
    step = 1  # samples per run: one, until a run has shown what a sample's tensors weigh
    batches = 0
    for batch in limit_samples(samples, limit):
        n = batch_size_of(batch)
        start = 0
        while start < n:
            size = step if free_batch else n
            chunk = batch if size >= n else {k: v[start : start + size] for k, v in batch.items()}
            values = runner.run(chunk, outputs=names) if names else {}
            visit(values)
            held = sum(v.nbytes for v in values.values() if isinstance(v, np.ndarray))
            per_sample = max(held // max(batch_size_of(chunk), 1), 1)
            step = int(min(max(CALIBRATION_BYTES // per_sample, 1), CALIBRATION_MAX_CHUNK))
            start += size
        batches += 1
        if progress is not None:
            progress(batches)
    if batches == 0:
        raise ConfigError(
            "empty calibration set: static quantization needs at least one sample to measure "
            "activation ranges; pass calibration data (an .npz or a dict of arrays)"
        )
    return batches


def collect_histograms(
    model: ir.Model,
    samples: Iterable[Sample],
    tensors: Sequence[str],
    *,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Histogram]:
    """One streaming pass: a Histogram per tensor."""
    hists = {name: Histogram() for name in tensors}

    def visit(values: dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            hists[name].add(value)

    stream_tensors(model, samples, tensors, visit, limit=limit, progress=progress)
    return hists


def ranges_from_histograms(
    hists: dict[str, Histogram], config: QuantConfig, *, symmetric: bool
) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for name, hist in hists.items():
        if hist.total == 0:
            raise ConfigError(
                f"calibration saw no finite value of tensor {name!r}: check the calibration data"
            )
        r = compute_range(hist, config.method, symmetric=symmetric, percentile=config.percentile)
        out[name] = (r.lo, r.hi)
    return out


def activation_symmetric(config: QuantConfig) -> bool:
    """int8 activations are symmetric; uint8 ("auto" on CPUs, as ORT) are asymmetric."""
    return config.activation_type == "int8"


def calibrate(
    model: ir.Model,
    samples: Iterable[Sample],
    config: QuantConfig,
    *,
    tensors: Sequence[str],
    progress: Callable[[int], None] | None = None,
) -> dict[str, tuple[float, float]]:
    """Per-tensor clip ranges of `tensors`, measured by running `model` over `samples`.

    >>> import onnx_ir as ir, numpy as np
    >>> from ember.ir import load_model
    >>> from ember.zoo import model_path
    >>> m = load_model(model_path("mnist_mlp"))
    >>> x = np.linspace(0, 1, 784 * 4, dtype=np.float32).reshape(4, 784)
    >>> r = calibrate(m, [{"input": x}], QuantConfig(), tensors=["input"])
    >>> r["input"]
    (0.0, 1.0)
    """
    hists = collect_histograms(
        model, samples, tensors, limit=config.calibration_samples, progress=progress
    )
    return ranges_from_histograms(hists, config, symmetric=activation_symmetric(config))
