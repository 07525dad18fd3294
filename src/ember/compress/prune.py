"""Pruning as graph -> graph: unstructured magnitude pruning (zeros in dense weights, for the sparse
kernels) and structured pruning (whole Conv channels, Gemm/MatMul neurons, attention heads removed,
so the saved model really has smaller tensors).

Structured pruning traces which tensors shrink together in `_channels.py`; a producer whose
channels cannot be traced safely is left whole and named in `PruneResult.skipped`.
Knows nothing about training: distillation recovers the accuracy afterwards (distill.py).

>>> from ember.compress.prune import PruneConfig, prune_model
>>> from ember.zoo import model_path
>>> result = prune_model(model_path("mnist_mlp"), PruneConfig(kind="structured", sparsity=0.5))
>>> [(layer.name, layer.shape_before, layer.shape_after) for layer in result.layers][:2]
[('/0/Gemm', (256, 784), (128, 784)), ('/3/Gemm', (128, 256), (64, 128))]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from ember.compress._channels import (
    ChannelGroup,
    Skipped,
    find_groups,
    observe_shapes,
    remove_channels,
    root_spec,
)
from ember.compress._graph import name_nodes
from ember.errors import ConfigError
from ember.ir import infer_shapes, load_model, verify
from ember.passes.rewrite import add_initializer, constant_array

KINDS = ("unstructured", "structured")
SCOPES = ("global", "layer")
IMPORTANCES = ("l1", "l2", "taylor")
GRANULARITIES = ("channel", "head")
OP_TYPES = ("Conv", "Gemm", "MatMul")


def _choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"PruneConfig.{field} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
        )


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """What to prune and how much.

    kind: "unstructured" zeroes the smallest weights (the model keeps its shapes; the sparse
    kernels run it faster); "structured" removes whole output channels / neurons / heads.
    sparsity: the fraction of weights (unstructured) or of each layer's channels (structured)
    removed, in [0, 1). scope (unstructured): "global" ranks |w| across all layers at once,
    "layer" prunes every layer to `sparsity`. importance (structured): channel score, the L1 or
    L2 norm of its weights, or "taylor" (|w * dL/dw| summed over `data`, needs torch).
    granularity (structured): "channel", or "head" to also prune attention heads whole.
    exclude: node names left whole. min_keep: the fewest channels (structured) or nonzero
    weights (unstructured) a layer may keep; pruning below it is a ConfigError.

    >>> PruneConfig(sparsity=1.0)
    Traceback (most recent call last):
    ...
    ember.errors.ConfigError: PruneConfig.sparsity must be in [0, 1), got 1.0 ...
    """

    kind: str = "unstructured"
    sparsity: float = 0.5
    scope: str = "global"
    importance: str = "l1"
    op_types: tuple[str, ...] = OP_TYPES
    granularity: str = "channel"
    exclude: tuple[str, ...] = ()
    min_keep: int = 1

    def __post_init__(self) -> None:
        _choice("kind", self.kind, KINDS)
        if (
            isinstance(self.sparsity, bool)
            or not isinstance(self.sparsity, int | float)
            or not 0.0 <= self.sparsity < 1.0
        ):
            raise ConfigError(
                f"PruneConfig.sparsity must be in [0, 1), got {self.sparsity!r} (0.5 removes "
                "half; 1.0 would remove everything)"
            )
        _choice("scope", self.scope, SCOPES)
        _choice("importance", self.importance, IMPORTANCES)
        _choice("granularity", self.granularity, GRANULARITIES)
        if self.importance == "taylor" and self.kind != "structured":
            raise ConfigError(
                "PruneConfig.importance='taylor' scores channels for kind='structured'; "
                "unstructured pruning ranks weights by magnitude"
            )
        ops = tuple(self.op_types)
        if not ops or any(op not in OP_TYPES for op in ops):
            raise ConfigError(
                f"PruneConfig.op_types must be a non-empty subset of {OP_TYPES}, got {ops!r}"
            )
        object.__setattr__(self, "op_types", ops)
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if (
            isinstance(self.min_keep, bool)
            or not isinstance(self.min_keep, int)
            or self.min_keep < 1
        ):
            raise ConfigError(f"PruneConfig.min_keep must be an int >= 1, got {self.min_keep!r}")


@dataclasses.dataclass(frozen=True)
class LayerPrune:
    """One pruned layer: its weight shape before and after, and the fraction removed (zeroed
    weights for unstructured pruning, removed channels for structured)."""

    name: str
    op_type: str
    shape_before: tuple[int, ...]
    shape_after: tuple[int, ...]
    sparsity: float


@dataclasses.dataclass(frozen=True)
class PruneResult:
    model: ir.Model
    layers: tuple[LayerPrune, ...]
    skipped: tuple[Skipped, ...]  # producers left whole (structured), with the reason

    @property
    def sparsity(self) -> float:
        """Zero weights / all weights over the pruned layers (unstructured) or removed output
        channels / all (structured)."""
        sizes = [math.prod(layer.shape_before) for layer in self.layers]
        if not sizes:
            return 0.0
        return sum(s * layer.sparsity for s, layer in zip(sizes, self.layers, strict=True)) / sum(
            sizes
        )

    def format(self) -> str:
        """A per-layer table for the terminal."""
        rows = [f"{'layer':<40} {'op':<7} {'weight before':>16} {'after':>16} {'sparsity':>9}"]
        for layer in self.layers:
            rows.append(
                f"{layer.name[:40]:<40} {layer.op_type:<7} {_fmt_shape(layer.shape_before):>16} "
                f"{_fmt_shape(layer.shape_after):>16} {layer.sparsity:>8.1%}"
            )
        for skip in self.skipped:
            rows.append(f"left whole: {skip.node}: {skip.reason}")
        return "\n".join(rows)


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def prune(
    model: ir.Model | str | Path,
    config: PruneConfig,
    data: Iterable[dict[str, np.ndarray]] | str | Path | None = None,
) -> ir.Model:
    """A new, pruned model (the input is never changed); see `prune_model` for the report.

    >>> import numpy as np, ember
    >>> from ember.zoo import model_path
    >>> pruned = prune(model_path("mnist_mlp"), PruneConfig(sparsity=0.9, scope="layer"))
    >>> w = pruned.graph.initializers["0.weight"].const_value.numpy()
    >>> round(float((w == 0).mean()), 2)
    0.9
    """
    return prune_model(model, config, data).model


def prune_model(
    model: ir.Model | str | Path,
    config: PruneConfig,
    data: Iterable[dict[str, np.ndarray]] | str | Path | None = None,
) -> PruneResult:
    """Prune a copy of `model` as `config` says; `data` feeds the Taylor importance."""
    if not isinstance(config, PruneConfig):
        raise ConfigError(f"config must be a PruneConfig, got {type(config).__name__}")
    work = working_copy(model)
    name_nodes(work.graph)
    if config.kind == "unstructured":
        layers = _unstructured(work, config)
        return PruneResult(work, tuple(layers), ())
    if config.importance == "taylor" and data is None:
        raise ConfigError(
            "importance='taylor' needs data (samples to take gradients on): pass data=, or "
            "--data d.npz on the command line; or use importance='l1'"
        )
    return _structured(work, config, data)


def working_copy(model: ir.Model | str | Path) -> ir.Model:
    """A copy of `model` to edit, with every weight in memory.

    Weights in an external data file are read now: the copy (and anything serialized from it,
    such as `ember.load(copy)`) no longer knows the directory the file lies in.
    """
    if isinstance(model, ir.Model):
        work, source = load_model(ir.to_proto(model)), model
    else:
        work = source = load_model(model)
    for name, value in work.graph.initializers.items():
        if isinstance(value.const_value, ir.ExternalTensor):
            original = source.graph.initializers[name].const_value
            assert original is not None
            value.const_value = ir.tensor(original.numpy(), name=name)
    return work


# -- unstructured ----------------------------------------------------------------------------------


def _unstructured(work: ir.Model, config: PruneConfig) -> list[LayerPrune]:
    # weight value -> the nodes reading it (a shared weight is pruned once)
    weights: dict[ir.Value, list[ir.Node]] = {}
    for node in work.graph:
        if node.op_type not in config.op_types or node.name in config.exclude:
            continue
        if node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        arr = constant_array(w)
        if w is None or arr is None or arr.dtype.kind != "f" or arr.ndim < 2:
            continue
        weights.setdefault(w, []).append(node)
    arrays: dict[ir.Value, np.ndarray] = {}
    for w in weights:
        arr = constant_array(w)
        assert arr is not None
        arrays[w] = arr
    masks: dict[ir.Value, np.ndarray] = {}
    if config.scope == "global":
        flat = np.concatenate([np.abs(a).ravel() for a in arrays.values()]) if arrays else None
        if flat is not None:
            k = round(config.sparsity * flat.size)
            drop = np.zeros(flat.size, bool)
            if k:
                drop[np.argpartition(flat, k - 1, kind="introselect")[:k]] = True
            start = 0
            for w, a in arrays.items():
                assert a is not None
                masks[w] = drop[start : start + a.size].reshape(a.shape)
                start += a.size
    else:
        for w, a in arrays.items():
            assert a is not None
            k = round(config.sparsity * a.size)
            drop = np.zeros(a.size, bool)
            if k:
                drop[np.argpartition(np.abs(a).ravel(), k - 1)[:k]] = True
            masks[w] = drop.reshape(a.shape)
    layers = []
    for w, nodes in weights.items():
        a = arrays[w]
        assert a is not None
        pruned = np.where(masks[w], np.zeros((), a.dtype), a)
        nonzero = int(np.count_nonzero(pruned))
        if nonzero < config.min_keep <= np.count_nonzero(a):
            raise ConfigError(
                f"pruning layer {nodes[0].name!r} ({nodes[0].op_type}, weight {w.name!r}) to "
                f"sparsity {config.sparsity} would leave {nonzero} nonzero weights (min_keep "
                f"{config.min_keep}): the whole layer would be deleted; lower the sparsity, use "
                "scope='layer', or exclude the layer"
            )
        if w.is_initializer():
            w.const_value = ir.tensor(pruned, name=w.name)
        else:
            new = add_initializer(work.graph, w.name or "weight", pruned)
            for node in nodes:
                node.replace_input_with(1, new)
        for node in nodes:
            layers.append(
                LayerPrune(node.name or "", node.op_type, a.shape, a.shape, 1 - nonzero / a.size)
            )
    return layers


# -- structured ------------------------------------------------------------------------------------


def _structured(work: ir.Model, config: PruneConfig, data: Any) -> PruneResult:
    infer_shapes(work)
    roots = [
        n
        for n in work.graph
        if n.op_type in config.op_types and n.name not in config.exclude and root_spec(n)
    ]
    search = find_groups(
        work, roots, heads=config.granularity == "head", shapes=observe_shapes(work)
    )
    skipped = list(search.skipped)
    for node in work.graph:
        if node.name in config.exclude and node.op_type in config.op_types:
            skipped.append(Skipped(node.name, "excluded by the config"))
    groups = search.groups
    if config.importance == "taylor" and groups:
        scores = _taylor_scores(work, groups, data)
    else:
        scores = [_norm_scores(g, config.importance) for g in groups]
    removals = []
    for group, score in zip(groups, scores, strict=True):
        n_remove = round(config.sparsity * group.channels)
        keep = group.channels - n_remove
        if keep < config.min_keep:
            what = "heads" if group.unit > 1 else "channels"
            raise ConfigError(
                f"pruning layer {group.name!r} to sparsity {config.sparsity} would keep {keep} "
                f"of its {group.channels} {what} (min_keep {config.min_keep}): that deletes the "
                "layer; lower the sparsity or exclude the layer"
            )
        # The lowest scores go; a stable sort keeps the choice deterministic on ties.
        removals.append((group, np.sort(np.argsort(score, kind="stable")[:n_remove])))
    before = {
        ref.node: constant_array(ref.node.inputs[ref.index]).shape  # type: ignore[union-attr]
        for g in groups
        for ref in g.weights
    }
    remove_channels(work, removals)
    _tidy(work)
    layers = []
    for group, removed in removals:
        for ref in group.weights:
            after = constant_array(ref.node.inputs[ref.index])
            assert after is not None
            layers.append(
                LayerPrune(
                    ref.node.name or "",
                    ref.node.op_type,
                    tuple(before[ref.node]),
                    tuple(after.shape),
                    len(removed) / group.channels,
                )
            )
    return PruneResult(work, tuple(layers), tuple(skipped))


def _norm_scores(group: ChannelGroup, importance: str) -> np.ndarray:
    score = np.zeros(group.channels)
    for ref in group.weights:
        w = constant_array(ref.node.inputs[ref.index])
        assert w is not None
        score += _per_channel(np.moveaxis(w, ref.axis, 0), group, ref.span, importance)
    return score


def _per_channel(rows: np.ndarray, group: ChannelGroup, span: Any, importance: str) -> np.ndarray:
    """Per channel: L1 or L2 norm of its rows (axis 0) of `rows`."""
    idx = span.positions(np.arange(group.channels)).reshape(group.channels, span.unit)
    block = rows[idx].reshape(group.channels, -1).astype(np.float64)  # (C, unit * rest)
    if importance == "l2":
        return np.sqrt((block**2).sum(axis=1))
    return np.abs(block).sum(axis=1)


def _taylor_scores(work: ir.Model, groups: list[ChannelGroup], data: Any) -> list[np.ndarray]:
    """|w * dL/dw| summed over the data and over each channel's weights. L is the cross entropy
    of the first output with labels, else half its squared norm (output sensitivity)."""
    from ember.compress.data import load_samples

    try:
        from ember.compress.torch_exec import require_torch, to_torch
    except ImportError:
        raise ConfigError("importance='taylor' needs torch: pip install 'ember[torch]'") from None
    torch = require_torch("importance='taylor'")
    samples = load_samples(data, work, what="pruning")
    module = to_torch(work).eval()
    labels = samples.labels
    seen = 0
    for batch in samples:
        outputs = module(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()})
        first = outputs[module.output_names[0]]
        n = first.shape[0]
        if labels is not None and first.ndim == 2:
            target = torch.from_numpy(np.asarray(labels[seen : seen + n], np.int64))
            loss = torch.nn.functional.cross_entropy(first, target, reduction="sum")
        else:
            loss = 0.5 * (first.float() ** 2).sum()
        loss.backward()
        seen += n
    scores = []
    for group in groups:
        score = np.zeros(group.channels)
        for ref in group.weights:
            value = ref.node.inputs[ref.index]
            key = module.initializer_keys.get(value.name) if value is not None else None
            param = getattr(module, key) if key else None
            if param is None or param.grad is None:
                raise ConfigError(
                    f"importance='taylor': the weight of {ref.node.name!r} is not a trainable "
                    "initializer; use importance='l1'"
                )
            taylor = (param.detach() * param.grad).abs().numpy()
            score += _per_channel(np.moveaxis(taylor, ref.axis, 0), group, ref.span, "l1")
        scores.append(score)
    return scores


def _tidy(work: ir.Model) -> None:
    """Drop what the edits left unused and re-infer every intermediate shape."""
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    RemoveUnusedNodesPass()(work)
    graph = work.graph
    keep = {*graph.inputs, *graph.outputs}
    for node in graph:
        for v in node.outputs:
            if v not in keep:
                v.shape = None
    infer_shapes(work)
    verify(work)
