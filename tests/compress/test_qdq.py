"""Integer quantization: the math (hypothesis round trips), the graph form (op counts, dtypes,
opsets), ember and onnxruntime agreeing on the result, and int8 accuracy on the zoo models."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.compress import QuantConfig, quantizable_nodes, quantize_graph
from ember.compress._qmath import choose_qparams, dequantize_tensor, fake_quantize, quantize_weight
from ember.errors import ConfigError
from ember.ir import load_model
from ember.zoo import load_eval, model_path

# --- the math -----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    lo=st.floats(-1e4, 0.0),
    width=st.floats(1e-3, 1e4),
    unit=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=64),
    signed=st.booleans(),
)
def test_round_trip_error_is_at_most_half_a_step_inside_the_range(
    lo: float, width: float, unit: list[float], signed: bool
) -> None:
    hi = lo + width
    dtype = np.dtype(np.int8 if signed else np.uint8)
    p = choose_qparams(lo, hi, dtype, symmetric=signed)
    x = (lo + np.array(unit) * (hi - lo)).astype(np.float32)
    y = fake_quantize(x, p)
    scale = float(p.scale)
    assert np.all(np.abs(y - x) <= scale / 2 * (1 + 1e-5) + 1e-6 * np.abs(x))
    # zero is exactly representable, with or without a zero point
    assert fake_quantize(np.zeros(3, np.float32), p).tolist() == [0.0, 0.0, 0.0]
    if signed:
        assert int(p.zero_point) == 0


@settings(max_examples=100, deadline=None)
@given(
    rows=st.integers(1, 8),
    cols=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    axis=st.sampled_from([0, 1]),
)
def test_symmetric_per_channel_weights(rows: int, cols: int, seed: int, axis: int) -> None:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 100, (rows, 1))).astype(np.float32)
    q = quantize_weight(w, np.dtype(np.int8), axis=axis)
    assert q.values.dtype == np.int8 and np.all(q.params.zero_point == 0)
    assert q.params.scale.shape == (w.shape[axis],)
    # every channel uses its full range, and -127..127 only (symmetric)
    assert np.all(np.abs(q.values).max(axis=1 - axis) == 127)
    assert q.values.min() >= -127
    scale = np.expand_dims(q.params.scale, 1 - axis)
    assert np.all(np.abs(dequantize_tensor(q) - w) <= scale / 2 * (1 + 1e-5))


@settings(max_examples=100, deadline=None)
@given(k=st.integers(1, 200), n=st.integers(1, 4), block=st.sampled_from([32, 64, 128]))
def test_blocked_int4_weights(k: int, n: int, block: int) -> None:
    rng = np.random.default_rng(k * 7 + n)
    w = rng.standard_normal((k, n)).astype(np.float32)
    q = quantize_weight(w, np.dtype(ml_dtypes.int4), axis=0, block_size=block)
    assert q.params.scale.shape == (-(-k // block), n)
    assert q.values.dtype == ml_dtypes.int4
    v = q.values.astype(np.int8)
    assert v.min() >= -7 and v.max() <= 7
    scale = np.repeat(q.params.scale, block, axis=0)[:k]
    assert np.all(np.abs(dequantize_tensor(q) - w) <= scale / 2 * (1 + 1e-5))


# --- helpers ------------------------------------------------------------------------------------


def ops(model: ir.Model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def proto_bytes(model: ir.Model) -> bytes:
    return ir.to_proto(model).SerializeToString()


def run_ember(model: ir.Model, feeds: dict[str, np.ndarray], level: int = 0) -> np.ndarray:
    # ember.Model optimizes in place: give it a copy
    copy = load_model(ir.to_proto(model))
    return next(iter(ember.Model(copy, level=level).run(feeds).values()))


def run_ort(model: ir.Model, feeds: dict[str, np.ndarray], *, optimize: bool = True) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto_bytes(model), options, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def check_valid(model: ir.Model) -> None:
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def zoo(name: str) -> tuple[ir.Model, np.ndarray, np.ndarray]:
    data = load_eval(name)
    return load_model(model_path(name)), data.x, data.y


def split(
    x: np.ndarray, y: np.ndarray
) -> tuple[list[dict[str, np.ndarray]], np.ndarray, np.ndarray]:
    """Calibrate on the first third (in batches of 32), evaluate on the rest."""
    cut = len(x) // 3
    calib = [{"input": x[i : min(i + 32, cut)]} for i in range(0, cut, 32)]
    return calib, x[cut:], y[cut:]


def tiny_model(
    nodes: list[onnx.NodeProto], inputs: list, outputs: list, inits: list, opset: int = 17
) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return load_model(proto)


def matmul_model(w: np.ndarray, bias: np.ndarray | None = None) -> ir.Model:
    k, n = w.shape
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y" if bias is None else "mm"], name="mm")]
    inits = [numpy_helper.from_array(w, "w")]
    if bias is not None:
        nodes.append(helper.make_node("Add", ["mm", "b"], ["y"], name="add"))
        inits.append(numpy_helper.from_array(bias, "b"))
    return tiny_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])],
        inits,
    )


def residual_cnn() -> ir.Model:
    """Conv -> Relu -> Conv (+ input) -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32)
    b1 = rng.standard_normal(4).astype(np.float32) * 0.1
    b2 = rng.standard_normal(4).astype(np.float32) * 0.1
    fc = rng.standard_normal((3, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "x"], ["s"], name="residual"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1),
    ]
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in [(w1, "w1"), (w2, "w2"), (b1, "b1"), (b2, "b2"), (fc, "fc")]
    ]
    return tiny_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        inits,
    )


