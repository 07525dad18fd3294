"""Knowledge distillation: train a student ONNX model on a teacher's outputs, return it as ONNX.

The student runs as a torch Module (torch_exec.to_torch); the teacher runs in ember, one batch at
a time, so its outputs are never all held. Class scores are matched by temperature-softened KL
divergence (mixed with cross-entropy when labels are given), other outputs by MSE (plus an optional
cosine term). `gradual_prune` alternates a caller's pruning step with distillation from the
original. Knows nothing about how models are pruned.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from ember.compress._progress import progress_bar
from ember.compress.data import DataSource, Sample, SampleSet, load_samples
from ember.compress.torch_exec import require_torch, to_onnx_model, to_torch
from ember.errors import ConfigError, InputError, ModelError
from ember.ir import load_model

LOSSES = ("auto", "kl", "mse")
#: samples mixed together when shuffling a stream: bounds memory to this many batches' inputs
_SHUFFLE_WINDOW_BATCHES = 64


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """How to distill. Validated on construction (ConfigError naming the field).

    temperature: softens both distributions in the KL loss (the loss is scaled by T^2).
    alpha: weight of the soft (teacher) loss; 1 - alpha weighs cross-entropy on labels, when
        labels are given (without labels the soft loss is the whole loss).
    loss: "kl" (class scores), "mse" (embeddings, regression) or "auto": "kl" for an output of
        rank 2 (batch, classes), "mse" for any other rank. Pass "mse" for (batch, dim) embeddings.
    cosine_weight: adds cosine_weight * (1 - cosine similarity over the last axis) to "mse".
    keep_zeros: weights (rank >= 2) that are exactly zero in the student stay zero, so pruned
        weights stay pruned while the rest trains.

    >>> DistillConfig(epochs=5).temperature
    4.0
    >>> DistillConfig(alpha=2.0)
    Traceback (most recent call last):
    ...
    ember.errors.ConfigError: DistillConfig.alpha must be in [0, 1], got 2.0
    """

    temperature: float = 4.0
    alpha: float = 0.7
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    loss: str = "auto"
    cosine_weight: float = 0.0
    weight_decay: float = 0.0
    shuffle: bool = True
    keep_zeros: bool = True

    def __post_init__(self) -> None:
        def bad(field: str, want: str) -> ConfigError:
            return ConfigError(
                f"DistillConfig.{field} must be {want}, got {getattr(self, field)!r}"
            )

        def number(field: str) -> float:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise bad(field, "a number")
            if not math.isfinite(value):
                raise bad(field, "finite")
            return float(value)

        def integer(field: str, low: int) -> None:
            value = getattr(self, field)
            if type(value) is not int or value < low:
                raise bad(field, f"an int >= {low}")

        if number("temperature") <= 0:
            raise bad("temperature", "> 0")
        if not 0 <= number("alpha") <= 1:
            raise bad("alpha", "in [0, 1]")
        if number("lr") <= 0:
            raise bad("lr", "> 0")
        if number("cosine_weight") < 0:
            raise bad("cosine_weight", ">= 0")
        if number("weight_decay") < 0:
            raise bad("weight_decay", ">= 0")
        integer("epochs", 1)
        integer("batch_size", 1)
        integer("seed", 0)
        if self.loss not in LOSSES:
            raise bad("loss", f"one of {', '.join(map(repr, LOSSES))}")
        for flag in ("shuffle", "keep_zeros"):
            if not isinstance(getattr(self, flag), bool):
                raise bad(flag, "True or False")


def distill(
    teacher: ir.Model | str | Path,
    student: ir.Model | str | Path,
    data: DataSource | SampleSet,
    config: DistillConfig = DistillConfig(),
    *,
    labels: np.ndarray | None = None,
    progress: bool = True,
) -> ir.Model:
    """Train `student` to reproduce `teacher`'s outputs on `data`; returns the trained student.

    The student may be the (pruned) teacher or any model with the teacher's inputs and outputs
    (names and shapes). `data` is an .npz path, a dict of input name -> array or an iterable of
    batch dicts, checked against the student's inputs; labels (N,) come from `labels` or from a
    `labels` array in the data, and are optional. Deterministic for a given `config.seed`.
    A progress bar is drawn on stderr when `progress` and stderr is a terminal.

    >>> import numpy as np
    >>> from ember import zoo
    >>> x = zoo.load_eval("mnist_mlp").x[:64]
    >>> path = zoo.model_path("mnist_mlp")
    >>> out = distill(path, path, {"input": x}, DistillConfig(epochs=1), progress=False)
    >>> [v.name for v in out.graph.outputs]
    ['logits']
    """
    torch = require_torch("ember.distill")
    from ember.runtime.model import Model

    teacher_ir, student_ir = _load(teacher, "teacher"), _load(student, "student")
    _check_signatures(teacher_ir, student_ir)
    samples = load_samples(data, student_ir, batch_size=config.batch_size, what="distillation")
    targets = _labels(labels, samples)
    teacher_model = Model(load_model(ir.to_proto(teacher_ir)), name="teacher")

    module = to_torch(student_ir)
    module.train()
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        optimizer = torch.optim.Adam(
            module.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        masks = _zero_masks(module) if config.keep_zeros else []
        losses: dict[str, str] | None = None
        n_batches = -(-len(samples) // config.batch_size)
        with _Progress(enabled=progress, total=config.epochs * n_batches) as bar:
            for epoch in range(config.epochs):
                for batch, batch_labels in _batches(samples, targets, config, rng):
                    want = teacher_model.run(batch)
                    got = module(**batch)
                    if losses is None:
                        losses = _choose_losses(want, got, config, targets is not None)
                    loss = _loss(torch, got, want, batch_labels, losses, config)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():
                        for param, mask in masks:
                            param.mul_(mask)
                    bar.advance(f"distill epoch {epoch + 1}/{config.epochs}", loss.item())
    module.eval()
    return to_onnx_model(module, student_ir)


def gradual_prune(
    model: ir.Model | str | Path,
    prune_fn: Callable[[ir.Model, float], ir.Model],
    data: DataSource | SampleSet,
    steps: int,
    config: DistillConfig = DistillConfig(),
    *,
    labels: np.ndarray | None = None,
    progress: bool = True,
) -> ir.Model:
    """Prune a little, recover by distilling from the original, repeat `steps` times.

    `prune_fn(model, fraction)` returns a new model pruned to `fraction` (i / steps at step i,
    so 1.0 at the last step) of the final target: for example
    `lambda m, f: prune(m, PruneConfig(sparsity=0.8 * f))`. With `config.keep_zeros` (the
    default) weights pruned at one step stay zero while the next recovers.

    >>> from ember import zoo
    >>> from ember.ir import load_model
    >>> x = zoo.load_eval("mnist_mlp").x[:32]
    >>> out = gradual_prune(zoo.model_path("mnist_mlp"), lambda m, f: m, {"input": x}, 2,
    ...                     DistillConfig(epochs=1), progress=False)
    >>> sorted(out.graph.initializers) == sorted(load_model(zoo.model_path("mnist_mlp"))
    ...                                          .graph.initializers)
    True
    """
    if type(steps) is not int or steps < 1:
        raise ConfigError(f"gradual_prune: steps must be an int >= 1, got {steps!r}")
    original = _load(model, "model")
    current = original
    for step in range(1, steps + 1):
        pruned = prune_fn(current, step / steps)
        if not isinstance(pruned, ir.Model):
            raise ConfigError(
                f"gradual_prune: prune_fn returned {type(pruned).__name__} at step {step}; it "
                "must return an onnx_ir.Model (the pruned copy)"
            )
        current = distill(original, pruned, data, config, labels=labels, progress=progress)
    return current


# --- checks --------------------------------------------------------------------------------------


def _load(source: ir.Model | str | Path, role: str) -> ir.Model:
    if isinstance(source, ir.Model | str | Path):
        return load_model(source)
    raise ConfigError(
        f"distill: the {role} must be an ONNX path or an onnx_ir.Model, got {type(source).__name__}"
    )


def _check_signatures(teacher: ir.Model, student: ir.Model) -> None:
    def required(model: ir.Model) -> list[str]:
        g = model.graph
        return [v.name or "" for v in g.inputs if v.name not in g.initializers]

    t_in, s_in = required(teacher), required(student)
    if sorted(t_in) != sorted(s_in):
        raise ModelError(
            f"distill: the student's inputs {s_in} differ from the teacher's {t_in}; the student "
            "must take the teacher's inputs (same names)"
        )
    t_out = [v.name or "" for v in teacher.graph.outputs]
    s_out = [v.name or "" for v in student.graph.outputs]
    if sorted(t_out) != sorted(s_out):
        raise ModelError(
            f"distill: the student's outputs {s_out} differ from the teacher's {t_out}; the "
            "student must produce the teacher's outputs (same names and shapes)"
        )


def _labels(labels: np.ndarray | None, samples: SampleSet) -> np.ndarray | None:
    if labels is None:
        return samples.labels
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(samples):
        raise InputError(
            f"distill: labels must be a 1-D integer array with one class index per sample "
            f"({len(samples)}), got {labels.dtype}{list(labels.shape)}"
        )
    return labels


def _choose_losses(
    want: dict[str, np.ndarray], got: dict[str, Any], config: DistillConfig, labeled: bool
) -> dict[str, str]:
    """Output name -> "kl" | "mse", after checking the student's first outputs against the
    teacher's (a shape mismatch is only visible once both have run)."""
    losses = {}
    for name, target in want.items():
        shape = tuple(got[name].shape)
        if shape != target.shape:
            raise ModelError(
                f"distill: the student's output {name!r} has shape {list(shape)} but the "
                f"teacher's has {list(target.shape)} on the same batch; the student must produce "
                "the teacher's outputs"
            )
        if target.dtype.kind != "f":
            continue  # integer outputs (argmax, ids) carry no gradient: not distilled
        kind = config.loss
        if kind == "auto":
            kind = "kl" if target.ndim == 2 else "mse"
        losses[name] = kind
    if not losses:
        raise ModelError("distill: the teacher has no float outputs to distill")
    if labeled and list(losses.values()).count("kl") != 1:
        raise ConfigError(
            "distill: labels need exactly one class-score output (loss 'kl'); the outputs are "
            f"{losses}; drop the labels or set DistillConfig(loss='kl')"
        )
    return losses


