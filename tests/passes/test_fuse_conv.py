"""Level-2 conv passes: Conv+BatchNormalization folding, Conv+Add(+activation) and Conv+activation
into FusedConv, Gemm+activation into FusedGemm, ReduceMean(H, W) into GlobalAveragePool."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from tests.passes.graphs import assert_structure, attrs, check_rewrite, model, ops, weights

from ember.passes import optimize
from ember.passes.basic import InferShapesPass
from ember.passes.fuse_conv import (
    FuseConvActivationPass,
    FuseConvAddPass,
    FuseConvBatchNormPass,
    FuseGemmActivationPass,
    ReduceMeanToGlobalAveragePoolPass,
)

X = weights(2, 3, 8, 8, seed=10)
X4 = weights(2, 4, 8, 8, seed=11)


def level2(m: ir.Model) -> None:
    optimize(m, 2)


def just(*passes: ir.passes.PassBase):
    def rewrite(m: ir.Model) -> None:
        ir.passes.PassManager(list(passes))(m)

    return rewrite


def fused(node: ir.Node) -> str:
    return node.metadata_props["ember.fused"]


BN_PARAMS = {
    "scale": weights(4, seed=1),
    "bias": weights(4, seed=2),
    "mean": weights(4, seed=3),
    "var": weights(4, seed=4, positive=True),
}

CONV_BN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {{
    c = Conv <pads = [1, 1, 1, 1]> ({conv_inputs})
    y = BatchNormalization <epsilon = 0.001> (c, scale, bias, mean, var)
}}
"""


@pytest.mark.parametrize("conv_inputs", ["x, w, b", "x, w"])
def test_batch_norm_folds_into_the_conv(conv_inputs: str) -> None:
    text = CONV_BN.format(conv_inputs=conv_inputs)
    make = lambda: model(text, w=weights(4, 3, 3, 3), b=weights(4, seed=5), **BN_PARAMS)  # noqa: E731
    m = check_rewrite(make, just(FuseConvBatchNormPass()), [X])
    conv = m.graph.node(0)
    expected = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
        y = Conv <pads = [1, 1, 1, 1]> (x, w, b)
    }
    """
    assert_structure(m, expected, w=weights(4, 3, 3, 3), b=weights(4))
    assert fused(conv) == "Conv+BatchNormalization"
    assert attrs(conv)["pads"] == (1, 1, 1, 1)
    assert len(conv.inputs) == 3  # a conv without a bias gets one
    assert conv.outputs[0].name == "y"


def test_batch_norm_folds_into_a_grouped_conv() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4, 8, 8] x) => (float[N, 4, 8, 8] y) {
        c = Conv <group = 4, pads = [1, 1, 1, 1]> (x, w)
        y = BatchNormalization (c, scale, bias, mean, var)
    }
    """
    m = check_rewrite(lambda: model(text, w=weights(4, 1, 3, 3), **BN_PARAMS), level2, [X4])
    assert ops(m) == {"Conv": 1}


@pytest.mark.parametrize(
    ("inputs", "body"),
    [
        # The scale is a graph input: not known when optimizing.
        ("float[4] scale", "y = BatchNormalization (c, scale, bias, mean, var)"),
        # Someone else reads the conv output.
        ("", "z = BatchNormalization (c, scale, bias, mean, var)\n y = Add(z, c)"),
        # Training mode normalizes with the batch's statistics, not the running ones.
        ("", "y = BatchNormalization <training_mode = 1> (c, scale, bias, mean, var)"),
    ],
)
def test_batch_norm_that_cannot_fold_stays(inputs: str, body: str) -> None:
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 8, 8] x{", " + inputs if inputs else ""}) => (float[N, 4, 8, 8] y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        {body}
    }}
    """
    params = {k: v for k, v in BN_PARAMS.items() if k not in inputs}
    m = model(text, w=weights(4, 3, 3, 3), **params)
    assert not FuseConvBatchNormPass()(m).modified
    assert ops(m)["BatchNormalization"] == 1


RESIDUAL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4, 8, 8] x) => (float[N, 4, 8, 8] y) {{
    c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
    s = Add({operands})
    y = Relu(s)
}}
"""


