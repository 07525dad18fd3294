"""Level-2 int8 pass (passes/fuse_quant.py): QDQ islands, ORT's dynamic pattern and QOperator ops
into the ai.ember int8 ops; structure before/after, numerics against the unrewritten model,
idempotence, and the cases that must stay as they are."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from tests.passes.graphs import ops, run, snapshot

from ember.ir.verify import verify
from ember.passes import level_passes
from ember.passes.fuse_quant import FuseQuantPass

RNG = np.random.default_rng(3)
X = RNG.standard_normal((2, 3, 9, 7)).astype(np.float32)


def _init(name: str, a: np.ndarray | float, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, dtype=dtype), name)


def _qdq(name: str, x: str, scale: str, zp: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("QuantizeLinear", [x, scale, zp], [f"{name}_q"]),
        helper.make_node("DequantizeLinear", [f"{name}_q", scale, zp], [f"{name}_dq"]),
    ]


def _model(nodes, inits, outputs, x_shape=(2, 3, 9, 7), opset=13) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m = ir.serde.deserialize_model(proto)
    verify(m)
    return m


def _weights(K: int, C: int, k: int = 3, name: str = "w") -> tuple[list, list]:
    """int8 per-channel conv weights and an int32 bias, each through its DequantizeLinear (the
    same every call: tests build a model twice)."""
    rng = np.random.default_rng(K * 100 + C)
    w = rng.integers(-127, 128, (K, C, k, k)).astype(np.int8)
    scale = (rng.random(K) * 0.02 + 0.005).astype(np.float32)
    b = rng.integers(-500, 500, K).astype(np.int32)
    inits = [
        _init(f"{name}_q", w, np.int8),
        _init(f"{name}_s", scale),
        _init(f"{name}_zp", np.zeros(K), np.int8),
        _init(f"{name}_b", b, np.int32),
        _init(f"{name}_bs", scale * np.float32(0.03)),  # x_scale * w_scale, as ORT writes it
        _init(f"{name}_bzp", np.zeros(K), np.int32),
    ]
    nodes = [
        helper.make_node(
            "DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_zp"], [f"{name}_dq"], axis=0
        ),
        helper.make_node(
            "DequantizeLinear", [f"{name}_b", f"{name}_bs", f"{name}_bzp"], [f"{name}_bdq"], axis=0
        ),
    ]
    return nodes, inits


def _params(*pairs: tuple[str, float, int]) -> list:
    out = []
    for name, scale, zp in pairs:
        out += [_init(f"{name}_scale", scale), _init(f"{name}_zp", zp, np.uint8)]
    return out


def conv_relu_model() -> ir.Model:
    """x -> Q/DQ -> Conv(DQ(W), DQ(b)) -> Relu -> Q/DQ -> MaxPool -> Q/DQ (same params) -> y."""
    wn, wi = _weights(4, 3)
    nodes = [
        *_qdq("x", "x", "x_scale", "x_zp"),
        *wn,
        helper.make_node("Conv", ["x_dq", "w_dq", "w_bdq"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        *_qdq("r", "r", "r_scale", "r_zp"),
        helper.make_node("MaxPool", ["r_dq"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        *_qdq("p", "p", "r_scale", "r_zp"),
    ]
    return _model(nodes, wi + _params(("x", 0.03, 128), ("r", 0.05, 0)), ["p_dq"])


def residual_model() -> ir.Model:
    """ORT's ResNet block: Conv -> Q/DQ -> Add(DQ(z)) -> Q/DQ, z = the block's quantized input."""
    w1, i1 = _weights(3, 3, name="w1")
    nodes = [
        *_qdq("x", "x", "x_scale", "x_zp"),
        *w1,
        helper.make_node("Conv", ["x_dq", "w1_dq", "w1_bdq"], ["c"], pads=[1, 1, 1, 1]),
        *_qdq("c", "c", "c_scale", "c_zp"),
        helper.make_node("Add", ["c_dq", "x_dq"], ["s"]),
        *_qdq("s", "s", "s_scale", "s_zp"),
    ]
    inits = i1 + _params(("x", 0.03, 128), ("c", 0.06, 120), ("s", 0.08, 0))
    return _model(nodes, inits, ["s_dq"])


def gemm_model() -> ir.Model:
    """x -> Q/DQ -> Flatten -> Q/DQ (same) -> Gemm(DQ(W (N, K)), transB) -> Q/DQ."""
    rng = np.random.default_rng(5)
    K, N = 3 * 9 * 7, 10
    w = rng.integers(-127, 128, (N, K)).astype(np.int8)
    s = (rng.random(N) * 0.01).astype(np.float32)
    nodes = [
        *_qdq("x", "x", "x_scale", "x_zp"),
        helper.make_node("Flatten", ["x_dq"], ["f"]),
        *_qdq("f", "f", "x_scale", "x_zp"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_dq"], axis=0),
        helper.make_node("Gemm", ["f_dq", "w_dq", "b"], ["g"], transB=1),
        *_qdq("g", "g", "g_scale", "g_zp"),
    ]
    inits = [
        _init("w_q", w, np.int8),
        _init("w_s", s),
        _init("w_zp", np.zeros(N), np.int8),
        _init("b", rng.standard_normal(N)),
        *_params(("x", 0.03, 128), ("g", 0.2, 100)),
    ]
    return _model(nodes, inits, ["g_dq"])


def dynamic_model() -> ir.Model:
    """ORT's quantize_dynamic form of x @ W + b."""
    rng = np.random.default_rng(6)
    K, N = 7, 5
    w = rng.integers(-127, 128, (K, N)).astype(np.int8)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xzp"]),
        helper.make_node("Mul", ["xs", "w_s"], ["scales"]),
        helper.make_node("MatMulInteger", ["xq", "w_q", "xzp", "w_zp"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["accf", "scales"], ["y0"]),
        helper.make_node("Add", ["b", "y0"], ["y"]),
    ]
    inits = [
        _init("w_q", w, np.int8),
        _init("w_s", rng.random(N) * 0.01),
        _init("w_zp", np.zeros(N), np.int8),
        _init("b", rng.standard_normal(N)),
    ]
    return _model(nodes, inits, ["y"], x_shape=(2, 4, K))


