"""The before/after table every compression command prints: parameters, file size, FLOPs, latency
(median of timed `ember.load(...).run` calls at batch 1 and 32) and, with eval data, accuracy or
fidelity against the original.

Knows nothing about how the compressed model was made; latency is measured, never asserted.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from ember.errors import ConfigError
from ember.ir.analysis import format_bytes, format_count


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    params: int
    file_bytes: int  # the serialized model
    flops: int | None  # one sample (batch 1); None when shapes could not be inferred
    latency_ms: dict[int, float]  # batch -> median milliseconds per run


@dataclasses.dataclass(frozen=True)
class CompressionReport:
    """A model before and after compression, and (with eval data) the fidelity of the after."""

    title: str
    before: ModelSummary
    after: ModelSummary
    fidelity: Any = None  # ember.compress.fidelity.Fidelity, or None without eval data

    def format(self) -> str:
        """The table, one row per measure, with the after/before ratio.

        >>> s = ModelSummary(1000, 4096, 2000, {1: 0.5})
        >>> t = ModelSummary(500, 2048, 1000, {1: 0.25})
        >>> print(CompressionReport("prune", s, t).format())
        prune            before      after    ratio
          params          1.00k        500    0.50x
          file size     4.0 KiB    2.0 KiB    0.50x
          FLOPs           2.00k      1.00k    0.50x
          latency b=1   0.500ms    0.250ms    0.50x
        """
        rows = [f"{self.title:<14} {'before':>8} {'after':>10} {'ratio':>8}"]

        def row(label: str, a: float | None, b: float | None, fmt: Any) -> None:
            ratio = f"{b / a:.2f}x" if a and b is not None else "-"
            rows.append(
                f"  {label:<12} {fmt(a) if a is not None else '?':>8} "
                f"{fmt(b) if b is not None else '?':>10} {ratio:>8}"
            )

        row("params", self.before.params, self.after.params, format_count)
        row("file size", self.before.file_bytes, self.after.file_bytes, format_bytes)
        row("FLOPs", self.before.flops, self.after.flops, format_count)
        for batch in sorted(set(self.before.latency_ms) | set(self.after.latency_ms)):
            row(
                f"latency b={batch}",
                self.before.latency_ms.get(batch),
                self.after.latency_ms.get(batch),
                lambda ms: f"{ms:.3f}ms",
            )
        out = "\n".join(rows)
        if self.fidelity is not None:
            out += "\n" + self.fidelity.format("fidelity against the original")
        return out


def summarize(
    model: ir.Model,
    *,
    batches: Sequence[int] = (1, 32),
    runs: int = 20,
    dims: Mapping[str, int] | None = None,
    feeds: Mapping[int, Mapping[str, np.ndarray]] | None = None,
    threads: int | None = None,
) -> ModelSummary:
    """Params, serialized size, FLOPs at batch 1 and the median latency of `runs` runs per batch.

    `feeds` (batch -> inputs) are timed when given, else random inputs of the model's signature
    (symbolic batch dims bound to the batch, other symbolic dims to `dims` or 8). `threads` as in
    `ember.load` (default: one per core).
    """
    from ember.ir.analysis import model_stats

    if runs < 1:
        raise ConfigError(f"runs must be >= 1, got {runs}")
    stats = model_stats(model, {"batch": 1, **(dims or {})})
    size = len(ir.to_proto(model).SerializeToString())
    latency: dict[int, float] = {}
    if batches:
        import ember

        compiled = ember.load(model, threads=threads)
        for batch in batches:
            inputs = dict(feeds[batch]) if feeds and batch in feeds else None
            if inputs is None:
                inputs = random_inputs(compiled, batch, dims or {})
            for _ in range(3):  # the first runs record shapes, lay out the arena, lower
                compiled.run(inputs)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                compiled.run(inputs)
                times.append(time.perf_counter() - start)
            latency[batch] = float(np.median(times)) * 1e3
    return ModelSummary(stats.n_params, size, stats.flops, latency)


def random_inputs(model: Any, batch: int, dims: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Inputs for `model` (an ember.Model): the first symbolic axis is the batch."""
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in model.inputs:
        if spec.dtype is None or spec.shape is None:
            raise ConfigError(f"cannot make a random input for {spec}; pass eval data")
        shape = [
            d if isinstance(d, int) else dims.get(d or "", batch if axis == 0 else 8)
            for axis, d in enumerate(spec.shape)
        ]
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iub":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
        else:
            raise ConfigError(f"cannot make a random {spec.dtype} input {spec.name!r}")
    return feeds


def compare(
    before: ir.Model,
    after: ir.Model,
    *,
    title: str = "compression",
    eval_data: Any = None,
    batches: Sequence[int] = (1, 32),
    runs: int = 20,
    threads: int | None = None,
) -> CompressionReport:
    """Summaries of both models and, with `eval_data` (an .npz path, a dict of arrays or a
    SampleSet; `labels` for accuracy), the after-model's fidelity against the before-model."""
    import ember

    # Latency first: fidelity runs leave nothing behind that should be timed.
    summaries = (
        summarize(before, batches=batches, runs=runs, threads=threads),
        summarize(after, batches=batches, runs=runs, threads=threads),
    )
    fidelity = None
    if eval_data is not None:
        from ember.compress.data import load_samples
        from ember.compress.fidelity import measure_fidelity

        reference = ember.load(before)
        samples = load_samples(eval_data, reference, what="eval")
        fidelity = measure_fidelity(reference, ember.load(after), samples)
    return CompressionReport(title, *summaries, fidelity)
