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
