"""`quantize`: the one verb. Quantize a model, measure it against fp32, and keep it within budget.

With `config.max_drop`, an accuracy-aware loop (NNCF's and INC's): quantize everything; if the drop
is over budget, rank the layers by sensitivity (keep one layer in fp32 at a time, on a small eval
subset), then keep the most sensitive ones in fp32 until the drop is within budget. The graph work
is `quantize_graph`'s; this module only decides what to ask it for and measures the results.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import onnx_ir as ir

from ember.compress._progress import progress_bar
from ember.compress.config import QuantConfig
from ember.compress.data import DataSource, SampleSet, load_samples
from ember.compress.fidelity import Fidelity, measure_fidelity
from ember.errors import ConfigError
from ember.ir import ModelSource, load_model, save_model
from ember.runtime.model import Model

#: SmoothQuant's migration strength when the API turns it on for a transformer (the paper's default)
SMOOTHQUANT_ALPHA = 0.5
#: samples held out of the calibration data for the fidelity report when no eval data is given:
#: this fraction, at least 1 and at most HOLDOUT_MAX
HOLDOUT_FRACTION = 0.2
HOLDOUT_MAX = 1000
#: samples the per-layer sensitivity is measured on (the budget itself is checked on all of them)
SENSITIVITY_SAMPLES = 256


class BudgetError(ConfigError):
    """`max_drop` cannot be met: even with the most sensitive layers in fp32 the drop is too big."""


@dataclasses.dataclass(frozen=True)
class QuantResult:
    """A quantized model, how close it is to fp32, and what was left in fp32.

    fidelity: measured on held-out samples (None when no data was given to measure on).
    kept_fp32: node names the max_drop loop left in float32, most sensitive first.
    notes: what quantize decided on its own (held-out samples, SmoothQuant), one line each.
    """

    model: ir.Model
    fidelity: Fidelity | None
    kept_fp32: tuple[str, ...]
    config: QuantConfig
    notes: tuple[str, ...] = ()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the quantized model to `path` atomically (never a half-written file)."""
        save_model(self.model, path)


def quantize(
    model: ModelSource | Model,
    config: QuantConfig = QuantConfig(),  # noqa: B008  (frozen, so one shared default is safe)
    calibration: DataSource | SampleSet | None = None,
    *,
    eval_data: DataSource | SampleSet | None = None,
    progress: bool = True,
) -> QuantResult:
    """Quantize `model` as `config` says and measure it against the fp32 model.

    `calibration` (static mode: required) and `eval_data` are .npz paths, dicts of arrays or
    iterables of batch dicts (see `ember.compress.data.load_samples`); a `labels` array adds the
    accuracy drop to the report. Without `eval_data`, part of `calibration` is held out to measure
    on. With `config.max_drop`, the most sensitive layers stay in fp32 until the drop (accuracy
    drop with labels, else top-1 disagreement, else 1 - cosine) is within it; BudgetError if it
    cannot be. Nothing is written: call `.save(path)` on the result.

    >>> import ember
    >>> from ember import zoo
    >>> ev = zoo.load_eval("mnist_mlp")
    >>> result = ember.quantize(zoo.model_path("mnist_mlp"), ember.QuantConfig(mode="dynamic"),
    ...                         eval_data={"input": ev.x, "labels": ev.y}, progress=False)
    >>> abs(result.fidelity.accuracy_drop) <= 0.005
    True
    """
    if not isinstance(config, QuantConfig):
        raise ConfigError(f"config must be a QuantConfig, got {type(config).__name__}")
    source = _load(model)
    notes: list[str] = []
    config = _with_default_smoothquant(source, config, notes)
    calib, evalset = _data(source, config, calibration, eval_data, notes)
    if config.max_drop is not None and evalset is None:
        raise ConfigError(
            f"max_drop={config.max_drop} needs samples to measure the drop on: pass eval_data "
            "(--eval data.npz) or calibration data to hold some out of"
        )
    with _Progress(enabled=progress) as bar:
        search = _Search(source, config, calib, evalset, bar)
        quantized, fidelity = search.attempt(keep_fp32=())
        kept: tuple[str, ...] = ()
        budget = config.max_drop
        if budget is not None and fidelity is not None and fidelity.drop > budget:
            quantized, fidelity, kept = search.meet_budget(fidelity)
            notes.append(
                f"kept {len(kept)} of {len(search.layers)} layers in fp32 to stay within "
                f"max_drop={budget:g} ({fidelity.drop_measure} {fidelity.drop:.4f})"
            )
    return QuantResult(quantized, fidelity, kept, config, tuple(notes))