def rewrite(m: ir.Model) -> ir.Model:
    ir.passes.PassManager([FuseQuantPass()])(m)
    verify(m)
    return m


def check(make: Callable[[], ir.Model], x: np.ndarray, steps: float) -> ir.Model:
    """Rewrite a fresh model: same outputs as before within `steps` * the output scale, and a
    second rewrite changes nothing."""
    want = run(make(), x)
    m = rewrite(make())
    got = run(m, x)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, atol=steps)
    once = snapshot(m)
    rewrite(m)
    assert snapshot(m) == once, "rewriting twice differs from rewriting once"
    return m


def test_conv_relu_maxpool_become_one_int8_region_in_nhwc() -> None:
    m = check(conv_relu_model, X, steps=0.05)  # one step of the output scale
    assert ops(m) == {
        "ember.QuantizeLinear": 1,
        "ember.QConv": 1,
        "ember.MaxPool": 1,
        "ember.DequantizeLinear": 1,
    }
    conv = next(n for n in m.graph if n.op_type == "QConv")
    assert conv.metadata_props["ember.fused"] == "Conv+Relu+QuantizeLinear"
    assert conv.attributes["channels_last"].value == 1
    assert conv.attributes["activation"].value == "Relu"
    assert conv.inputs[3].dtype == ir.DataType.INT8  # the weights stay int8
    assert all(n.attributes["channels_last"].value == 1 for n in m.graph)


def test_residual_add_is_summed_inside_the_conv() -> None:
    m = check(residual_model, X, steps=2 * 0.08)  # the skipped rounding of c moves <= 1 step
    assert ops(m) == {"ember.QuantizeLinear": 1, "ember.QConv": 1, "ember.DequantizeLinear": 1}
    conv = next(n for n in m.graph if n.op_type == "QConv")
    assert conv.metadata_props["ember.fused"] == (
        "Conv+QuantizeLinear+DequantizeLinear+Add+QuantizeLinear"
    )
    assert conv.inputs[8] is conv.inputs[0]  # z: the block's int8 input, read in place


def test_gemm_and_flatten_run_in_int8() -> None:
    m = check(gemm_model, X, steps=0.2)
    assert ops(m) == {"QuantizeLinear": 1, "Flatten": 1, "ember.QMatMul": 1, "DequantizeLinear": 1}
    mm = next(n for n in m.graph if n.op_type == "QMatMul")
    assert mm.inputs[3].shape == ir.Shape([3 * 9 * 7, 10])  # transB folded: B is (K, N)


def test_dynamic_pattern_becomes_one_op() -> None:
    x = RNG.standard_normal((2, 4, 7)).astype(np.float32)
    m = check(dynamic_model, x, steps=1e-5)
    assert ops(m) == {"ember.DynamicQMatMul": 1}
    assert next(iter(m.graph)).metadata_props["ember.fused"] == (
        "DynamicQuantizeLinear+MatMulInteger+Cast+Mul+Add"
    )


