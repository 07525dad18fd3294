"""The verifier names the node and what is wrong for each structural problem."""

from __future__ import annotations

import onnx
import onnx.parser
import pytest
from onnx import TensorProto
from onnx import helper as h

import ember
from ember.errors import ModelError
from ember.ir import load_model, topological_order


def model_of(nodes, inputs=("x",), outputs=("y",), opset=17, domains=()):
    g = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in inputs],
        [h.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in outputs],
    )
    ops = [h.make_opsetid("", opset)] + [h.make_opsetid(d, 1) for d in domains]
    return h.make_model(g, opset_imports=ops)


def test_cycle() -> None:
    m = model_of(
        [
            h.make_node("Relu", ["b"], ["a"], name="n1"),
            h.make_node("Relu", ["a"], ["b"], name="n2"),
            h.make_node("Add", ["a", "x"], ["y"], name="n3"),
        ]
    )
    with pytest.raises(ModelError, match=r"graph 'g' has a cycle: .*node 'n1' \(Relu\)") as e:
        ember.load(m)
    assert "\n" not in str(e.value)


def test_dangling_input() -> None:
    m = model_of([h.make_node("Add", ["x", "ghost"], ["y"], name="adder")])
    with pytest.raises(ModelError, match=r"node 'adder' \(Add\) input 1 'ghost' is not produced"):
        ember.load(m)


def test_value_produced_twice() -> None:
    m = model_of(
        [h.make_node("Relu", ["x"], ["y"], name="r1"), h.make_node("Neg", ["x"], ["y"], name="r2")]
    )
    with pytest.raises(
        ModelError, match=r"Output 'y' is redeclared .* by operator 'Neg' of node 'r2'"
    ):
        ember.load(m)


def test_graph_output_never_produced() -> None:
    m = model_of([h.make_node("Relu", ["x"], ["z"], name="r")])
    with pytest.raises(ModelError, match="graph output 'y' is not produced"):
        ember.load(m)


def test_domain_without_opset_import() -> None:
    m = model_of([h.make_node("Frob", ["x"], ["y"], name="f", domain="com.acme")])
    with pytest.raises(
        ModelError,
        match=r"node 'f' \(com.acme::Frob\) uses domain 'com.acme', which the model does not",
    ):
        ember.load(m)


def test_unnamed_node_is_named_by_position() -> None:
    m = model_of([h.make_node("Relu", ["x"], ["t"]), h.make_node("Add", ["t", "nothing"], ["y"])])
    with pytest.raises(ModelError, match=r"unnamed node #1 \(Add\) input 1 'nothing'"):
        ember.load(m)


def test_out_of_order_nodes_are_sorted() -> None:
    m = model_of(
        [
            h.make_node("Neg", ["t"], ["y"], name="second"),
            h.make_node("Relu", ["x"], ["t"], name="first"),
        ]
    )
    order = topological_order(load_model(m).graph)
    assert [n.name for n in order] == ["first", "second"]


def test_subgraph_reading_an_undefined_value() -> None:
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (bool c, float[2] x) => (float[2] y) {
        y = If(c) <then_branch = g1 () => (float[2] r) { r = Neg(undefined_thing) },
                   else_branch = g2 () => (float[2] r) { r = Neg(x) }>
    }"""
    with pytest.raises(ModelError, match="'undefined_thing' is not produced"):
        ember.load(onnx.parser.parse_model(text))