# --- training ------------------------------------------------------------------------------------


def _loss(
    torch: Any,
    got: dict[str, Any],
    want: dict[str, np.ndarray],
    labels: np.ndarray | None,
    losses: dict[str, str],
    config: DistillConfig,
) -> Any:
    F = torch.nn.functional
    total = 0.0
    for name, kind in losses.items():
        student, teacher = got[name], torch.from_numpy(np.asarray(want[name]))
        if kind == "kl":
            T = config.temperature
            classes = student.shape[-1]
            s = F.log_softmax(student.reshape(-1, classes) / T, dim=-1)  # (N, classes)
            t = F.log_softmax(teacher.reshape(-1, classes) / T, dim=-1)
            soft = F.kl_div(s, t, log_target=True, reduction="batchmean") * (T * T)
            if labels is None:
                total = total + soft
            else:
                hard = F.cross_entropy(student, torch.from_numpy(labels.astype(np.int64)))
                total = total + config.alpha * soft + (1 - config.alpha) * hard
        else:
            total = total + F.mse_loss(student, teacher)
            if config.cosine_weight:
                cos = F.cosine_similarity(student, teacher, dim=-1)
                total = total + config.cosine_weight * (1 - cos).mean()
    return total


def _zero_masks(module: Any) -> list[tuple[Any, Any]]:
    """(weight, nonzero mask) for each weight (rank >= 2) that has exact zeros."""
    masks = []
    for param in module.parameters():
        if param.dim() >= 2:
            mask = param.detach() != 0
            if not bool(mask.all()):
                masks.append((param, mask.to(param.dtype)))
    return masks


