"""If, Loop and Scan through the runtime, on small graphs built in code."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import ember
from ember.errors import ExecutionError

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def tensor(name, elem=F, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def model(nodes, inputs, outputs, opset=21, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def const(name, value):
    return helper.make_node(
        "Constant",
        [],
        [name],
        value=helper.make_tensor(
            name + "_v",
            helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype),
            np.shape(value),
            np.asarray(value).reshape(-1).tolist(),
        ),
    )


# ----------------------------------------------------------------------------------------------
# If
# ----------------------------------------------------------------------------------------------


def if_model(then_nodes, then_out, else_nodes, else_out, outputs, inputs=(), cond_shape=()):
    then_g = helper.make_graph(then_nodes, "then", [], then_out)
    else_g = helper.make_graph(else_nodes, "else", [], else_out)
    node = helper.make_node(
        "If", ["cond"], [o.name for o in outputs], then_branch=then_g, else_branch=else_g
    )
    return model([node], [tensor("cond", B, cond_shape), *inputs], outputs)


def test_if_picks_a_branch():
    m = if_model(
        [const("a", np.float32([1, 2]))],
        [tensor("a")],
        [const("b", np.float32([3, 4, 5]))],
        [tensor("b")],
        [tensor("y")],
    )
    loaded = ember.load(m)
    np.testing.assert_array_equal(loaded.run({"cond": np.array(True)})["y"], [1, 2])
    np.testing.assert_array_equal(loaded.run({"cond": np.array(False)})["y"], [3, 4, 5])


def test_if_accepts_a_one_element_tensor_and_rejects_more():
    m = ember.load(
        if_model(
            [const("a", np.float32(1))],
            [tensor("a")],
            [const("b", np.float32(2))],
            [tensor("b")],
            [tensor("y")],
            cond_shape=None,
        )
    )
    assert m.run({"cond": np.array([False])})["y"] == 2
    with pytest.raises(ExecutionError, match="If's cond must hold exactly one element"):
        m.run({"cond": np.array([True, False])})


def test_if_returns_several_outputs_and_sequences():
    then_nodes = [
        const("a", np.float32(1)),
        const("b", np.float32(2)),
        helper.make_node("SequenceConstruct", ["a", "b"], ["s"]),
    ]
    else_nodes = [const("c", np.float32(3)), helper.make_node("SequenceConstruct", ["c"], ["s2"])]
    seq = helper.make_tensor_sequence_value_info
    m = ember.load(
        if_model(
            then_nodes,
            [tensor("a"), seq("s", F, None)],
            [*else_nodes, const("d", np.float32(4))],
            [tensor("d"), seq("s2", F, None)],
            [tensor("y"), seq("z", F, None)],
        )
    )
    out = m.run({"cond": np.array(True)})
    assert out["y"] == 1 and [float(v) for v in out["z"]] == [1, 2]
    out = m.run({"cond": np.array(False)})
    assert out["y"] == 4 and [float(v) for v in out["z"]] == [3]


def test_if_returns_an_empty_optional():
    opt = helper.make_optional_type_proto(helper.make_tensor_type_proto(F, []))
    then_nodes = [
        helper.make_node("Optional", [], ["o"], type=helper.make_tensor_type_proto(F, []))
    ]
    else_nodes = [const("x", np.float32(7)), helper.make_node("Optional", ["x"], ["o2"])]
    out_vi = helper.make_value_info("y", opt)
    m = ember.load(
        if_model(
            then_nodes,
            [helper.make_value_info("o", opt)],
            else_nodes,
            [helper.make_value_info("o2", opt)],
            [out_vi],
        )
    )
    assert m.run({"cond": np.array(True)})["y"] is None
    assert m.run({"cond": np.array(False)})["y"] == 7


def test_if_branches_read_outer_values():
    then_nodes = [helper.make_node("Identity", ["x"], ["a"])]
    else_nodes = [helper.make_node("Neg", ["x"], ["b"])]
    # "x" sits at a different slot in the outer graph than in the branches.
    m = if_model(
        then_nodes,
        [tensor("a")],
        else_nodes,
        [tensor("b")],
        [tensor("y")],
        inputs=[tensor("unused"), tensor("x", F, [2])],
    )
    loaded = ember.load(m)
    x, u = np.float32([1, -2]), np.float32(0)
    np.testing.assert_array_equal(loaded.run({"cond": np.array(True), "x": x, "unused": u})["y"], x)
    np.testing.assert_array_equal(
        loaded.run({"cond": np.array(False), "x": x, "unused": u})["y"], -x
    )


def test_loop_body_reads_outer_values_and_nested_captures():
    # Loop body -> If branch -> reads the outer "step": two levels of capture.
    then_g = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "step"], ["t"])], "then", [], [tensor("t", F, [])]
    )
    else_g = helper.make_graph(
        [helper.make_node("Sub", ["acc_in", "step"], ["e"])], "else", [], [tensor("e", F, [])]
    )
    nodes = [
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        const("two", np.int64(2)),
        helper.make_node("Mod", ["i", "two"], ["parity"]),
        const("zero", np.int64(0)),
        helper.make_node("Equal", ["parity", "zero"], ["even"]),
        helper.make_node("If", ["even"], ["acc_out"], then_branch=then_g, else_branch=else_g),
    ]
    body = loop_body(
        nodes, [tensor("acc_in", F, [])], [tensor("cond_out", B, []), tensor("acc_out", F, [])]
    )
    loop = helper.make_node("Loop", ["M", "", "acc0"], ["acc"], body=body)
    m = ember.load(
        model(
            [loop],
            [tensor("M", I64, []), tensor("acc0", F, []), tensor("step", F, [])],
            [tensor("acc", F, None)],
        )
    )
    out = m.run({"M": np.int64(5), "acc0": np.float32(0), "step": np.float32(10)})["acc"]
    assert out == 10  # +10 -10 +10 -10 +10


# ----------------------------------------------------------------------------------------------
# Loop
# ----------------------------------------------------------------------------------------------


def loop_body(nodes, carried_in, outputs):
    inputs = [tensor("i", I64, []), tensor("cond_in", B, []), *carried_in]
    return helper.make_graph(nodes, "body", inputs, outputs)


def sum_loop(M: bool, cond: bool, stop_at=None, opset=21):
    """acc += i each trip; scan output i*1.0; body cond = (i + 1 < stop_at) if stop_at."""
    nodes = [
        helper.make_node("Cast", ["i"], ["fi"], to=F),
        helper.make_node("Add", ["acc_in", "fi"], ["acc_out"]),
        helper.make_node("Identity", ["fi"], ["scan"]),
    ]
    if stop_at is None:
        nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    else:
        nodes += [
            const("one", np.int64(1)),
            const("stop", np.int64(stop_at)),
            helper.make_node("Add", ["i", "one"], ["next"]),
            helper.make_node("Less", ["next", "stop"], ["cond_out"]),
        ]
    body = loop_body(
        nodes,
        [tensor("acc_in", F, [])],
        [tensor("cond_out", B, []), tensor("acc_out", F, []), tensor("scan", F, [])],
    )
    node = helper.make_node(
        "Loop", ["M" if M else "", "cond" if cond else "", "acc0"], ["acc", "scans"], body=body
    )
    inputs = ([tensor("M", I64, [])] if M else []) + ([tensor("cond", B, [])] if cond else [])
    return ember.load(
        model(
            [node],
            [*inputs, tensor("acc0", F, [])],
            [tensor("acc", F, None), tensor("scans", F, None)],
            opset,
        )
    )


def test_loop_for():
    out = sum_loop(M=True, cond=False).run({"M": np.int64(4), "acc0": np.float32(10)})
    assert out["acc"] == 16
    np.testing.assert_array_equal(out["scans"], np.float32([0, 1, 2, 3]))  # scalars stack to (4,)


def test_loop_while_stops_on_the_body_cond():
    out = sum_loop(M=False, cond=True, stop_at=3).run(
        {"cond": np.array(True), "acc0": np.float32(0)}
    )
    assert out["acc"] == 3
    np.testing.assert_array_equal(out["scans"], [0, 1, 2])


def test_loop_trip_count_and_cond_both_bound():
    m = sum_loop(M=True, cond=True, stop_at=10)
    out = m.run({"M": np.int64(2), "cond": np.array(True), "acc0": np.float32(0)})
    np.testing.assert_array_equal(out["scans"], [0, 1])
    out = m.run({"M": np.int64(20), "cond": np.array(True), "acc0": np.float32(0)})
    assert len(out["scans"]) == 10


def test_loop_zero_trips_returns_the_initial_values_and_empty_scans():
    m = sum_loop(M=True, cond=True)
    out = m.run({"M": np.int64(0), "cond": np.array(True), "acc0": np.float32(5)})
    assert out["acc"] == 5
    assert out["scans"].shape == (0,) and out["scans"].dtype == np.float32
    out = m.run({"M": np.int64(3), "cond": np.array(False), "acc0": np.float32(5)})
    assert out["acc"] == 5 and out["scans"].shape == (0,)


def test_loop_carries_a_sequence():
    seq = helper.make_tensor_sequence_value_info
    nodes = [
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        helper.make_node("SequenceInsert", ["s_in", "i"], ["s_out"]),
    ]
    body = loop_body(
        nodes, [seq("s_in", I64, None)], [tensor("cond_out", B, []), seq("s_out", I64, None)]
    )
    loop = helper.make_node("Loop", ["M", "", "s0"], ["s"], body=body)
    empty = helper.make_node("SequenceEmpty", [], ["s0"], dtype=I64)
    m = ember.load(model([empty, loop], [tensor("M", I64, [])], [seq("s", I64, None)]))
    out = m.run({"M": np.int64(3)})["s"]
    assert isinstance(out, list) and [int(v) for v in out] == [0, 1, 2]


def test_loop_rejects_scan_outputs_that_change_shape():
    nodes = [
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        helper.make_node("Identity", ["acc_in"], ["acc_out"]),
        helper.make_node("Add", ["i", "i"], ["twice"]),
        const("zero", np.int64(0)),
        helper.make_node("ConstantOfShape", ["shape"], ["scan"]),
        helper.make_node("Unsqueeze", ["i", "zero1"], ["shape"]),
        const("zero1", np.int64([0])),
    ]
    body = loop_body(
        nodes,
        [tensor("acc_in", F, [])],
        [tensor("cond_out", B, []), tensor("acc_out", F, []), tensor("scan", F, None)],
    )
    loop = helper.make_node("Loop", ["M", "", "acc0"], ["acc", "scans"], body=body)
    m = ember.load(
        model(
            [loop],
            [tensor("M", I64, []), tensor("acc0", F, [])],
            [tensor("acc", F, None), tensor("scans", F, None)],
        )
    )
    with pytest.raises(ExecutionError, match="Loop scan output 0 changes shape across iterations"):
        m.run({"M": np.int64(3), "acc0": np.float32(0)})


# ----------------------------------------------------------------------------------------------
# Scan
# ----------------------------------------------------------------------------------------------


def scan_model(attrs, x_shape, opset=21):
    """Body: state += x_t; scan output = state (a running sum)."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["s_in", "x_t"], ["s_out"]),
            helper.make_node("Identity", ["s_out"], ["y_t"]),
        ],
        "body",
        [tensor("s_in", F, None), tensor("x_t", F, None)],
        [tensor("s_out", F, None), tensor("y_t", F, None)],
    )
    node = helper.make_node("Scan", ["s0", "x"], ["s", "y"], body=body, num_scan_inputs=1, **attrs)
    return ember.load(
        model(
            [node],
            [tensor("s0", F, None), tensor("x", F, list(x_shape))],
            [tensor("s", F, None), tensor("y", F, None)],
            opset,
        )
    )