# --- static QDQ: structure ----------------------------------------------------------------------


def test_static_mnist_mlp_op_counts_and_types() -> None:
    model, x, _ = zoo("mnist_mlp")
    before = proto_bytes(model)
    q = quantize_graph(model, QuantConfig(), [{"input": x[:200]}])
    assert proto_bytes(model) == before  # the input model is untouched
    # Q/DQ on the input and the two hidden outputs (the Relus fold into them), none on the
    # logits (a graph output only); weights and biases each through a DequantizeLinear.
    assert ops(q) == {"QuantizeLinear": 3, "DequantizeLinear": 3 + 3 + 3, "Gemm": 3}
    dequantized = [n.inputs[0].dtype for n in q.graph if n.op_type == "DequantizeLinear"]
    assert dequantized.count(ir.DataType.INT8) == 3  # weights
    assert dequantized.count(ir.DataType.INT32) == 3  # biases
    assert dequantized.count(ir.DataType.UINT8) == 3  # activations
    for n in q.graph:
        if n.op_type == "QuantizeLinear":
            assert n.outputs[0].dtype == ir.DataType.UINT8  # "auto": uint8 activations
        if n.op_type == "DequantizeLinear" and n.inputs[0].dtype == ir.DataType.INT8:
            assert n.attributes["axis"].value == 0  # Gemm with transB=1: output axis 0
            assert n.inputs[1].shape[0] == n.inputs[0].shape[0]  # per channel
    assert q.graph.outputs[0].name == "logits" and q.graph.outputs[0].dtype == ir.DataType.FLOAT
    assert q.opset_imports[""] >= 13
    check_valid(q)