@pytest.mark.parametrize("operands", ["c, x", "x, c"])
def test_conv_add_relu_becomes_one_fused_conv(operands: str) -> None:
    text = RESIDUAL.format(operands=operands)
    make = lambda: model(text, w=weights(4, 4, 3, 3), b=weights(4, seed=1))  # noqa: E731
    m = check_rewrite(make, level2, [X4])
    expected = """
    <ir_version: 8, opset_import: ["" : 17, "ai.ember" : 1]>
    g (float[N, 4, 8, 8] x) => (float[N, 4, 8, 8] y) {
        y = ai.ember.FusedConv <pads = [1, 1, 1, 1], activation = "Relu"> (x, w, b, x)
    }
    """
    assert_structure(m, expected, w=weights(4, 4, 3, 3), b=weights(4))
    node = m.graph.node(0)
    assert [v.name for v in node.inputs] == ["x", "w", "b", "x"]
    assert fused(node) == "Conv+Add+Relu"
    assert m.opset_imports["ai.ember"] == 1


def test_conv_bn_add_relu_records_all_four() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4, 8, 8] x) => (float[N, 4, 8, 8] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        n = BatchNormalization (c, scale, bias, mean, var)
        s = Add(x, n)
        y = Relu(s)
    }
    """
    m = check_rewrite(lambda: model(text, w=weights(4, 4, 3, 3), **BN_PARAMS), level2, [X4])
    assert ops(m) == {"ember.FusedConv": 1}
    assert fused(m.graph.node(0)) == "Conv+BatchNormalization+Add+Relu"


def test_conv_add_without_activation_fuses_the_add() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4, 8, 8] x) => (float[N, 4, 8, 8] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        y = Add(c, x)
    }
    """
    rewrite = just(InferShapesPass(), FuseConvAddPass())  # Z's shape must be known equal
    m = check_rewrite(lambda: model(text, w=weights(4, 4, 3, 3)), rewrite, [X4])
    node = m.graph.node(0)
    assert ops(m) == {"ember.FusedConv": 1}
    assert [v.name if v else None for v in node.inputs] == ["x", "w", None, "x"]
    assert "activation" not in attrs(node)


def test_add_that_broadcasts_is_not_fused() -> None:
    # (4, 1, 1) is a per-channel bias, not a tensor of the conv output's shape: no Z.
    text = RESIDUAL.format(operands="c, k")
    make = lambda: model(text, w=weights(4, 4, 3, 3), b=weights(4), k=weights(4, 1, 1))  # noqa: E731
    m = check_rewrite(make, level2, [X4])
    assert ops(m) == {"Conv": 1, "Add": 1, "Relu": 1}


ACTIVATION = """
<ir_version: 8, opset_import: ["" : {opset}, "ai.ember" : 1]>
g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {{
    c = Conv <pads = [1, 1, 1, 1], strides = [1, 1]> (x, w, b)
    y = {act}
}}
"""


@pytest.mark.parametrize(
    ("opset", "act", "name", "params"),
    [
        (20, "Relu(c)", "Relu", ()),
        (20, "LeakyRelu <alpha = 0.2> (c)", "LeakyRelu", (0.2,)),
        (20, "Clip(c, zero, six)", "Clip", (0.0, 6.0)),
        (20, "Clip(c, zero)", "Clip", (0.0, np.inf)),
        (20, "Clip(c, , six)", "Clip", (-np.inf, 6.0)),
        (6, "Clip <min = -1.0, max = 1.0> (c)", "Clip", (-1.0, 1.0)),
        (20, "Sigmoid(c)", "Sigmoid", ()),
        (20, "Tanh(c)", "Tanh", ()),
        (20, "HardSigmoid <alpha = 0.3, beta = 0.4> (c)", "HardSigmoid", (0.3, 0.4)),
        (20, "HardSwish(c)", "HardSwish", ()),
        (20, "Gelu(c)", "Gelu", ()),
        (20, 'Gelu <approximate = "tanh"> (c)', "GeluTanh", ()),
        (20, 'ai.ember.Gelu <approximate = "tanh"> (c)', "GeluTanh", ()),
        (20, "Elu <alpha = 0.5> (c)", "Elu", (0.5,)),
    ],
)
def test_conv_activation_becomes_fused_conv(
    opset: int, act: str, name: str, params: tuple[float, ...]
) -> None:
    text = ACTIVATION.format(opset=opset, act=act)
    bounds = {"zero": np.float32(0), "six": np.float32(6)}
    make = lambda: model(text, w=weights(4, 3, 3, 3), b=weights(4, seed=1), **bounds)  # noqa: E731
    m = check_rewrite(make, just(FuseConvActivationPass()), [X * 4])
    assert ops(m) == {"ember.FusedConv": 1}
    node = m.graph.node(0)
    a = attrs(node)
    assert a["activation"] == name
    assert a.get("activation_params", ()) == pytest.approx(params)
    assert a["pads"] == (1, 1, 1, 1) and a["strides"] == (1, 1)
    assert fused(node) == f"Conv+{act.split('(')[0].split('<')[0].strip().split('.')[-1]}"
    assert node.outputs[0].name == "y"


