"""Level-1 passes: constant folding (with its size limit), Shape/Size of static shapes, Identity and
inference Dropout removal, CSE and dead code removal."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx_ir.passes.common import RemoveUnusedNodesPass
from tests.passes.graphs import attrs, check_rewrite, model, ops, run, weights

from ember.passes import optimize
from ember.passes.basic import EliminatePassthroughPass, FoldConstantsPass


def level1(m: ir.Model) -> None:
    optimize(m, 1)


def fold(limit: int = 1 << 20):
    def rewrite(m: ir.Model) -> None:
        ir.passes.PassManager([FoldConstantsPass(limit), RemoveUnusedNodesPass()])(m)

    return rewrite


X23 = weights(2, 3, seed=1)

FOLD = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y) {
    c = Add(a, b)
    k = Constant <value = float[1] {2.0}> ()
    d = Mul(c, k)
    y = Mul(x, d)
}
"""


def test_constant_subgraph_folds_into_one_initializer() -> None:
    a, b = weights(2, 3, seed=2), weights(3, seed=3)
    m = check_rewrite(lambda: model(FOLD, a=a, b=b), fold(), [X23])
    assert ops(m) == {"Mul": 1}
    d = m.graph.node(0).inputs[1]
    assert d.name == "d" and d.is_initializer()
    np.testing.assert_array_equal(d.const_value.numpy(), (a + b) * np.float32(2.0))
    assert set(m.graph.initializers) == {"d"}  # a and b are dead once d is folded


def test_folding_keeps_a_folded_graph_output_by_name() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3] x) => (float[3] y, float[K] c) {
        c = Neg(a)
        y = Add(x, c)
    }
    """
    m = check_rewrite(lambda: model(text, a=weights(3)), level1, [weights(3, seed=4)])
    assert ops(m) == {"Add": 1}
    assert [v.name for v in m.graph.outputs] == ["y", "c"]
    assert m.graph.outputs[1].is_initializer()


def test_overridable_initializer_is_not_a_constant() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3] x, float[3] a) => (float[3] y) {
        c = Relu(a)
        y = Add(x, c)
    }
    """
    m = model(text, a=weights(3))
    optimize(m, 1)
    assert ops(m) == {"Relu": 1, "Add": 1}
    a = weights(3, seed=5)
    np.testing.assert_array_equal(run(m, X23[0], a)[0], X23[0] + np.maximum(a, 0))


def test_outputs_over_the_size_limit_are_not_folded() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[5] x) => (float[5] y) {
        c = Add(a, b)
        y = Mul(x, c)
    }
    """
    make = lambda: model(text, a=weights(5), b=weights(5, seed=1))  # noqa: E731
    x = weights(5, seed=2)
    assert ops(check_rewrite(make, fold(limit=4), [x])) == {"Add": 1, "Mul": 1}
    assert ops(check_rewrite(make, fold(limit=5), [x])) == {"Mul": 1}


def test_a_big_expand_is_not_folded_at_level_1() -> None:
    # 1025 * 1024 elements is just over the 1M-element limit: folding would bloat the model.
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1025, 1024] x) => (float[1025, 1024] y) {
        s = Constant <value = int64[2] {1025, 1024}> ()
        big = Expand(c, s)
        y = Add(x, big)
    }
    """
    x = weights(1025, 1024)
    m = check_rewrite(lambda: model(text, c=np.float32(3.0)), level1, [x])
    assert ops(m) == {"Expand": 1, "Add": 1}


def test_generators_of_unknown_size_are_not_evaluated() -> None:
    # Without shape inference nobody knows how big ConstantOfShape's output is: never allocated.
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) {
        z = ConstantOfShape(s)
        y = Add(x, z)
    }
    """
    m = model(text, s=np.array([2], np.int64))
    fold()(m)
    assert ops(m) == {"ConstantOfShape": 1, "Add": 1}
    optimize(m, 1)  # shape inference says (2,): now it folds
    assert ops(m) == {"Add": 1}


def test_random_ops_are_never_folded() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) {
        r = RandomNormal <shape = [2], dtype = 1> ()
        y = Add(x, r)
    }
    """
    m = model(text)
    optimize(m, 1)
    assert ops(m) == {"RandomNormal": 1, "Add": 1}