X = np.arange(12, dtype=np.float32).reshape(3, 4)


def test_scan_running_sum_along_axis_0():
    out = scan_model({}, X.shape).run({"s0": np.zeros(4, np.float32), "x": X})
    np.testing.assert_array_equal(out["s"], X.sum(0))
    np.testing.assert_array_equal(out["y"], np.cumsum(X, axis=0))


def test_scan_input_axis_and_direction():
    m = scan_model({"scan_input_axes": [1], "scan_input_directions": [1]}, X.shape)
    out = m.run({"s0": np.zeros(3, np.float32), "x": X})
    np.testing.assert_array_equal(out["y"], np.cumsum(X[:, ::-1], axis=1).T)


def test_scan_output_axis_and_direction():
    m = scan_model({"scan_output_axes": [-1], "scan_output_directions": [1]}, X.shape)
    out = m.run({"s0": np.zeros(4, np.float32), "x": X})
    np.testing.assert_array_equal(out["y"], np.cumsum(X, axis=0)[::-1].T)


def test_scan_zero_length_keeps_the_state():
    m = scan_model({}, (0, 4))
    out = m.run({"s0": np.ones(4, np.float32), "x": np.zeros((0, 4), np.float32)})
    np.testing.assert_array_equal(out["s"], np.ones(4))
    assert out["y"].shape[0] == 0