@pytest.mark.parametrize(
    ("inputs", "body"),
    [
        # The conv output is read by the Add too: it must stay un-activated.
        ("", "r = Relu(c)\n y = Add(r, c)"),
        # A conv output that is a graph output must stay what it is.
        ("", "y = Relu(c)"),
        # Clip bounds that are not constants.
        (", float lo", "y = Clip(c, lo)"),
        # Not an activation the fused ops take.
        ("", "y = Softplus(c)"),
    ],
)
def test_activation_that_cannot_fuse_stays(inputs: str, body: str) -> None:
    outputs = (
        "float[N, 4, 8, 8] y, float[N, 4, 8, 8] c"
        if body == "y = Relu(c)"
        else "float[N, 4, 8, 8] y"
    )
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 8, 8] x{inputs}) => ({outputs}) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        {body}
    }}
    """
    m = model(text, w=weights(4, 3, 3, 3))
    before = ops(m)
    optimize(m, 2)
    assert ops(m) == before


GEMM = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 6] x) => ({outputs}) {{
    h = Gemm <transB = 1, alpha = 0.5> (x, w, b)
    y = HardSigmoid(h)
}}
"""


def test_gemm_activation_becomes_fused_gemm() -> None:
    text = GEMM.format(outputs="float[N, 5] y")
    make = lambda: model(text, w=weights(5, 6), b=weights(5, seed=1))  # noqa: E731
    m = check_rewrite(make, just(FuseGemmActivationPass()), [weights(3, 6, seed=2)])
    node = m.graph.node(0)
    assert ops(m) == {"ember.FusedGemm": 1}
    assert attrs(node) == {
        "transB": 1,
        "alpha": 0.5,
        "activation": "HardSigmoid",
        "activation_params": pytest.approx((0.2, 0.5)),
    }
    assert fused(node) == "Gemm+HardSigmoid"


def test_gemm_whose_output_is_read_elsewhere_is_not_fused() -> None:
    text = GEMM.format(outputs="float[N, 5] y, float[N, 5] h")
    m = model(text, w=weights(5, 6), b=weights(5, seed=1))
    assert not FuseGemmActivationPass()(m).modified


@pytest.mark.parametrize(
    ("opset", "axes"),
    [(17, "<axes = [2, 3]>"), (17, "<axes = [-1, -2], keepdims = 1>"), (18, "(x, axes23)")],
)
def test_reduce_mean_over_h_w_becomes_global_average_pool(opset: int, axes: str) -> None:
    call = f"ReduceMean {axes} (x)" if axes.startswith("<") else f"ReduceMean{axes}"
    text = f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[N, 3, 8, 8] x) => (float[N, 3, 1, 1] y) {{
        y = {call}
    }}
    """
    make = lambda: model(text, axes23=np.array([2, 3]))  # noqa: E731
    m = check_rewrite(make, just(ReduceMeanToGlobalAveragePoolPass()), [X])
    assert ops(m) == {"GlobalAveragePool": 1}
    assert fused(m.graph.node(0)) == "ReduceMean"


@pytest.mark.parametrize(
    ("x", "call"),
    [
        ("float[N, 3, 8, 8]", "ReduceMean <axes = [2, 3], keepdims = 0> (x)"),
        ("float[N, 3, 8, 8]", "ReduceMean <axes = [1]> (x)"),
        ("float[N, 3, 8, 8]", "ReduceMean <axes = [1, 2, 3]> (x)"),
        ("float[N, 8, 8]", "ReduceMean <axes = [1, 2]> (x)"),
        ("int32[N, 3, 8, 8]", "ReduceMean <axes = [2, 3]> (x)"),
    ],
)
def test_other_reduce_means_stay(x: str, call: str) -> None:
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g ({x} x) => (y) {{
        y = {call}
    }}
    """
    m = model(text)
    optimize(m, 2)
    assert ops(m) == {"ReduceMean": 1}
