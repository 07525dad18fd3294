"""Helpers for the pass tests: small models from ONNX text, running them, comparing structure."""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir

from ember.ir.verify import topological_order, verify
from ember.runtime.plan import compile_graph


def model(text: str, **initializers: np.ndarray) -> ir.Model:
    """A model from ONNX text, with `initializers` (name=array) added as its weights."""
    proto = onnx.parser.parse_model(text)
    for name, array in initializers.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
    m = ir.serde.deserialize_model(proto)
    verify(m)
    return m


def weights(*shape: int, seed: int = 0, positive: bool = False) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.abs(a) + 0.5 if positive else a


def run(m: ir.Model, *inputs: np.ndarray) -> list[np.ndarray]:
    """The model's outputs on `inputs`, through the reference ops (ai.ember ones included)."""
    return compile_graph(m.graph, dict(m.opset_imports), allow_fallback=False).run(list(inputs))


def ops(m: ir.Model) -> dict[str, int]:
    """Op histogram; ai.ember ops are prefixed `ember.`."""
    names = (f"ember.{n.op_type}" if n.domain == "ai.ember" else n.op_type for n in m.graph)
    return dict(collections.Counter(names))


def only(m: ir.Model, op_type: str) -> ir.Node:
    """The one node of `op_type` in `m`."""
    found = [n for n in m.graph if n.op_type == op_type]
    assert len(found) == 1, f"expected one {op_type}, found {len(found)}: {ops(m)}"
    return found[0]


def attrs(node: ir.Node) -> dict[str, object]:
    return {k: a.value for k, a in node.attributes.items()}


def snapshot(m: ir.Model) -> tuple[str, dict[str, bytes]]:
    """Everything that makes a model what it is: its text and its weights."""
    weights = {k: v.const_value.numpy().tobytes() for k, v in m.graph.initializers.items()}
    return ir.to_onnx_text(m, exclude_initializers=True), weights


def signature(m: ir.Model) -> list[tuple[str | None, object, object]]:
    return [(v.name, v.type, v.shape) for v in (*m.graph.inputs, *m.graph.outputs)]


def check_rewrite(
    make: Callable[[], ir.Model],
    rewrite: Callable[[ir.Model], object],
    inputs: Sequence[np.ndarray],
    *,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> ir.Model:
    """Apply `rewrite` to a fresh `make()` and check what every pass promises: the model stays
    valid, keeps its signature, computes the same outputs, and a second rewrite changes nothing.
    Returns the rewritten model for structural checks."""
    before = make()
    expected = run(before, *inputs)
    m = make()
    sig = signature(m)
    rewrite(m)
    verify(m)
    assert signature(m) == sig
    got = run(m, *inputs)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape
        scale = float(np.abs(e).max()) if e.size and e.dtype.kind == "f" else 1.0
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol * max(scale, 1.0))
    once = snapshot(m)
    rewrite(m)
    assert snapshot(m) == once, "rewriting twice differs from rewriting once"
    return m


def structure(m: ir.Model) -> tuple[list[tuple[object, ...]], list[str | None]]:
    """The graph as data, independent of the names of intermediate values and weights: per node
    (in topological order) its domain, op, attributes and inputs, where an input is a graph input's
    name, ("const", shape) for a weight, or (node index, output index) for a node output."""
    order = topological_order(m.graph)
    made = {v: (i, k) for i, n in enumerate(order) for k, v in enumerate(n.outputs)}

    def ref(v: ir.Value | None) -> object:
        if v is None:
            return None
        if v in made:
            return made[v]
        if v.is_initializer() and not v.is_graph_input() and v.const_value is not None:
            return ("const", tuple(v.const_value.shape))
        return v.name

    nodes = [
        (
            n.domain,
            n.op_type,
            sorted((k, a.value) for k, a in n.attributes.items()),
            [ref(v) for v in n.inputs],
        )
        for n in order
    ]
    return nodes, [v.name for v in m.graph.outputs]


def assert_structure(m: ir.Model, expected_text: str, **initializers: np.ndarray) -> None:
    """`m` has the graph that `expected_text` writes (weights compared by shape only)."""
    expected = model(expected_text, **initializers)
    assert structure(m) == structure(expected)
