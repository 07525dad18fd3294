"""Small models written in ONNX text, shared by the tests."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser

MLP_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
mlp (float[batch, 4] x) => (float[batch, 3] y) <float[4, 3] W = {0.1, -0.2, 0.3, 0.4, 0.5, -0.6,
                                                                 0.7, 0.8, 0.9, -1.0, 1.1, 1.2},
                                                  float[3] b = {0.5, -0.5, 0.0}>
{
    h = MatMul(x, W)
    z = Add(h, b)
    y = Relu(z)
}
"""


def mlp() -> onnx.ModelProto:
    """y = relu(x @ W + b) with a symbolic batch dim; weights as raw bytes, as exporters write."""
    model = onnx.parser.parse_model(MLP_TEXT)
    for i, t in enumerate(model.graph.initializer):
        model.graph.initializer[i].CopyFrom(
            onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t), t.name)
        )
    return model


def mlp_reference(x: np.ndarray) -> np.ndarray:
    m = mlp()
    W = onnx.numpy_helper.to_array(m.graph.initializer[0])
    b = onnx.numpy_helper.to_array(m.graph.initializer[1])
    return np.maximum(x @ W + b, 0)


def small_resnet(seed: int = 0, channels: int = 8) -> onnx.ModelProto:
    """A residual CNN the way exporters write one: Conv+BatchNormalization+Relu, a residual Add,
    max pooling, global average pooling as ReduceMean, Flatten and Gemm. Symbolic batch."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c = channels

    def init(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * scale).astype(np.float32), name
        )

    inits = [
        init("w1", c, 3, 3, 3),
        init("b1", c),
        init("w2", c, c, 3, 3),
        init("w3", c, c, 3, 3),
        init("b3", c),
        init("wd", c, 1, 3, 3),  # depthwise
        init("fc_w", 10, c),
        init("fc_b", 10),
        numpy_helper.from_array(rng.random(c).astype(np.float32) + 0.5, "bn_scale"),
        init("bn_bias", c),
        init("bn_mean", c),
        numpy_helper.from_array(rng.random(c).astype(np.float32) + 0.5, "bn_var"),
        numpy_helper.from_array(np.array([0.0], np.float32), "lo"),
        numpy_helper.from_array(np.array([6.0], np.float32), "hi"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]
        ),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c2", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["n2"]
        ),
        helper.make_node("Relu", ["n2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c3", "p1"], ["s3"]),
        helper.make_node("Relu", ["s3"], ["r3"]),
        helper.make_node("Conv", ["r3", "wd"], ["cd"], pads=[1, 1, 1, 1], group=c),
        helper.make_node("Clip", ["cd", "lo", "hi"], ["r4"]),
        helper.make_node("ReduceMean", ["r4"], ["g"], axes=[2, 3], keepdims=1),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small_resnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
