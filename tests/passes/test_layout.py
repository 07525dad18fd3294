"""Level 3: channels-last regions around 2-D convs, with Transposes only on the region's edges."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from tests.passes.graphs import assert_structure, attrs, check_rewrite, model, ops, weights

from ember.passes import optimize
from ember.passes.basic import InferShapesPass
from ember.passes.layout import TO_NCHW, TO_NHWC, ChannelsLastPass

X = weights(2, 3, 8, 8, seed=20)
W = weights(4, 3, 3, 3, seed=21)
HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def channels_last(m: ir.Model) -> None:
    ir.passes.PassManager([InferShapesPass(), ChannelsLastPass()])(m)


def level3(m: ir.Model) -> None:
    optimize(m, 3)


def perms(m: ir.Model) -> list[tuple[int, ...]]:
    return [tuple(attrs(n)["perm"]) for n in m.graph if n.op_type == "Transpose"]  # type: ignore[arg-type]


def node_of(m: ir.Model, op_type: str) -> ir.Node:
    (node,) = [n for n in m.graph if n.op_type == op_type]
    return node


CLASSIFIER = f"""{HEADER}
g (float[N, 3, 8, 8] x) => (float[N, 10] y) {{
    c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
    r = Relu(c)
    p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r)
    f = Flatten(p)
    y = Gemm <transB = 1> (f, fw, fb)
}}
"""


def classifier() -> ir.Model:
    return model(CLASSIFIER, w=W, b=weights(4), fw=weights(10, 64), fb=weights(10))


def test_conv_region_runs_channels_last_between_two_transposes() -> None:
    m = check_rewrite(classifier, channels_last, [X])
    expected = """
    <ir_version: 8, opset_import: ["" : 17, "ai.ember" : 1]>
    g (float[N, 3, 8, 8] x) => (float[N, 10] y) {
        xt = Transpose <perm = [0, 2, 3, 1]> (x)
        c = ai.ember.FusedConv <pads = [1, 1, 1, 1], channels_last = 1> (xt, w, b)
        r = Relu(c)
        p = ai.ember.MaxPool <kernel_shape = [2, 2], strides = [2, 2], channels_last = 1> (r)
        pt = Transpose <perm = [0, 3, 1, 2]> (p)
        f = Flatten(pt)
        y = Gemm <transB = 1> (f, fw, fb)
    }
    """
    assert_structure(m, expected, w=W, b=weights(4), fw=weights(10, 64), fb=weights(10))
    assert ops(m) == {
        "Transpose": 2,
        "ember.FusedConv": 1,
        "Relu": 1,
        "ember.MaxPool": 1,
        "Flatten": 1,
        "Gemm": 1,
    }
    assert [n.op_type for n in m.graph][:2] == ["Transpose", "FusedConv"]
    assert perms(m) == [TO_NHWC, TO_NCHW]
    conv, relu, pool = (node_of(m, t) for t in ("FusedConv", "Relu", "MaxPool"))
    assert attrs(conv) == {"pads": (1, 1, 1, 1), "channels_last": 1}
    assert attrs(pool)["channels_last"] == 1 and attrs(pool)["kernel_shape"] == (2, 2)
    assert conv.metadata_props == {"ember.fused": "Conv", "ember.layout": "NHWC"}
    assert all(n.metadata_props["ember.layout"] == "NHWC" for n in (relu, pool))
    assert str(relu.outputs[0].shape) == "[N,8,8,4]"  # shapes follow the layout
    flatten_input = node_of(m, "Flatten").inputs[0]
    assert flatten_input.producer().op_type == "Transpose"  # type: ignore[union-attr]
    assert str(flatten_input.shape) == "[N,4,4,4]"  # NCHW again
    assert m.opset_imports["ai.ember"] == 1


def test_level_3_fuses_first_then_converts() -> None:
    m = check_rewrite(classifier, level3, [X])
    assert ops(m) == {
        "Transpose": 2,
        "ember.FusedConv": 1,
        "ember.MaxPool": 1,
        "Flatten": 1,
        "Gemm": 1,
    }
    conv = node_of(m, "FusedConv")
    assert attrs(conv)["activation"] == "Relu" and attrs(conv)["channels_last"] == 1
    assert conv.metadata_props == {"ember.fused": "Conv+Relu", "ember.layout": "NHWC"}


def test_per_channel_constants_are_rewritten_channels_last() -> None:
    text = f"""{HEADER}
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        m = Mul(c, s)
        a = Add(k, m)
        d = Div(a, v)
        y = Sub(d, half)
    }}
    """
    consts = {"s": weights(4, 1, 1), "k": weights(1, 4, 1, 1), "v": weights(8, positive=True)}
    make = lambda: model(text, w=W, half=np.float32(0.5), **consts)  # noqa: E731
    m = check_rewrite(make, channels_last, [X])
    assert ops(m) == {"Transpose": 2, "ember.FusedConv": 1, "Mul": 1, "Add": 1, "Div": 1, "Sub": 1}
    binary = [n for n in m.graph if n.op_type in ("Mul", "Add", "Div")]
    shapes = {n.op_type: n.inputs[1 if n.op_type != "Add" else 0].shape for n in binary}
    assert str(shapes["Mul"]) == "[1,1,1,4]"  # (C, 1, 1) -> (1, 1, 1, C)
    assert str(shapes["Add"]) == "[1,1,1,4]"  # (1, C, 1, 1) -> (1, 1, 1, C)
    assert str(shapes["Div"]) == "[1,1,8,1]"  # (W,) broadcasts along W, which moved
    assert node_of(m, "Sub").inputs[1].name == "half"  # a scalar is the same in any layout
    assert m.graph.outputs[0].name == "y" and node_of(m, "Sub").outputs[0].name == "y_nhwc"


def test_concat_on_channels_moves_to_the_last_axis() -> None:
    text = f"""{HEADER}
    g (float[N, 3, 8, 8] x) => (float[N, 8, 8, 8] y) {{
        a = Conv <pads = [1, 1, 1, 1]> (x, w)
        b = Conv <pads = [1, 1, 1, 1]> (x, w2)
        y = Concat <axis = 1> (a, b)
    }}
    """
    m = check_rewrite(lambda: model(text, w=W, w2=weights(4, 3, 3, 3, seed=1)), channels_last, [X])
    assert ops(m) == {"Transpose": 2, "ember.FusedConv": 2, "Concat": 1}  # x enters once
    assert attrs(node_of(m, "Concat"))["axis"] == 3


def test_squeeze_excite_broadcast_inside_the_region() -> None:
    # (N, H, W, C) * (N, 1, 1, C) broadcasts exactly like (N, C, H, W) * (N, C, 1, 1).
    text = f"""{HEADER}
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        g = GlobalAveragePool(c)
        s = Sigmoid(g)
        y = Mul(c, s)
    }}
    """
    m = check_rewrite(lambda: model(text, w=W), level3, [X])
    assert ops(m) == {
        "Transpose": 2,
        "ember.FusedConv": 1,
        "ember.GlobalAveragePool": 1,
        "Sigmoid": 1,
        "Mul": 1,
    }


def test_a_tensor_leaving_to_several_ops_is_transposed_back_once() -> None:
    text = f"""{HEADER}
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y, float[N, 4, 8, 8] z, float[N, 4, 8, 8] r) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        y = Softmax <axis = 1> (c)
        z = LpNormalization <axis = 1> (c)
        r = Relu(c)
    }}
    """
    m = check_rewrite(lambda: model(text, w=W), channels_last, [X])
    assert ops(m)["Transpose"] == 3  # x in; c out to Softmax and LpNormalization; r out
    assert [v.name for v in m.graph.outputs] == ["y", "z", "r"]


def test_ops_that_need_nchw_split_regions() -> None:
    text = f"""{HEADER}
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {{
        a = Conv <pads = [1, 1, 1, 1]> (x, w)
        s = Softmax <axis = 1> (a)
        y = Conv <pads = [1, 1, 1, 1]> (s, w2)
    }}
    """
    make = lambda: model(text, w=W, w2=weights(4, 4, 3, 3, seed=1))  # noqa: E731
    m = check_rewrite(make, channels_last, [X])
    assert ops(m) == {"Transpose": 4, "ember.FusedConv": 2, "Softmax": 1}
    assert perms(m) == [TO_NHWC, TO_NCHW, TO_NHWC, TO_NCHW]


def test_outside_operands_enter_through_a_transpose() -> None:
    text = f"""{HEADER}
    g (float[N, 3, 8, 8] x, float[N, 4, 8, 8] z, float[8] v) => (float[N, 4, 8, 8] y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        a = Add(c, z)
        y = Mul(a, v)
    }}
    """
    inputs = [X, weights(2, 4, 8, 8, seed=1), weights(8, seed=2)]
    m = check_rewrite(lambda: model(text, w=W), channels_last, inputs)
    # z (rank 4) joins through a Transpose; the Mul by v, a rank-1 input, stays NCHW.
    assert ops(m) == {"Transpose": 3, "ember.FusedConv": 1, "Add": 1, "Mul": 1}
    assert "ember.layout" not in node_of(m, "Mul").metadata_props


def test_max_pool_whose_indices_are_read_stays_nchw() -> None:
    text = f"""{HEADER}
    g (float[N, 3, 8, 8] x) => (float[N, 4, 4, 4] y, int64[N, 4, 4, 4] i) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        y, i = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (c)
    }}
    """
    m = check_rewrite(lambda: model(text, w=W), channels_last, [X])
    assert ops(m) == {"Transpose": 2, "ember.FusedConv": 1, "MaxPool": 1}


@pytest.mark.parametrize(
    "body",
    [
        "r = Relu(x)\n y = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r)",
        # A 1-D conv is not 2-D: left to the NCHW kernels.
        "y = Conv (x3, w1)",
    ],
)
def test_regions_without_a_2d_conv_are_left_alone(body: str) -> None:
    text = f"""{HEADER}
    g (float[N, 3, 8, 8] x, float[N, 3, 8] x3) => (y) {{
        {body}
    }}
    """
    m = model(text, w1=weights(4, 3, 3))
    InferShapesPass()(m)
    assert not ChannelsLastPass()(m).modified


def test_every_level_3_value_keeps_its_graph_name_and_layout() -> None:
    text = f"""{HEADER}
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] c, float[N, 4, 4, 4] y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        y = AveragePool <kernel_shape = [2, 2], strides = [2, 2]> (c)
    }}
    """
    m = check_rewrite(lambda: model(text, w=W), level3, [X])
    assert ops(m) == {"Transpose": 3, "ember.FusedConv": 1, "ember.AveragePool": 1}
    assert [(v.name, str(v.shape)) for v in m.graph.outputs] == [
        ("c", "[N,4,8,8]"),
        ("y", "[N,4,4,4]"),
    ]
