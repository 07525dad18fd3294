"""Large batches of per-sample graphs run a few samples at a time (runtime/batching.py): which
graphs qualify, how many samples a run takes, and that the outputs do not change."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from tests.models import mlp, small_resnet

import ember
from ember.ir import load_model
from ember.runtime import batching
from ember.runtime import model as model_module
from ember.runtime.batching import batch_separable, chunk_size
from ember.zoo import model_path

rng = np.random.default_rng(0)


def _optimized(src: object) -> ir.Graph:
    return ember.load(src).ir.graph


def _model(nodes, inits, x_shape, y_shape, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


@pytest.mark.parametrize(
    "src",
    [small_resnet(), mlp(), str(model_path("digits_cnn")), str(model_path("mnist_mlp"))],
    ids=["small_resnet", "mlp", "digits_cnn", "mnist_mlp"],
)
def test_per_sample_graphs_are_separable(src) -> None:
    assert batch_separable(_optimized(src))


def test_a_reshape_keeping_each_sample_whole_is_separable() -> None:
    proto = _model(
        [helper.make_node("Reshape", ["x", "s"], ["y"])],
        [_const("s", np.array([-1, 6], np.int64))],
        ["n", 2, 3],
        ["n", 6],
    )
    assert batch_separable(load_model(proto).graph)


@pytest.mark.parametrize(
    ("why", "nodes", "inits", "x_shape", "y_shape"),
    [
        (
            "a reduction over the batch",
            [helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1)],
            [_const("axes", np.array([0], np.int64))],
            ["n", 4],
            [1, 4],
        ),
        (
            "a constant with a batch axis of its own",
            [helper.make_node("Add", ["x", "c"], ["y"])],
            [_const("c", np.ones((4, 4), np.float32))],
            ["n", 4],
            ["n", 4],
        ),
        (
            "a Reshape whose -1 could take samples into a row",
            [helper.make_node("Reshape", ["x", "s"], ["y"])],
            [_const("s", np.array([-1, 3], np.int64))],
            ["n", 2, 3],
            ["n", 3],
        ),
        (
            "a fixed batch size",
            [helper.make_node("Relu", ["x"], ["y"])],
            [],
            [4, 4],
            [4, 4],
        ),
        (
            "a transpose moving the batch axis",
            [helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])],
            [],
            ["n", 4],
            [4, "n"],
        ),
        (
            "dynamic quantization: its range is taken over the whole batch",
            [
                helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
                helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
            ],
            [],
            ["n", 4],
            ["n", 4],
        ),
    ],
)
def test_graphs_mixing_samples_are_not_separable(why, nodes, inits, x_shape, y_shape) -> None:
    assert not batch_separable(load_model(_model(nodes, inits, x_shape, y_shape)).graph), why


def test_chunk_size_keeps_a_run_within_the_cache_budget(monkeypatch) -> None:
    monkeypatch.setattr(batching, "cache_budget", lambda: 16 * 2**20)
    assert chunk_size(32 * 6 * 2**20, 32) == 2  # 6 MiB a sample: two per run
    assert chunk_size(32 * 2**20, 32) == 16
    assert chunk_size(8 * 2**20, 32) is None  # the whole batch fits
    assert chunk_size(64 * 2**20, 1) is None
    assert chunk_size(32 * 64 * 2**20, 32) == 1  # one sample over budget: still one per run


def test_a_large_batch_runs_in_chunks_with_the_same_outputs(monkeypatch) -> None:
    model = ember.load(small_resnet())
    x = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    whole = model.run({"x": x})["y"]  # the first run at this batch lays out its arena whole
    layout = model.plan().memory_layout([x])
    assert layout is not None
    monkeypatch.setattr(batching, "cache_budget", lambda: layout.size // 8 * 3)  # 3 a run
    chunks: list[int] = []
    split = model_module.run_in_chunks

    def recording(run, args, chunk):  # type: ignore[no-untyped-def]
        chunks.append(chunk)
        return split(run, args, chunk)

    monkeypatch.setattr(model_module, "run_in_chunks", recording)
    got = model.run({"x": x})["y"]
    assert chunks == [3] and got.shape == whole.shape
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-6)
    exact = ember.load(small_resnet(), exact=True).run({"x": x})["y"]
    np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-5)


def test_splitting_can_be_turned_off(monkeypatch) -> None:
    from ember import flags

    monkeypatch.setattr(flags, "EMBER_SPLIT_BATCH", False)
    assert not ember.load(small_resnet())._split_batches