SHAPES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[{batch}, 3, 4] x) => (float[{batch3}, 4] y) {{
    s = Shape(x)
    zero = Constant <value = int64[1] {{0}}> ()
    one = Constant <value = int64[1] {{1}}> ()
    n = Gather <axis = 0> (s, zero)
    c = Gather <axis = 0> (s, one)
    nc = Mul(n, c)
    last = Slice(s, two, three)
    shape = Concat <axis = 0> (nc, last)
    r = Reshape(x, shape)
    size = Size(x)
    f = Cast <to = 1> (size)
    y = Div(r, f)
}}
"""


def test_shape_arithmetic_of_static_shapes_folds_away() -> None:
    text = SHAPES.format(batch=2, batch3=6)
    make = lambda: model(text, two=np.array([2]), three=np.array([3]))  # noqa: E731
    m = check_rewrite(make, level1, [weights(2, 3, 4)])
    assert ops(m) == {"Reshape": 1, "Div": 1}
    np.testing.assert_array_equal(only_const(m, "Reshape", 1), [6, 4])
    np.testing.assert_array_equal(only_const(m, "Div", 1), np.float32(24))


def test_shape_of_a_dynamic_shape_stays() -> None:
    text = SHAPES.format(batch="N", batch3="M")
    make = lambda: model(text, two=np.array([2]), three=np.array([3]))  # noqa: E731
    m = check_rewrite(make, level1, [weights(5, 3, 4)])
    assert ops(m)["Shape"] == 1 and ops(m)["Size"] == 1 and ops(m)["Reshape"] == 1


def only_const(m: ir.Model, op_type: str, index: int) -> np.ndarray:
    (node,) = [n for n in m.graph if n.op_type == op_type]
    value = node.inputs[index]
    assert value is not None and value.const_value is not None
    return value.const_value.numpy()


def test_identity_is_removed_and_output_names_stay() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] y) {
        t = Identity(x)
        u = Relu(t)
        y = Identity(u)
    }
    """
    m = check_rewrite(lambda: model(text), level1, [X23])
    assert ops(m) == {"Relu": 1}
    assert m.graph.node(0).outputs[0].name == "y"


@pytest.mark.parametrize(
    "body",
    [
        "y = Identity(x)",  # input straight to output: one value cannot hold both names
        "a = Relu(x)\n b = Identity(a)",  # a is an output too: renaming it would lose it
        "b = Identity(w)\n a = Relu(x)",  # an initializer keeps its name (folding copies it)
    ],
)
def test_identity_between_named_values_stays(body: str) -> None:
    outs = "float[3] y" if body.startswith("y") else "float[3] a, float[3] b"
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3] x) => ({outs}) {{
        {body}
    }}
    """
    rewrite = lambda m: EliminatePassthroughPass()(m)  # noqa: E731
    m = check_rewrite(lambda: model(text, w=weights(3)), rewrite, [weights(3, seed=1)])
    assert ops(m)["Identity"] == 1
    check_rewrite(lambda: model(text, w=weights(3)), level1, [weights(3, seed=1)])


def test_inference_dropout_is_removed() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 3] x) => (float[2, 3] y) {
        d = Dropout(x, ratio)
        e, unused_mask = Dropout(d, ratio, no)
        y = Relu(e)
    }
    """
    make = lambda: model(text, ratio=np.float32(0.5), no=np.array(False))  # noqa: E731
    m = check_rewrite(make, level1, [X23])
    assert ops(m) == {"Relu": 1}


@pytest.mark.parametrize(
    "body",
    [
        # The mask is read: Dropout stays.
        "d, mask = Dropout(x)\n f = Cast <to = 1> (mask)\n y = Add(d, f)",
        # training_mode is not a known false.
        "y = Dropout(x, ratio, training)",
    ],
)
def test_dropout_that_matters_stays(body: str) -> None:
    text = f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 3] x, bool training) => (float[2, 3] y) {{
        {body}
    }}
    """
    m = model(text, ratio=np.float32(0.0))
    optimize(m, 1)
    assert ops(m)["Dropout"] == 1
    assert not EliminatePassthroughPass()(m).modified


def test_common_subexpressions_and_dead_nodes_go() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] y) {
        a = Relu(x)
        b = Relu(x)
        dead = Sigmoid(x)
        y = Add(a, b)
    }
    """
    m = check_rewrite(lambda: model(text), level1, [X23])
    assert ops(m) == {"Relu": 1, "Add": 1}


def test_shape_inference_keeps_the_signature() -> None:
    # Inference would call the output dim N; the model says M, and M it stays.
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3] x) => (float[M, 3] y) {
        y = Relu(x)
    }
    """
    m = check_rewrite(lambda: model(text), level1, [X23])
    assert str(m.graph.outputs[0].shape) == "[M,3]"
    assert attrs(m.graph.node(0)) == {}