def _batches(
    samples: SampleSet, labels: np.ndarray | None, config: DistillConfig, rng: np.random.Generator
) -> Iterator[tuple[Sample, np.ndarray | None]]:
    """Training batches of config.batch_size: shuffled within windows of the stream (so only a
    window is ever held), each with its labels. A last batch of one sample is left out when there
    are more: BatchNorm cannot compute training statistics over one value per channel."""
    size = config.batch_size
    window = size * _SHUFFLE_WINDOW_BATCHES if config.shuffle else size
    pending: list[Sample] = []
    n_pending = offset = 0
    for batch in samples:
        n = _rows(batch)
        pending.append(batch)
        n_pending += n
        offset += n
        if n_pending >= window:
            yield from _mix(pending, labels, offset - n_pending, size, config.shuffle, rng)
            pending, n_pending = [], 0
    if pending:
        for batch, batch_labels in _mix(
            pending, labels, offset - n_pending, size, config.shuffle, rng
        ):
            if _rows(batch) > 1 or len(samples) == 1:
                yield batch, batch_labels


def _mix(
    batches: list[Sample],
    labels: np.ndarray | None,
    start: int,
    size: int,
    shuffle: bool,
    rng: np.random.Generator,
) -> Iterator[tuple[Sample, np.ndarray | None]]:
    whole = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    n = _rows(whole)
    window_labels = None if labels is None else labels[start : start + n]
    order = rng.permutation(n) if shuffle else np.arange(n)
    for lo in range(0, n, size):
        rows = order[lo : lo + size]
        yield (
            {k: v[rows] for k, v in whole.items()},
            None if window_labels is None else window_labels[rows],
        )


def _rows(batch: Sample) -> int:
    first = next(iter(batch.values()))
    return int(first.shape[0]) if first.ndim else 1


class _Progress:
    """A rich bar over every training batch, with the running loss; silent unless enabled and
    stderr is a terminal."""

    def __init__(self, *, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import TextColumn

            self._bar = progress_bar(True, TextColumn("loss {task.fields[loss]:.4f}"))
            if self._bar is not None:
                self._task = self._bar.add_task("distill", total=self.total, loss=math.nan)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    def advance(self, description: str, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=description, loss=loss)
