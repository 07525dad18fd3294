"""Compiled plans: intermediates freed after last use, pruning, subgraph captures, node errors."""

from __future__ import annotations

import numpy as np
import onnx.parser
import pytest
from tests.models import mlp

import ember
from ember.errors import ExecutionError, UnsupportedError


def test_intermediates_are_freed_after_their_last_use() -> None:
    plan = ember.load(mlp(), level=0).plan()
    freed = {s for step in plan.steps for s in step.frees}
    slot_of_h = plan.steps[0].outputs[0]
    assert slot_of_h in plan.steps[1].frees  # h dies at Add, its only reader
    assert not set(plan.output_slots) & freed  # graph outputs are never freed


def test_unneeded_nodes_are_not_run() -> None:
    plan = ember.load(mlp(), level=0).plan(["h"])
    assert [s.node.op_type for s in plan.steps] == ["MatMul"]


def test_subgraph_reads_outer_scope_values() -> None:
    model = ember.load(
        onnx.parser.parse_model(
            """<ir_version: 8, opset_import: ["" : 17]>
            g (bool c, float[2] x) => (float[2] y) {
                t = Mul(x, x)
                y = If(c) <then_branch = g1 () => (float[2] r) { r = Add(t, x) },
                           else_branch = g2 () => (float[2] r) { r = Neg(t) }>
            }"""
        )
    )
    x = np.array([1.0, 2.0], np.float32)
    np.testing.assert_array_equal(model.run({"c": np.array(True), "x": x})["y"], [2.0, 6.0])
    np.testing.assert_array_equal(model.run({"c": np.array(False), "x": x})["y"], [-1.0, -4.0])


def test_a_failing_node_is_named() -> None:
    model = ember.load(
        onnx.parser.parse_model(
            """<ir_version: 8, opset_import: ["" : 17]>
            g (float[N] x, int64[2] s) => (float[?, ?] y) { y = Reshape(x, s) }"""
        )
    )
    with pytest.raises(ExecutionError, match=r"node .* \(Reshape\) failed"):
        model.run({"x": np.ones(5, np.float32), "s": np.array([2, 2])})


def test_unsupported_op_is_reported_at_load() -> None:
    text = """<ir_version: 8, opset_import: ["" : 17, "com.acme" : 1]>
    g (float[2] x) => (float[2] y) { y = com.acme.Frobnicate(x) }"""
    with pytest.raises(UnsupportedError, match=r"op com\.acme::Frobnicate \(opset 1\)"):
        ember.load(onnx.parser.parse_model(text))


def test_unknown_attribute_is_unsupported_not_ignored() -> None:
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) { y = Relu <bogus = 1> (x) }"""
    with pytest.raises(UnsupportedError, match="attribute 'bogus' is not supported"):
        ember.load(
            onnx.parser.parse_model(text),
        )