def test_static_digits_cnn_folds_batchnorm_and_relu_and_passes_through_pool() -> None:
    model, x, _ = zoo("digits_cnn")
    q = quantize_graph(model, QuantConfig(), [{"input": x[:100]}])
    counts = ops(q)
    assert "BatchNormalization" not in counts and "Relu" not in counts
    # input, conv1, conv2 (Relu folded), MaxPool and Flatten outputs (sharing their input's
    # parameters); the Gemm's output is the logits.
    assert counts["QuantizeLinear"] == 5
    assert counts["DequantizeLinear"] == 5 + 3 + 3
    assert counts["Conv"] == 2 and counts["MaxPool"] == 1 and counts["Flatten"] == 1
    by_input = {n.inputs[0].name: n for n in q.graph if n.op_type == "QuantizeLinear"}
    pool = next(n for n in q.graph if n.op_type == "MaxPool")
    pool_q = by_input[pool.outputs[0].name]
    # MaxPool reads the int8 domain and keeps its input's scale and zero point
    pool_in_dq = pool.inputs[0].producer()
    assert pool_in_dq.op_type == "DequantizeLinear"
    assert pool_q.inputs[1] is pool_in_dq.inputs[1] or np.array_equal(
        pool_q.inputs[1].const_value.numpy(), pool_in_dq.inputs[1].const_value.numpy()
    )
    for n in q.graph:
        if n.op_type == "Conv":
            w_dq = n.inputs[1].producer()
            assert w_dq.attributes["axis"].value == 0
            assert w_dq.inputs[0].dtype == ir.DataType.INT8
            assert n.inputs[2].producer().inputs[0].dtype == ir.DataType.INT32
    check_valid(q)


def test_int8_activations_are_symmetric_and_keep_relu() -> None:
    model, x, _ = zoo("mnist_mlp")
    q = quantize_graph(model, QuantConfig(activation_type="int8"), [{"input": x[:200]}])
    counts = ops(q)
    assert counts["Relu"] == 2  # a symmetric range cannot clip at zero: Relu stays
    for n in q.graph:
        if n.op_type == "QuantizeLinear":
            assert n.outputs[0].dtype == ir.DataType.INT8
            assert int(n.inputs[2].const_value.numpy()) == 0
    check_valid(q)


def test_per_tensor_weights() -> None:
    model, x, _ = zoo("mnist_mlp")
    q = quantize_graph(model, QuantConfig(per_channel=False), [{"input": x[:100]}])
    for n in q.graph:
        if n.op_type == "DequantizeLinear" and n.inputs[0].dtype == ir.DataType.INT8:
            assert n.inputs[1].shape == ir.Shape([])
            assert "axis" not in n.attributes


def test_residual_add_of_two_quantized_tensors_is_quantized() -> None:
    model = residual_cnn()
    x = np.random.default_rng(1).standard_normal((16, 4, 6, 6)).astype(np.float32)
    q = quantize_graph(model, QuantConfig(), [{"x": x}])
    add = next(n for n in q.graph if n.op_type == "Add")
    assert all(v.producer().op_type == "DequantizeLinear" for v in add.inputs)
    assert {u.node.op_type for u in add.outputs[0].uses()} == {"QuantizeLinear"}
    # The Relu after the Add folds into the Add's uint8 range (zero point 0 clips at 0), so the
    # int8 engine fuses conv + residual Add + Relu into one kernel.
    assert not any(n.op_type == "Relu" for n in q.graph)
    (add_q,) = [u.node for u in add.outputs[0].uses()]
    assert add_q.inputs[2].const_value.numpy() == 0
    check_valid(q)
    fused = ember.load(q)
    assert not {"Add", "Relu"} & {s.node.op_type for s in fused.plan().steps}
    ref = run_ember(model, {"x": x})
    got, theirs = run_ember(q, {"x": x}), run_ort(q, {"x": x})
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    np.testing.assert_allclose(got, theirs, atol=0.02 * np.abs(ref).max())


def test_keep_fp32_and_exclude_leave_nodes_in_float() -> None:
    model, x, _ = zoo("mnist_mlp")
    names = quantizable_nodes(model, QuantConfig())
    assert names == ["/0/Gemm", "/3/Gemm", "/6/Gemm"]
    assert quantizable_nodes(model, QuantConfig(exclude=("/3/Gemm",))) == ["/0/Gemm", "/6/Gemm"]
    q = quantize_graph(
        model, QuantConfig(exclude=("/0/Gemm",)), [{"input": x[:100]}], keep_fp32=["/6/Gemm"]
    )
    gemms = {n.name: n for n in q.graph if n.op_type == "Gemm"}
    assert g_weight_is_float(gemms["/0/Gemm"]) and g_weight_is_float(gemms["/6/Gemm"])
    assert not g_weight_is_float(gemms["/3/Gemm"])


