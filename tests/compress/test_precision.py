"""fp16/bf16 conversion: low-precision weights and compute, float32 islands (LayerNorm, its
decomposed form, Softmax, residual Adds), float32 graph inputs/outputs, run by ember (and ORT for
fp16)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.compress import QuantConfig, quantizable_nodes, quantize_graph
from ember.ir import load_model
from ember.zoo import load_eval, model_path


def run_ember(model: ir.Model, feeds: dict[str, np.ndarray], level: int = 0) -> np.ndarray:
    return next(iter(ember.Model(load_model(ir.to_proto(model)), level=level).run(feeds).values()))


def block_model() -> ir.Model:
    """A transformer-ish block: LayerNorm -> MatMul -> Softmax -> MatMul -> residual Add ->
    decomposed LayerNorm (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add)."""
    rng = np.random.default_rng(0)
    d = 16
    w1 = (rng.standard_normal((d, d)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((d, d)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["ln"], name="ln", axis=-1),
        helper.make_node("MatMul", ["ln", "w1"], ["h"], name="mm1"),
        helper.make_node("Softmax", ["h"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "w2"], ["o"], name="mm2"),
        helper.make_node("Add", ["o", "x"], ["r"], name="residual"),
        helper.make_node("ReduceMean", ["r", "axes"], ["mu"], name="mean"),
        helper.make_node("Sub", ["r", "mu"], ["c"], name="center"),
        helper.make_node("Pow", ["c", "two"], ["sq"], name="square"),
        helper.make_node("ReduceMean", ["sq", "axes"], ["var"], name="var"),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="var_eps"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="sd"),
        helper.make_node("Div", ["c", "sd"], ["n"], name="normalize"),
        helper.make_node("Mul", ["n", "g"], ["ng"], name="gamma"),
        helper.make_node("Add", ["ng", "b"], ["y"], name="beta"),
    ]
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in [
            (np.ones(d, np.float32) * 1.5, "g"),
            (np.full(d, 0.1, np.float32), "b"),
            (w1, "w1"),
            (w2, "w2"),
            (np.array([-1], np.int64), "axes"),
            (np.array(2.0, np.float32), "two"),
            (np.array(1e-5, np.float32), "eps"),
        ]
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", d])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return load_model(proto)


LOW = {"fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}


def node_by_name(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


@pytest.mark.parametrize("mode", ["fp16", "bf16"])
def test_islands_stay_float32_and_matmuls_go_low(mode: str) -> None:
    model = block_model()
    q = quantize_graph(model, QuantConfig(mode=mode))
    low = LOW[mode]
    for name in ("mm1", "mm2"):
        n = node_by_name(q, name)
        assert n.inputs[0].dtype == low and n.inputs[1].dtype == low and n.outputs[0].dtype == low
        assert n.inputs[1].const_value is not None  # weights stored in the low precision
    for name in (
        "ln",
        "softmax",
        "residual",
        "mean",
        "center",
        "square",
        "var",
        "var_eps",
        "sd",
        "normalize",
        "gamma",
        "beta",
    ):
        n = node_by_name(q, name)
        assert all(v.dtype == ir.DataType.FLOAT for v in n.outputs), name
        assert all(v is None or v.dtype != low for v in n.inputs), name
    assert q.graph.inputs[0].dtype == ir.DataType.FLOAT
    assert q.graph.outputs[0].dtype == ir.DataType.FLOAT and q.graph.outputs[0].name == "y"
    casts = [n for n in q.graph if n.op_type == "Cast"]
    # x -> low (mm1 reads ln's float output: one cast), mm1 -> softmax, softmax -> mm2, mm2 -> add
    assert len(casts) == 4
    onnx.checker.check_model(ir.to_proto(q), full_check=True)
    x = np.random.default_rng(1).standard_normal((2, 5, 16)).astype(np.float32)
    ref, got = run_ember(model, {"x": x}), run_ember(q, {"x": x})
    tol = 2e-2 if mode == "fp16" else 1e-1
    np.testing.assert_allclose(got, ref, atol=tol)
    if mode == "fp16":
        sess = ort.InferenceSession(
            ir.to_proto(q).SerializeToString(), providers=["CPUExecutionProvider"]
        )
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], got, atol=5e-3)


@pytest.mark.parametrize("mode", ["fp16", "bf16"])
@pytest.mark.parametrize("name", ["digits_cnn", "mnist_mlp"])
def test_zoo_models_in_low_precision(name: str, mode: str) -> None:
    model = load_model(model_path(name))
    data = load_eval(name)
    q = quantize_graph(model, QuantConfig(mode=mode))
    onnx.checker.check_model(ir.to_proto(q), full_check=True)
    assert q.opset_imports[""] == (22 if mode == "bf16" else 17)  # bf16 Conv/pools: opset 22
    weights = [
        v for v in q.graph.initializers.values() if v.shape is not None and len(v.shape) >= 2
    ]
    assert weights and all(v.dtype == LOW[mode] for v in weights)
    ref = run_ember(model, {"input": data.x})
    for level in (0, 3):
        got = run_ember(q, {"input": data.x}, level=level)
        assert got.dtype == np.float32
        assert np.abs(got - ref).max() < (0.02 if mode == "fp16" else 0.2)
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99
    if mode == "fp16":
        sess = ort.InferenceSession(
            ir.to_proto(q).SerializeToString(), providers=["CPUExecutionProvider"]
        )
        np.testing.assert_allclose(sess.run(None, {"input": data.x})[0], got, atol=0.02)


def test_keep_fp32_leaves_a_node_in_float32() -> None:
    model = load_model(model_path("mnist_mlp"))
    assert quantizable_nodes(model, QuantConfig(mode="fp16")) == ["/0/Gemm", "/3/Gemm", "/6/Gemm"]
    q = quantize_graph(model, QuantConfig(mode="fp16"), keep_fp32=["/3/Gemm"])
    gemms = {n.name: n for n in q.graph if n.op_type == "Gemm"}
    assert gemms["/3/Gemm"].outputs[0].dtype == ir.DataType.FLOAT
    assert gemms["/3/Gemm"].inputs[1].dtype == ir.DataType.FLOAT
    assert gemms["/0/Gemm"].outputs[0].dtype == ir.DataType.FLOAT16
    x = load_eval("mnist_mlp").x[:50]
    np.testing.assert_allclose(
        run_ember(q, {"input": x}), run_ember(model, {"input": x}), atol=0.02
    )


def test_input_model_untouched() -> None:
    model = load_model(model_path("digits_cnn"))
    before = ir.to_proto(model).SerializeToString()
    quantize_graph(model, QuantConfig(mode="bf16"))
    assert ir.to_proto(model).SerializeToString() == before
