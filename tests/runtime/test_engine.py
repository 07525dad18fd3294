"""The native engine end to end: optimized graph, native kernels, the arena, threads, profiles.

Every result is compared with exact mode (unoptimized reference ops, float64 accumulation).
"""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from tests.models import mlp, small_resnet

import ember
from ember.errors import ConfigError, InputError

rng = np.random.default_rng(0)


def images(n: int) -> np.ndarray:
    return rng.standard_normal((n, 3, 16, 16)).astype(np.float32)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


@pytest.fixture(scope="module")
def resnet() -> onnx.ModelProto:
    return small_resnet()


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_every_level_matches_exact_mode(resnet, level) -> None:
    exact = ember.load(resnet, exact=True)
    fast = ember.load(resnet, level=level)
    for batch in (1, 3, 1):  # a new batch size lays out a new arena; the old one is reused
        x = images(batch)
        assert rel_err(fast.run({"x": x})["y"], exact.run({"x": x})["y"]) < 1e-4


def test_level_3_runs_native_kernels_on_a_fused_channels_last_graph(resnet) -> None:
    model = ember.load(resnet)
    kernels = {s.node.op_type: s.kernel_name for s in model.plan().steps}
    assert kernels["FusedConv"] == "onednn conv"
    assert kernels["Gemm"] == "onednn matmul" or kernels.get("FusedGemm") == "onednn matmul"
    convs = [s.node for s in model.plan().steps if s.node.op_type == "FusedConv"]
    assert len(convs) == 4  # BatchNormalization, Relu, the residual Add and Clip fused in
    assert all(n.attributes["channels_last"].value == 1 for n in convs)
    ops = {s.node.op_type for s in model.plan().steps}
    assert not ops & {"BatchNormalization", "Relu", "Add", "Clip", "ReduceMean"}


def test_arena_is_smaller_than_one_buffer_per_value_and_reused(resnet) -> None:
    model = ember.load(resnet)
    x = images(2)
    layout = model.plan().memory_layout([x])
    assert layout is not None
    report = layout.report
    assert report.peak_live <= layout.size < report.naive
    first = model.run({"x": x})["y"]
    again = model.run({"x": x})["y"]
    np.testing.assert_array_equal(first, again)  # outputs are not views of the reused arena


def test_an_output_that_views_arena_memory_is_copied_out() -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 2, 3], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Reshape", ["r", "shape"], ["y"]),  # a view of r's buffer
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w, shape],
    )
    model = ember.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x1, x2 = rng.standard_normal((2, 3, 4)).astype(np.float32)
    model.run({"x": x1})  # lays out the arena
    y1 = model.run({"x": x1})["y"]
    kept = y1.copy()
    model.run({"x": x2})
    np.testing.assert_array_equal(y1, kept)