def g_weight_is_float(node: ir.Node) -> bool:
    return node.inputs[1].producer() is None and node.inputs[1].dtype == ir.DataType.FLOAT


def test_unknown_node_names_are_config_errors() -> None:
    model, x, _ = zoo("mnist_mlp")
    with pytest.raises(ConfigError, match=r"keep_fp32 names node\(s\) 'nope'.*/0/Gemm"):
        quantize_graph(model, QuantConfig(), [{"input": x[:10]}], keep_fp32=["nope"])
    with pytest.raises(ConfigError, match=r"QuantConfig.exclude names node\(s\) 'gone'"):
        quantizable_nodes(model, QuantConfig(exclude=("gone",)))


@pytest.mark.parametrize("samples", [None, [], iter(())])
def test_static_without_calibration_data(samples: object) -> None:
    model, _, _ = zoo("mnist_mlp")
    with pytest.raises(ConfigError, match="empty calibration set"):
        quantize_graph(model, QuantConfig(), samples)  # type: ignore[arg-type]


def test_progress_reports_calibration_batches() -> None:
    model, x, _ = zoo("mnist_mlp")
    seen: list[tuple[str, int, int | None]] = []
    batches = [{"input": x[i : i + 50]} for i in range(0, 200, 50)]
    quantize_graph(model, QuantConfig(), batches, progress=lambda *a: seen.append(a))
    assert seen == [("calibration", i, 4) for i in range(1, 5)]


def test_raises_an_old_opset_to_13() -> None:
    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    model = tiny_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])],
        [numpy_helper.from_array(w, "w")],
        opset=11,
    )
    x = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)
    q = quantize_graph(model, QuantConfig(), [{"x": x}])
    assert q.opset_imports[""] == 13
    check_valid(q)
    np.testing.assert_allclose(run_ember(q, {"x": x}), run_ort(q, {"x": x}), atol=1e-5)


# --- bias correction and SmoothQuant ------------------------------------------------------------


def test_bias_correction_removes_the_mean_error_of_weight_rounding() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 16)).astype(np.float32)
    w[0] *= 50  # one large weight row: a coarse per-channel step for every output channel
    model = matmul_model(w, bias=np.zeros(16, np.float32))
    x = (rng.standard_normal((512, 64)) * 0.1 + 2.0).astype(np.float32)  # mean far from 0
    ref = x @ w

    def mean_error(correct: bool) -> float:
        q = quantize_graph(model, QuantConfig(bias_correction=correct), [{"x": x}])
        return float(np.abs((run_ember(q, {"x": x}) - ref).mean(axis=0)).mean())

    without, with_ = mean_error(False), mean_error(True)
    assert with_ < 0.5 * without


def layernorm_matmul_model(decomposed_mul: bool) -> tuple[ir.Model, np.ndarray]:
    """x -> LayerNorm (or a plain Mul) -> MatMul, with a few outlier channels in the activation."""
    rng = np.random.default_rng(0)
    k, n = 32, 16
    gamma = np.ones(k, np.float32)
    gamma[:3] = 40.0  # outlier channels, as transformer activations have
    w = (rng.standard_normal((k, n)) * 0.2).astype(np.float32)
    first = (
        helper.make_node("Mul", ["x", "gamma"], ["h"], name="scale")
        if decomposed_mul
        else helper.make_node(
            "LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1
        )
    )
    nodes = [first, helper.make_node("MatMul", ["h", "w"], ["y"], name="mm")]
    inits = [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(w, "w")]
    if not decomposed_mul:
        inits.append(numpy_helper.from_array(np.zeros(k, np.float32), "beta"))
    model = tiny_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", n])],
        inits,
    )
    return model, rng.standard_normal((8, 10, k)).astype(np.float32)


