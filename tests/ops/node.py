"""Run one ONNX node through ember.load: the op tests' way to exercise an op end to end."""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto, helper

import ember


def run_node(
    op_type: str,
    inputs: list[tuple[str, np.ndarray] | None],
    attrs: dict[str, Any] | None = None,
    *,
    opset: int = 22,
    exact: bool = False,
    n_outputs: int = 1,
) -> Any:
    """`inputs` is a list of (name, array), or None for an omitted optional input. Returns the
    output, or the list of `n_outputs` outputs."""
    names = [i[0] if i is not None else "" for i in inputs]
    outs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, **(attrs or {}))
    feeds = dict(i for i in inputs if i is not None)
    vi = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in feeds.items()
    ]
    out_vi = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs]
    graph = helper.make_graph([node], "g", vi, out_vi)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    result = ember.load(model, exact=exact).run(feeds)
    return [result[o] for o in outs] if n_outputs > 1 else result[outs[0]]