def test_many_threads_share_one_model(resnet) -> None:
    model = ember.load(resnet)
    exact = ember.load(resnet, exact=True)
    inputs = [images(n) for n in (1, 2, 3, 4)]
    want = [exact.run({"x": x})["y"] for x in inputs]
    errors: list[str] = []

    def worker(k: int) -> None:
        for _ in range(10):
            got = model.run({"x": inputs[k]})["y"]
            if rel_err(got, want[k]) > 1e-4:
                errors.append(f"thread {k}: rel err {rel_err(got, want[k])}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_does_not_change_results(resnet, threads) -> None:
    x = images(2)
    one = ember.load(resnet, threads=1).run({"x": x})["y"]
    np.testing.assert_allclose(
        ember.load(resnet, threads=threads).run({"x": x})["y"], one, rtol=1e-5, atol=1e-6
    )


def test_bf16_is_opt_in_and_close(resnet) -> None:
    x = images(2)
    want = ember.load(resnet, exact=True).run({"x": x})["y"]
    got = ember.load(resnet, precision="bf16").run({"x": x})["y"]
    assert rel_err(got, want) < 5e-2


def test_non_float32_inputs_still_run_on_the_reference() -> None:
    m = mlp()
    m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    for init in m.graph.initializer:
        arr = onnx.numpy_helper.to_array(init).astype(np.float64)
        init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    m.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    x = rng.standard_normal((3, 4))
    y = ember.load(m).run({"x": x})["y"]
    assert y.dtype == np.float64


def test_bad_options_are_config_errors(resnet) -> None:
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, got 'int3'"):
        ember.load(resnet, precision="int3")
    with pytest.raises(ConfigError, match="threads must be a positive int"):
        ember.load(resnet, threads=0)
    with pytest.raises(ConfigError, match="level"):
        ember.load(resnet, level=7)


def test_a_fused_away_intermediate_says_how_to_read_it(resnet) -> None:
    with pytest.raises(InputError, match="level=0"):
        ember.load(resnet).run({"x": images(1)}, outputs=["n2"])  # BatchNormalization's output
    n2 = ember.load(resnet, level=0).run({"x": images(1)}, outputs=["n2"])["n2"]
    assert n2.shape == (1, 8, 8, 8)


def test_profile_reports_steps_fusions_and_memory(resnet) -> None:
    profile = ember.load(resnet).profile({"x": images(2)}, repeat=3)
    assert len(profile.steps) == len(ember.load(resnet).plan().steps)
    assert profile.total > 0 and all(s.seconds >= 0 for s in profile.steps)
    assert any("BatchNormalization" in pattern for pattern in profile.fusions())
    text = profile.format()
    assert "top ops:" in text and "onednn conv" in text
    assert "memory: activation arena" in text
    # small_resnet lowers to one native Program: the profile times that run too
    assert profile.program_calls == len(profile.steps) - 1  # Flatten is a view, no call
    assert profile.program_total is not None and profile.program_total > 0
    assert "runs as one native Program (" in text


def test_shapes_computed_from_values_are_not_trusted_across_runs() -> None:
    """Same input shapes, different target shape: the arena's recorded shapes must not be used."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(rng.standard_normal((12, 12)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Reshape", ["h", "shape"], ["r"]),
            helper.make_node("Relu", ["r"], ["y"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = ember.load(proto)
    assert not model.plan().shape_static
    x = rng.standard_normal((1, 12)).astype(np.float32)
    want = np.maximum(x @ numpy_helper.to_array(w), 0)
    for shape in ([3, 4], [2, 6], [3, 4], [6, 2]):
        y = model.run({"x": x, "shape": np.array(shape, np.int64)})["y"]
        np.testing.assert_allclose(y, want.reshape(shape), rtol=1e-5)
    assert ember.load(small_resnet()).plan().shape_static


def test_one_arena_per_thread_serves_every_model_and_batch_size(resnet) -> None:
    """Layouts of several models and batch sizes share the thread's one arena (the largest
    layout's size, not their sum), and interleaving them never mixes up results."""
    from ember.runtime import plan as plan_module

    first, second = ember.load(resnet), ember.load(small_resnet(seed=1, channels=16))
    inputs = {1: images(1), 3: images(3)}
    want = {
        (k, n): ember.load(proto, exact=True).run({"x": x})["y"]
        for k, proto in ((0, resnet), (1, small_resnet(seed=1, channels=16)))
        for n, x in inputs.items()
    }
    sizes: list[int] = []
    errors: list[float] = []

    def in_a_fresh_thread() -> None:  # a new thread starts with an empty arena
        for _ in range(3):
            for (k, n), y in want.items():
                got = (first, second)[k].run({"x": inputs[n]})["y"]
                errors.append(rel_err(got, y))
        sizes.append(plan_module._thread_arena.memory.size)

    t = threading.Thread(target=in_a_fresh_thread)
    t.start()
    t.join()
    layouts = [layout for m in (first, second) for layout in m.plan()._layouts.values()]
    assert len(layouts) == 4
    assert sizes == [max(layout.size for layout in layouts)]
    assert max(errors) < 1e-4


@pytest.mark.parametrize("spatial", [(11,), (5, 6, 7)])
def test_1d_and_3d_convs_run_natively(spatial) -> None:
    from onnx import TensorProto, helper, numpy_helper

    k = len(spatial)
    w = numpy_helper.from_array(rng.standard_normal((4, 3) + (3,) * k).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * (2 * k), strides=[2] * k),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, *spatial])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w, b],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = ember.load(proto)
    assert [s.kernel_name for s in model.plan().steps] == ["onednn conv"]
    x = rng.standard_normal((2, 3, *spatial)).astype(np.float32)
    want = ember.load(proto, exact=True).run({"x": x})["y"]
    assert rel_err(model.run({"x": x})["y"], want) < 1e-5