@pytest.mark.parametrize("decomposed", [False, True])
def test_smoothquant_moves_outliers_into_the_weights(decomposed: bool) -> None:
    model, x = layernorm_matmul_model(decomposed)
    ref = run_ember(model, {"x": x})
    plain = quantize_graph(model, QuantConfig(bias_correction=False), [{"x": x}])
    smooth = quantize_graph(model, QuantConfig(smoothquant=0.5, bias_correction=False), [{"x": x}])
    if decomposed:  # no LayerNorm to fold 1/s into: a Mul is inserted before the MatMul
        assert ops(smooth)["Mul"] == 2
    else:  # folded into the LayerNorm's scale and bias
        assert "Mul" not in ops(smooth)
    check_valid(smooth)
    err_plain = np.abs(run_ember(plain, {"x": x}) - ref).mean()
    err_smooth = np.abs(run_ember(smooth, {"x": x}) - ref).mean()
    assert err_smooth < 0.7 * err_plain
    np.testing.assert_allclose(run_ember(smooth, {"x": x}), run_ort(smooth, {"x": x}), atol=1e-4)


def test_smoothquant_needs_samples() -> None:
    model, _ = layernorm_matmul_model(False)
    with pytest.raises(ConfigError, match="smoothquant needs calibration samples"):
        quantize_graph(model, QuantConfig(mode="dynamic", smoothquant=0.5))


# --- dynamic ------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [True, False])
def test_dynamic_mnist_mlp_is_ort_quantize_dynamic_form(per_channel: bool) -> None:
    model, x, y = zoo("mnist_mlp")
    q = quantize_graph(model, QuantConfig(mode="dynamic", per_channel=per_channel))
    assert ops(q) == {
        "DynamicQuantizeLinear": 3,
        "MatMulInteger": 3,
        "Cast": 3,
        "Mul": 6,
        "Add": 3,
        "Relu": 2,
    }
    for n in q.graph:
        if n.op_type == "MatMulInteger":
            w = n.inputs[1]
            assert (
                w.dtype == ir.DataType.INT8 and w.shape[1] == n.inputs[3].shape[0]
                if per_channel
                else True
            )
    check_valid(q)
    ref = run_ember(model, {"input": x})
    got, theirs = run_ember(q, {"input": x}), run_ort(q, {"input": x})
    np.testing.assert_allclose(got, theirs, atol=1e-4)
    assert (got.argmax(1) == y).mean() >= (ref.argmax(1) == y).mean() - 0.005


def test_dynamic_shares_one_dynamic_quantize_per_input() -> None:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("Add", ["q", "k"], ["y"], name="sum"),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), n)
        for n in ("wq", "wk")
    ]
    model = tiny_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])],
        inits,
    )
    q = quantize_graph(model, QuantConfig(mode="dynamic"))
    assert ops(q)["DynamicQuantizeLinear"] == 1 and ops(q)["MatMulInteger"] == 2
    x = rng.standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_allclose(run_ember(q, {"x": x}), run_ort(q, {"x": x}), atol=1e-4)