def _load(model: ModelSource | Model) -> ir.Model:
    if isinstance(model, Model):
        if model.level != 0:
            raise ConfigError(
                f"quantize got a loaded ember.Model optimized at level {model.level}: its graph "
                "holds ember's fused ops; pass the model's path or onnx_ir.Model instead"
            )
        model = model.ir
    if isinstance(model, ir.Model):
        # A copy: the caller's model is never changed (load_model inlines functions in place).
        model = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    return load_model(model)


def _data(
    model: ir.Model,
    config: QuantConfig,
    calibration: DataSource | SampleSet | None,
    eval_data: DataSource | SampleSet | None,
    notes: list[str],
) -> tuple[SampleSet | None, SampleSet | None]:
    """The calibration set (static mode) and the eval set, holding out calibration samples when
    no eval set is given."""
    calib = load_samples(calibration, model) if calibration is not None else None
    evalset = load_samples(eval_data, model, what="eval") if eval_data is not None else None
    if config.mode == "static" and calib is None:
        raise ConfigError(
            "static quantization needs calibration data to measure activation ranges: pass "
            "calibration=... (--calib data.npz), or use mode='dynamic' or 'weight-only'"
        )
    if config.smoothquant and calib is None:
        raise ConfigError(
            f"QuantConfig.smoothquant={config.smoothquant} needs calibration data to measure "
            "activation channels: pass calibration=... (--calib data.npz), or smoothquant=0"
        )
    if calib is None or (config.mode != "static" and not config.smoothquant):
        if calib is not None and evalset is None:  # the data is not needed to quantize
            notes.append(
                f"mode {config.mode} does not calibrate: fidelity is measured on all "
                f"{len(calib)} calibration samples"
            )
            evalset = calib
        return None, evalset
    if evalset is None:
        n = len(calib)
        held = min(max(1, int(n * HOLDOUT_FRACTION)), HOLDOUT_MAX) if n >= 2 else 0
        if held:
            evalset = calib.select(n - held, n)
            calib = calib.select(0, n - held)
            notes.append(
                f"no eval data given: held out the last {held} of {n} calibration samples to "
                f"measure fidelity on, and calibrated on the other {n - held}"
            )
        else:
            notes.append("no eval data given and one calibration sample: fidelity not measured")
    if config.calibration_samples is not None and config.calibration_samples < len(calib):
        calib = calib.select(0, config.calibration_samples)
    return calib, evalset


def has_activation_matmuls(model: ir.Model) -> bool:
    """True when some MatMul multiplies two activations (attention's Q.K^T and P.V): the mark of
    a transformer, whose activation outliers SmoothQuant is for."""
    for node in model.graph.all_nodes():
        is_matmul = node.op_type == "MatMul" and node.domain in ("", "ai.onnx")
        if is_matmul and all(v is not None and not _is_constant(v) for v in node.inputs[:2]):
            return True
    return False


def _is_constant(value: ir.Value) -> bool:
    if value.const_value is not None:
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant"


def _with_default_smoothquant(
    model: ir.Model, config: QuantConfig, notes: list[str]
) -> QuantConfig:
    if config.mode != "static" or config.smoothquant is not None:
        return config
    if not has_activation_matmuls(model):
        return config
    notes.append(
        f"SmoothQuant on (alpha {SMOOTHQUANT_ALPHA}): the model multiplies activations "
        "(a transformer), whose outlier channels per-tensor int8 handles badly"
    )
    return dataclasses.replace(config, smoothquant=SMOOTHQUANT_ALPHA)


