"""Planned runs lowered to one native call (runtime/program.py, csrc/program.h).

Each case compares the Program's outputs with the same plan run step by step from Python and with
exact mode, and checks when a plan must not lower.
"""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tests.models import mlp, small_resnet

import ember
from ember import flags
from ember.kernels.cpu import _C, dnnl
from ember.zoo import model_path

rng = np.random.default_rng(0)


def program_of(model: ember.Model, inputs: dict[str, np.ndarray]) -> object | None:
    """The Program of the plan's layout for these inputs (laid out by running once)."""
    layout = model.plan().memory_layout(model._args(inputs))
    assert layout is not None
    return layout.program


def step_by_step(src: object, inputs: dict[str, np.ndarray], monkeypatch) -> dict:
    with monkeypatch.context() as m:
        m.setattr(flags, "EMBER_PROGRAM", False)
        model = ember.load(src)
        outputs = [model.run(inputs) for _ in range(2)]  # the second run is the planned one
        assert program_of(model, inputs) is None
    return outputs[1]


def feeds(model: ember.Model, batch: int) -> dict[str, np.ndarray]:
    return {
        s.name: rng.standard_normal([d if isinstance(d, int) else batch for d in s.shape]).astype(
            np.float32
        )
        for s in model.inputs
    }


@pytest.mark.parametrize(
    "src",
    [
        pytest.param(mlp(), id="matmul"),
        pytest.param(small_resnet(), id="conv-pool-residual-reorder"),
        pytest.param(str(model_path("mnist_mlp")), id="mnist_mlp"),
        pytest.param(str(model_path("digits_cnn")), id="digits_cnn"),
    ],
)
def test_program_matches_step_by_step_and_exact_mode(src, monkeypatch) -> None:
    model = ember.load(src)
    exact = ember.load(src, exact=True)
    for batch in (1, 3):
        inputs = feeds(model, batch)
        first = model.run(inputs)  # records shapes and lowers
        assert program_of(model, inputs) is not None
        got = model.run(inputs)
        want = step_by_step(src, inputs, monkeypatch)
        ref = exact.run(inputs)
        for name, value in got.items():
            np.testing.assert_array_equal(value, want[name])  # the same kernels, the same bits
            np.testing.assert_array_equal(value, first[name])
            np.testing.assert_allclose(value, ref[name], rtol=1e-4, atol=1e-5)


def test_outputs_are_fresh_arrays_not_arena_memory() -> None:
    model = ember.load(small_resnet())
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    model.run({"x": x})
    a = model.run({"x": x})["y"]
    a_copy = a.copy()
    b = model.run({"x": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)})["y"]
    assert not np.shares_memory(a, b)
    np.testing.assert_array_equal(a, a_copy)  # the later run did not write over it


def test_a_non_contiguous_input_runs_step_by_step_with_the_same_result() -> None:
    model = ember.load(small_resnet())
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    model.run({"x": x})
    view = np.asfortranarray(x)  # same shape and dtype, another layout
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(model.run({"x": view})["y"], model.run({"x": x})["y"])


def _graph(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _weight(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def test_plans_with_a_step_that_cannot_lower_stay_step_by_step() -> None:
    # Sin runs on the reference: the plan cannot be one Program, and still runs right.
    proto = _graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Sin", ["h"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [_weight("w", 4, 3)],
    )
    model = ember.load(proto)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    assert program_of(model, {"x": x}) is None
    np.testing.assert_allclose(
        model.run({"x": x})["y"], ember.load(proto, exact=True).run({"x": x})["y"], rtol=1e-5
    )


def test_an_output_that_is_a_view_of_arena_memory_is_not_lowered() -> None:
    proto = _graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Flatten", ["h"], ["y"], axis=0),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
        [_weight("w", 4, 3)],
    )
    model = ember.load(proto)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    assert program_of(model, {"x": x}) is None
    np.testing.assert_allclose(
        model.run({"x": x})["y"], ember.load(proto, exact=True).run({"x": x})["y"], rtol=1e-5
    )


def test_a_view_inside_the_graph_is_lowered_as_the_same_buffer() -> None:
    proto = _graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Flatten", ["h"], ["f"], axis=0),
            helper.make_node("MatMul", ["f", "w2"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [_weight("w", 4, 3), _weight("w2", 6, 5)],
    )
    model = ember.load(proto)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    program = program_of(model, {"x": x})
    assert program is not None and len(program.program) == 2
    np.testing.assert_allclose(
        model.run({"x": x})["y"], ember.load(proto, exact=True).run({"x": x})["y"], rtol=1e-5
    )


def test_many_threads_run_one_program_at_once() -> None:
    model = ember.load(small_resnet())
    xs = [rng.standard_normal((2, 3, 16, 16)).astype(np.float32) for _ in range(4)]
    want = [model.run({"x": x})["y"] for x in xs]
    assert program_of(model, {"x": xs[0]}) is not None
    errors: list[str] = []

    def worker(k: int) -> None:
        for _ in range(50):
            if not np.array_equal(model.run({"x": xs[k]})["y"], want[k]):
                errors.append(f"thread {k}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# -- the native pieces, on bad input -----------------------------------------------------------


def test_a_step_checks_shapes_when_lowered() -> None:
    mm = dnnl.MatMul(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"a must be \(\.\.\., 4\)"):
        mm.step((0, (2, 5)), (1, (2, 3)))
    with pytest.raises(ValueError, match=r"out has shape \(2, 4\), expected \(2, 3\)"):
        mm.step((0, (2, 4)), (1, (2, 4)))
    with pytest.raises(ValueError, match="MaxPool: x must have rank 4"):
        dnnl.pool_step((0, (1, 3, 8)), (1, (1, 3, 4, 4)), kind=0, kernel_shape=[2, 2])


def test_program_run_checks_its_buffers() -> None:
    mm = dnnl.MatMul(np.eye(4, 3, dtype=np.float32))
    step = mm.step((0, (2, 4)), (1, (2, 3)))
    program = _C.Program([step], [(0, 0, [2, 4]), (1, 0, [2, 3])], 0)
    arena = np.empty(0, np.uint8)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    y = np.empty((2, 3), np.float32)
    assert program.run([x], arena, [y])
    np.testing.assert_allclose(y, x[:, :3], rtol=1e-6)
    assert not program.run([x[:, ::-1]], arena, [y])  # not contiguous: the caller falls back
    assert not program.run([x.astype(np.float64)], arena, [y])
    with pytest.raises(ValueError, match="output 0 must be a writeable C-contiguous float32"):
        program.run([x], arena, [np.empty((3, 2), np.float32)])
    with pytest.raises(ValueError, match="expected 1 inputs and 1 outputs"):
        program.run([], arena, [y])
    needs_arena = _C.Program([step], [(0, 0, [2, 4]), (1, 0, [2, 3])], 64)
    with pytest.raises(ValueError, match="the arena has 0 bytes, the program needs 64"):
        needs_arena.run([x], arena, [y])
    with pytest.raises(ValueError, match="buffer kind must be 0"):
        _C.Program([step], [(5, 0, [2, 4])], 0)
