"""Low-rank factorization as graph -> graph: a large constant Gemm/MatMul weight W (K x N) becomes
two MatMuls, x @ A (K x r) @ B (r x N), by truncated SVD, only where r*(K+N) < K*N saves FLOPs.

The relative Frobenius error of each replaced weight is exact: sqrt(sum of the dropped s^2 /
sum of all s^2). Knows nothing about training (distillation can recover what the error costs).

>>> from ember.compress.lowrank import LowRankConfig, lowrank
>>> from ember.zoo import model_path
>>> model, layers = lowrank(model_path("mnist_mlp"), LowRankConfig(rank=16))
>>> [(layer.name, layer.shape, layer.rank, layer.replaced) for layer in layers][:2]
[('/0/Gemm', (784, 256), 16, True), ('/3/Gemm', (256, 128), 16, True)]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx_ir as ir

from ember.errors import ConfigError
from ember.ir import infer_shapes, verify
from ember.passes.rewrite import add_initializer, attr_value, constant_array, unique_name


@dataclasses.dataclass(frozen=True)
class LowRankConfig:
    """`rank`: keep this many singular values per layer; otherwise `energy`: keep the fewest whose
    squares sum to at least this fraction of all (0.95 keeps 95% of the squared Frobenius norm).
    Only weights with at least `min_size` elements, on `op_types` nodes, are considered.

    >>> LowRankConfig(energy=1.5)
    Traceback (most recent call last):
    ...
    ember.errors.ConfigError: LowRankConfig.energy must be in (0, 1], got 1.5
    """

    energy: float | None = 0.95
    rank: int | None = None
    min_size: int = 64 * 64
    op_types: tuple[str, ...] = ("Gemm", "MatMul")
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.rank is not None:
            if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
                raise ConfigError(f"LowRankConfig.rank must be an int >= 1, got {self.rank!r}")
        elif self.energy is None:
            raise ConfigError("LowRankConfig needs energy (e.g. 0.95) or rank (e.g. 64)")
        if self.energy is not None and (
            isinstance(self.energy, bool)
            or not isinstance(self.energy, int | float)
            or not 0.0 < self.energy <= 1.0
        ):
            raise ConfigError(f"LowRankConfig.energy must be in (0, 1], got {self.energy!r}")
        if (
            isinstance(self.min_size, bool)
            or not isinstance(self.min_size, int)
            or self.min_size < 1
        ):
            raise ConfigError(f"LowRankConfig.min_size must be an int >= 1, got {self.min_size!r}")
        ops = tuple(self.op_types)
        if not ops or any(op not in ("Gemm", "MatMul") for op in ops):
            raise ConfigError(
                f"LowRankConfig.op_types must be a non-empty subset of ('Gemm', 'MatMul'), got "
                f"{ops!r}"
            )
        object.__setattr__(self, "op_types", ops)
        object.__setattr__(self, "exclude", tuple(self.exclude))


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """One considered layer. shape: W as (K, N); error: relative Frobenius error of the rank-r
    weight (0 when not replaced); flops_*: per input row (2 per multiply-add)."""

    name: str
    op_type: str
    shape: tuple[int, int]
    rank: int
    error: float
    flops_before: int
    flops_after: int
    replaced: bool
    reason: str = ""  # why a layer was left alone


def choose_rank(singular: np.ndarray, config: LowRankConfig) -> int:
    """The rank `config` asks for, given singular values in descending order.

    >>> choose_rank(np.array([3.0, 2.0, 1.0]), LowRankConfig(energy=0.9))
    2
    """
    if config.rank is not None:
        return min(config.rank, len(singular))
    assert config.energy is not None
    squares = singular.astype(np.float64) ** 2
    total = squares.sum()
    if total == 0:
        return 1
    kept = np.cumsum(squares) / total
    # NOTE: a tiny tolerance so that energy=1.0 does not demand more than float rounding gives.
    return min(int(np.searchsorted(kept, config.energy - 1e-12)) + 1, len(singular))


def relative_error(singular: np.ndarray, rank: int) -> float:
    """||W - W_r||_F / ||W||_F for the rank-r truncation (Eckart-Young)."""
    squares = singular.astype(np.float64) ** 2
    total = squares.sum()
    return float(np.sqrt(squares[rank:].sum() / total)) if total > 0 else 0.0


def lowrank(
    model: ir.Model | str | Path, config: LowRankConfig = LowRankConfig()
) -> tuple[ir.Model, list[LayerReport]]:
    """A new model with large weights factorized where it saves FLOPs, and a report per layer."""
    if not isinstance(config, LowRankConfig):
        raise ConfigError(f"config must be a LowRankConfig, got {type(config).__name__}")
    from ember.compress.prune import working_copy

    work = working_copy(model)
    graph = work.graph
    reports: list[LayerReport] = []
    for i, node in enumerate(list(graph)):
        weight = _weight(node, config)
        if weight is None:
            continue
        name = node.name or f"{node.op_type}_{i}"
        K, N = weight.shape
        flops = 2 * K * N
        if weight.size < config.min_size:
            reports.append(
                LayerReport(
                    name,
                    node.op_type,
                    (K, N),
                    min(K, N),
                    0.0,
                    flops,
                    flops,
                    False,
                    f"smaller than min_size {config.min_size}",
                )
            )
            continue
        U, s, Vt = np.linalg.svd(weight.astype(np.float64), full_matrices=False)
        r = choose_rank(s, config)
        after = 2 * r * (K + N)
        if r * (K + N) >= K * N:
            reports.append(
                LayerReport(
                    name,
                    node.op_type,
                    (K, N),
                    r,
                    0.0,
                    flops,
                    flops,
                    False,
                    f"rank {r} saves no FLOPs: r*(K+N) = {r * (K + N)} >= K*N = {K * N}",
                )
            )
            continue
        root = np.sqrt(s[:r])
        a = (U[:, :r] * root).astype(weight.dtype)  # (K, r)
        b = (root[:, None] * Vt[:r]).astype(weight.dtype)  # (r, N)
        _factorize(graph, node, name, a, b)
        reports.append(
            LayerReport(name, node.op_type, (K, N), r, relative_error(s, r), flops, after, True)
        )
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    RemoveUnusedNodesPass()(work)
    infer_shapes(work)
    verify(work)
    return work, reports


def _weight(node: ir.Node, config: LowRankConfig) -> np.ndarray | None:
    """W as (K, N) when `node` multiplies by a constant float matrix, else None."""
    if node.op_type not in config.op_types or node.name in config.exclude:
        return None
    if node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    w = constant_array(node.inputs[1])
    if w is None or w.ndim != 2 or w.dtype.kind != "f":
        return None
    if node.op_type == "Gemm":
        if attr_value(node, "transA", 0):
            return None
        return w.T if attr_value(node, "transB", 0) else w
    return w


def _factorize(graph: ir.Graph, node: ir.Node, name: str, a: np.ndarray, b: np.ndarray) -> None:
    """x @ W (+ bias) -> (x @ a) @ b (+ bias): a MatMul, then the node itself with weight b."""
    a_value = add_initializer(graph, f"{name}_lowrank_a", a)
    b_value = add_initializer(graph, f"{name}_lowrank_b", b)
    x = node.inputs[0]
    hidden = ir.Value(
        name=unique_name(graph, f"{name}_lowrank"),
        type=ir.TensorType(ir.DataType.from_numpy(a.dtype)),
    )
    first = ir.Node("", "MatMul", [x, a_value], outputs=[hidden], name=f"{name}_lowrank_a")
    graph.insert_before(node, first)
    node.replace_input_with(0, hidden)
    node.replace_input_with(1, b_value)
    if node.op_type == "Gemm" and attr_value(node, "transB", 0):
        node.attributes["transB"] = ir.AttrInt64("transB", 0)