def test_scan_bad_axis():
    m = scan_model({"scan_input_axes": [2]}, X.shape)
    with pytest.raises(ExecutionError, match="scan_input_axes entry=2 is out of range"):
        m.run({"s0": np.zeros(4, np.float32), "x": X})


def test_scan8_batches_with_sequence_lens_and_directions():
    body = helper.make_graph(
        [
            helper.make_node("Add", ["s_in", "x_t"], ["s_out"]),
            helper.make_node("Identity", ["s_out"], ["y_t"]),
        ],
        "body",
        [tensor("s_in", F, [2]), tensor("x_t", F, [2])],
        [tensor("s_out", F, [2]), tensor("y_t", F, [2])],
    )
    node = helper.make_node(
        "Scan", ["lens", "s0", "x"], ["s", "y"], body=body, num_scan_inputs=1, directions=[1]
    )
    m = ember.load(
        model(
            [node],
            [
                tensor("lens", TensorProto.INT32, [2]),
                tensor("s0", F, [2, 2]),
                tensor("x", F, [2, 3, 2]),
            ],
            [tensor("s", F, None), tensor("y", F, None)],
            opset=8,
        )
    )
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    out = m.run({"lens": np.int32([3, 2]), "s0": np.zeros((2, 2), np.float32), "x": x})
    np.testing.assert_array_equal(out["s"], [x[0].sum(0), x[1, :2].sum(0)])
    np.testing.assert_array_equal(out["y"][0], np.cumsum(x[0, ::-1], axis=0))
    np.testing.assert_array_equal(
        out["y"][1], np.concatenate([np.cumsum(x[1, 1::-1], axis=0), np.zeros((1, 2))])
    )