# --- weight-only --------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_weight_only_matmul_error_bound(bits: int, group: int) -> None:
    rng = np.random.default_rng(bits * group)
    k, n = 200, 24  # K not a multiple of the group: the last block is partial
    w = rng.standard_normal((k, n)).astype(np.float32)
    model = matmul_model(w)
    q = quantize_graph(model, QuantConfig(mode="weight-only", bits=bits, group_size=group))
    assert q.opset_imports[""] == 21
    dq = next(n for n in q.graph if n.op_type == "DequantizeLinear")
    assert dq.attributes["block_size"].value == group and dq.attributes["axis"].value == 0
    assert dq.inputs[0].dtype == (ir.DataType.INT4 if bits == 4 else ir.DataType.INT8)
    assert dq.inputs[1].shape == ir.Shape([-(-k // group), n])
    assert ops(q) == {"DequantizeLinear": 1, "MatMul": 1}
    check_valid(q)
    x = rng.standard_normal((7, k)).astype(np.float32)
    got = run_ember(q, {"x": x})
    # |x @ (W_q - W)| <= sum_k |x_k| * scale_block(k)/2 per output
    scale = np.repeat(dq.inputs[1].const_value.numpy(), group, axis=0)[:k]
    bound = np.abs(x) @ (scale / 2) * (1 + 1e-4) + 1e-4
    assert np.all(np.abs(got - x @ w) <= bound)
    # ORT's optimizer turns DQ+MatMul into MatMulNBits, which also quantizes the activations:
    # the graph's own meaning is ORT without graph optimizations.
    np.testing.assert_allclose(got, run_ort(q, {"x": x}, optimize=False), rtol=1e-5, atol=1e-4)


def test_weight_only_gemm_blocks_along_k() -> None:
    model, x, y = zoo("mnist_mlp")
    q = quantize_graph(model, QuantConfig(mode="weight-only", bits=4, group_size=32))
    dqs = [n for n in q.graph if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 3
    for dq in dqs:  # Gemm B is [N, K] (transB=1): blocks along axis 1
        assert dq.attributes["axis"].value == 1
        n_out, k = dq.inputs[0].shape
        assert dq.inputs[1].shape == ir.Shape([n_out, -(-k // 32)])
    check_valid(q)
    got = run_ember(q, {"input": x})
    np.testing.assert_allclose(got, run_ort(q, {"input": x}), rtol=1e-4, atol=1e-4)
    ref = run_ember(model, {"input": x})
    assert (got.argmax(1) == y).mean() >= (ref.argmax(1) == y).mean() - 0.01


# --- the zoo: ember and ORT agree, and int8 accuracy stays within 0.5 points ---------------------

ACCURACY: dict[tuple[str, str], tuple[float, float]] = {}


@pytest.mark.parametrize("name", ["digits_cnn", "mnist_mlp"])
@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_zoo_int8_accuracy_within_half_a_point(name: str, method: str) -> None:
    model, x, y = zoo(name)
    calib, x_eval, y_eval = split(x, y)
    q = quantize_graph(model, QuantConfig(method=method), calib)
    check_valid(q)
    ref = run_ember(model, {"input": x_eval})
    got = run_ember(q, {"input": x_eval})
    theirs = run_ort(q, {"input": x_eval})
    # ember and ORT compute the same QDQ graph; rounding at a step boundary may differ by one
    # quantization step somewhere, which moves logits by far less than their spread
    spread = float(np.abs(ref).max())
    assert np.abs(got - theirs).max() < 0.05 * spread
    assert (got.argmax(1) == theirs.argmax(1)).mean() >= 0.99
    fp32_acc = float((ref.argmax(1) == y_eval).mean())
    int8_acc = float((got.argmax(1) == y_eval).mean())
    ACCURACY[(name, method)] = (fp32_acc, int8_acc)
    print(f"\n{name} {method}: fp32 {fp32_acc:.4f} int8 {int8_acc:.4f}")
    assert int8_acc >= fp32_acc - 0.005


@pytest.mark.parametrize("name", ["digits_cnn", "mnist_mlp"])
def test_zoo_int8_runs_at_every_ember_level(name: str) -> None:
    model, x, _ = zoo(name)
    calib, x_eval, _ = split(x, np.zeros(len(x)))
    q = quantize_graph(model, QuantConfig(), calib)
    at0 = run_ember(q, {"input": x_eval}, level=0)
    spread = float(np.abs(at0).max())
    for level in (1, 2, 3):
        # fused kernels may round an activation to the neighbouring int8 step now and then
        got = run_ember(q, {"input": x_eval}, level=level)
        assert np.abs(got - at0).max() < 0.01 * spread
        assert (got.argmax(1) == at0.argmax(1)).mean() >= 0.995