def test_qlinearconv_runs_as_qconv() -> None:
    rng = np.random.default_rng(8)
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
        helper.make_node(
            "QLinearConv",
            ["xq", "x_scale", "x_zp", "w", "w_s", "w_zp", "y_scale", "y_zp", "b"],
            ["yq"],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["y"]),
    ]
    inits = [
        _init("w", w, np.int8),
        _init("w_s", rng.random(4) * 0.02),
        _init("w_zp", np.zeros(4), np.int8),
        _init("b", rng.integers(-99, 99, 4), np.int32),
        *_params(("x", 0.03, 128), ("y", 0.05, 10)),
    ]
    m = check(lambda: _model(nodes, inits, ["y"]), X, steps=0.05)
    assert ops(m) == {"ember.QuantizeLinear": 1, "ember.QConv": 1, "ember.DequantizeLinear": 1}


def _edited(make: Callable[[], ir.Model], edit: Callable[[ir.Model], None]) -> ir.Model:
    m = make()
    edit(m)
    return m


def _set(m: ir.Model, name: str, value: np.ndarray) -> None:
    m.graph.initializers[name].const_value = ir.tensor(value, name=name)


@pytest.mark.parametrize(
    "why,make,stays",
    [
        (
            "pool output quantized with other parameters: max does not commute with that",
            lambda: _edited(conv_relu_model, lambda m: _mismatch_pool(m)),
            "MaxPool",
        ),
        (
            "weights with a nonzero zero point",
            lambda: _edited(conv_relu_model, lambda m: _set(m, "w_zp", np.ones(4, np.int8))),
            "Conv",
        ),
        (
            "the float conv output is read by someone else",
            lambda: _edited(conv_relu_model, _expose_conv_output),
            "Conv",
        ),
        (
            "per-channel activation scale",
            lambda: _edited(
                conv_relu_model, lambda m: _set(m, "x_scale", np.full(3, 0.03, np.float32))
            ),
            "Conv",
        ),
    ],
)
def test_must_not_fuse(why: str, make: Callable[[], ir.Model], stays: str) -> None:
    want = run(make(), X)
    m = rewrite(make())
    assert stays in ops(m), why
    for g, w in zip(run(m, X), want, strict=True):
        np.testing.assert_allclose(g, w, atol=0.05)


def _mismatch_pool(m: ir.Model) -> None:
    q = next(n for n in m.graph if n.op_type == "QuantizeLinear" and n.outputs[0].name == "p_q")
    other = ir.Value(
        name="p_scale",
        type=ir.TensorType(ir.DataType.FLOAT),
        shape=ir.Shape([]),
        const_value=ir.tensor(np.float32(0.07), name="p_scale"),
    )
    m.graph.register_initializer(other)
    q.replace_input_with(1, other)
    dq = next(n for n in m.graph if n.inputs[0] is q.outputs[0])
    dq.replace_input_with(1, other)


def _expose_conv_output(m: ir.Model) -> None:
    relu = next(n for n in m.graph if n.op_type == "Relu")
    m.graph.outputs.append(relu.inputs[0])
    relu.inputs[0].type = ir.TensorType(ir.DataType.FLOAT)


def test_the_pass_runs_first_among_fusions_not_at_level_1() -> None:
    from ember.passes import fusion_passes

    assert not any(isinstance(p, FuseQuantPass) for p in level_passes(1))
    assert isinstance(fusion_passes()[0], FuseQuantPass)


def test_level_1_keeps_int8_weights_int8() -> None:
    """Constant folding leaves DequantizeLinear of a constant alone: the weight stays int8 (a
    quarter of its float size) for the int8 kernels to read."""
    from ember.passes import optimize

    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.arange(12, dtype=np.int8).reshape(4, 3), "wq"),
        numpy_helper.from_array(np.array(0.1, np.float32), "ws"),
        numpy_helper.from_array(np.array(0, np.int8), "wz"),
    ]
    m = _model(nodes, inits, ["y"], x_shape=(2, 4))
    optimize(m, level=1)
    assert [n.op_type for n in m.graph] == ["DequantizeLinear", "MatMul"]
    assert m.graph.initializers["wq"].const_value.dtype == ir.DataType.INT8


def test_a_float_model_is_left_alone() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    m = _model(nodes, [], ["y"])
    before = snapshot(m)
    result = FuseQuantPass()(m)
    assert not result.modified and snapshot(m) == before