class _Search:
    """Quantize-and-measure attempts over one model, data and config, for the max_drop loop."""

    def __init__(
        self,
        model: ir.Model,
        config: QuantConfig,
        calib: SampleSet | None,
        evalset: SampleSet | None,
        bar: _Progress,
    ) -> None:
        from ember.compress.qdq import quantizable_nodes

        self.model = model
        self.config = config
        self.calib = calib
        self.evalset = evalset
        self.bar = bar
        self.layers = quantizable_nodes(model, config)
        self._reference: Model | None = None

    @property
    def reference(self) -> Model:
        if self._reference is None:
            self._reference = _runnable(self.model, "fp32")
        return self._reference

    def quantize(self, keep_fp32: Sequence[str], calib: SampleSet | None = None) -> ir.Model:
        from ember.compress.qdq import quantize_graph

        samples = calib if calib is not None else self.calib
        return quantize_graph(
            self.model,
            self.config,
            samples,
            keep_fp32=keep_fp32,
            progress=self.bar.stage_callback(samples),
        )

    def measure(self, quantized: ir.Model, data: SampleSet) -> Fidelity:
        candidate = _runnable(quantized, "quantized")
        return measure_fidelity(self.reference, candidate, data)

    def attempt(self, keep_fp32: Sequence[str]) -> tuple[ir.Model, Fidelity | None]:
        quantized = self.quantize(keep_fp32)
        if self.evalset is None:
            return quantized, None
        return quantized, self.measure(quantized, self.evalset)

    def attempt_measured(self, keep_fp32: Sequence[str]) -> tuple[ir.Model, Fidelity]:
        assert self.evalset is not None
        quantized = self.quantize(keep_fp32)
        return quantized, self.measure(quantized, self.evalset)

    def sensitivity(self) -> list[tuple[str, Fidelity]]:
        """Each layer with the fidelity of the model quantized except that layer, on a subset:
        the better the model gets when a layer alone stays fp32, the more sensitive that layer."""
        assert self.evalset is not None
        subset = self.evalset.select(0, SENSITIVITY_SAMPLES)
        calib = self.calib.select(0, SENSITIVITY_SAMPLES) if self.calib is not None else None
        scores = []
        with self.bar.task("sensitivity", len(self.layers)) as advance:
            for layer in self.layers:
                fid = self.measure(self.quantize([layer], calib), subset)
                scores.append((layer, fid))
                advance()
        # Lowest drop first; 1 - cosine breaks ties (accuracy on a subset is coarse).
        scores.sort(key=lambda s: (s[1].drop, -s[1].cosine))
        return scores

    def meet_budget(self, first: Fidelity) -> tuple[ir.Model, Fidelity, tuple[str, ...]]:
        """Keep the most sensitive layers in fp32, the fewest found that meet the budget.

        Counts grow 1, 2, 4, ... until one passes, then a binary search between the last miss and
        that pass; only measured passes are ever returned, so a non-monotonic case still gives a
        model within budget (if not always the fewest layers)."""
        budget = self.config.max_drop
        assert budget is not None
        if not self.layers:
            raise BudgetError(
                f"max_drop={budget:g} is not met ({first.drop_measure} {first.drop:.4f}) and the "
                "model has no layer left to keep in fp32; raise max_drop or quantize less"
            )
        order = [layer for layer, _ in self.sensitivity()]
        tried: dict[int, tuple[ir.Model, Fidelity]] = {}

        def passes(count: int) -> bool:
            if count not in tried:
                tried[count] = self.attempt_measured(order[:count])
            return tried[count][1].drop <= budget

        # Keeping every layer would leave nothing quantized, so the most is all but one.
        most = len(order) - 1
        low, count = 0, 1  # `low` layers kept is known to miss
        while count <= most and not passes(count):
            low, count = count, min(count * 2, most) if count < most else most + 1
        if count > most:
            best = min(tried.values(), key=lambda t: t[1].drop, default=None)
            got = f"{best[1].drop:.4f}" if best else f"{first.drop:.4f}"
            raise BudgetError(
                f"max_drop={budget:g} cannot be met: with all layers quantized the "
                f"{first.drop_measure} is {first.drop:.4f}, and keeping up to {most} of the "
                f"{len(order)} quantizable layers in fp32 still gives {got}; nothing was "
                "written. Raise max_drop, give more or better calibration data, try another "
                "--method (percentile, entropy, mse), or mode='dynamic'"
            )
        high = count  # passes
        while high - low > 1:
            mid = (low + high) // 2
            if passes(mid):
                high = mid
            else:
                low = mid
        quantized, fidelity = tried[high]
        return quantized, fidelity, tuple(order[:high])


def _runnable(model: ir.Model, name: str) -> Model:
    # ember.Model optimizes the graph it is given in place: hand it a copy (tensors shared).
    return Model(model.clone(), name=name)


class _Progress:
    """A rich progress bar on stderr for calibration and the sensitivity search; silent when
    disabled or when stderr is not a terminal."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def __enter__(self) -> _Progress:
        self._bar = progress_bar(self.enabled)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[], None]]:
        if self._bar is None:
            yield lambda: None
            return
        task_id = self._bar.add_task(description, total=total)

        def advance() -> None:
            self._bar.advance(task_id)
            self._bar.refresh()  # draw every step, not only on the refresh timer

        try:
            yield advance
        finally:
            self._bar.remove_task(task_id)

    def stage_callback(
        self, samples: SampleSet | None
    ) -> Callable[[str, int, int | None], None] | None:
        """A `progress(stage, done, total)` for quantize_graph: one bar row per stage."""
        if self._bar is None:
            return None
        bar = self._bar
        rows: dict[str, Any] = {}
        # NOTE: quantize_graph's `total` is len(samples), which a SampleSet counts in samples,
        # not batches; the batch count is known here.
        batches = samples.n_batches if samples is not None else None

        def update(stage: str, done: int, total: int | None) -> None:
            total = batches if batches is not None else total
            if stage not in rows:
                rows[stage] = bar.add_task(stage, total=total)
            bar.update(rows[stage], completed=done)
            bar.refresh()
            if total is not None and done >= total:
                bar.remove_task(rows.pop(stage))

        return update
