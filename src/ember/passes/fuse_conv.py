"""Level-2 passes for convolutional nets: fold BatchNormalization into Conv weights, fuse a residual
Add and an activation into ai.ember FusedConv, an activation into FusedGemm, and rewrite the
PyTorch exporter's global average pooling (ReduceMean over H, W) as GlobalAveragePool.

Every fusion requires that nobody but the next node reads the intermediate value it removes.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ember.ops.registry import EMBER_DOMAIN
from ember.passes.rewrite import (
    FUSED_KEY,
    LAYOUT_KEY,
    add_initializer,
    attr_value,
    constant_array,
    fused_label,
    fusion_result,
    match_activation,
    onnx_opset,
    rank,
    replace_chain,
    same_shape,
    sole_consumer,
)


def _is_conv(node: ir.Node) -> bool:
    return node.op_type == "Conv" and node.domain == ""


def _is_plain_fused_conv(node: ir.Node, *, z_ok: bool) -> bool:
    """A FusedConv with no activation yet (and no Z, unless `z_ok`)."""
    if node.op_type != "FusedConv" or node.domain != EMBER_DOMAIN:
        return False
    if attr_value(node, "activation", ""):
        return False
    return z_ok or len(node.inputs) < 4 or node.inputs[3] is None


def _metadata(chain: list[ir.Node]) -> dict[str, str]:
    meta = {FUSED_KEY: fused_label(chain)}
    if LAYOUT_KEY in chain[0].metadata_props:
        meta[LAYOUT_KEY] = chain[0].metadata_props[LAYOUT_KEY]
    return meta


def _fused_conv(conv: ir.Node, inputs: list[ir.Value | None], extra: list[ir.Attr]) -> ir.Node:
    """A FusedConv with `conv`'s attributes (Conv's or FusedConv's) plus `extra`."""
    attrs = {a.name: a for a in conv.attributes.values()}
    attrs.update({a.name: a for a in extra})
    while inputs and inputs[-1] is None:
        inputs = inputs[:-1]
    return ir.Node(
        EMBER_DOMAIN,
        "FusedConv",
        inputs,
        list(attrs.values()),
        name=conv.name,
        outputs=[ir.Value()],
    )


class FuseConvBatchNormPass(ir.passes.InPlacePass):
    """Conv -> BatchNormalization (inference) becomes one Conv with scaled weights and a new bias.

    BN in inference is y = (x - mean) * s + bias with s = scale / sqrt(var + eps), per output
    channel, so it folds exactly into W' = W * s and B' = (B - mean) * s + bias (a conv without a
    bias gets one). Matches only when the conv output feeds the BN alone, W, B and the BN parameters
    are constants of the right shapes, and the BN is in inference mode. Computed in float64.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        count = 0
        for bn in list(graph):
            if bn.op_type != "BatchNormalization" or bn.domain != "" or bn.graph is None:
                continue
            x = bn.inputs[0]
            conv = x.producer() if x is not None else None
            if conv is None or not _is_conv(conv) or sole_consumer(x) is not bn:  # type: ignore[arg-type]
                continue
            folded = _fold_batch_norm(conv, bn)
            if folded is None:
                continue
            w, b = folded
            w_name = conv.inputs[1].name or "W"  # type: ignore[union-attr]
            new = ir.Node(
                "",
                "Conv",
                [
                    conv.inputs[0],
                    add_initializer(graph, f"{w_name}_bn", w),
                    add_initializer(graph, f"{w_name}_bn_bias", b),
                ],
                list(conv.attributes.values()),
                name=conv.name,
                outputs=[ir.Value()],
                metadata_props={FUSED_KEY: fused_label([conv, bn])},
            )
            replace_chain(graph, [conv, bn], new)
            count += 1
        return ir.passes.PassResult(model, modified=count > 0)


def _fold_batch_norm(conv: ir.Node, bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(W', B') for conv followed by bn, or None when they cannot be folded."""
    if attr_value(bn, "training_mode", 0) != 0 or attr_value(bn, "is_test", 1) == 0:
        return None
    if attr_value(bn, "spatial", 1) != 1:
        return None
    if any(v is not None and v.name and (v.uses() or v.is_graph_output()) for v in bn.outputs[1:]):
        return None  # running statistics are read: training mode
    w = constant_array(conv.inputs[1])
    if w is None or w.ndim < 3 or w.dtype.kind != "f":
        return None
    K = w.shape[0]
    b = constant_array(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else np.zeros(K)
    params = [constant_array(v) for v in bn.inputs[1:5]]
    if b is None or len(params) != 4 or any(p is None or p.shape != (K,) for p in params):
        return None
    if b.shape != (K,):
        return None
    scale, bias, mean, var = (p.astype(np.float64) for p in params)  # type: ignore[union-attr]
    eps = float(attr_value(bn, "epsilon", 1e-5))  # type: ignore[arg-type]
    s = scale / np.sqrt(var + eps)  # (K,)
    w_new = (w.astype(np.float64) * s.reshape(K, *([1] * (w.ndim - 1)))).astype(w.dtype)
    b_new = ((b.astype(np.float64) - mean) * s + bias).astype(w.dtype)
    return w_new, b_new


class FuseConvAddPass(ir.passes.InPlacePass):
    """Conv -> Add(residual) becomes FusedConv(X, W, B, Z) with the Add's other operand as Z.

    Matches only when the Add's other operand has exactly the conv output's shape (Z is added
    without broadcasting) and the conv output feeds the Add alone.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        count = 0
        for conv in list(graph):
            if conv.graph is None or not (_is_conv(conv) or _is_plain_fused_conv(conv, z_ok=False)):
                continue
            y = conv.outputs[0]
            add = sole_consumer(y)
            if add is None or add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2:
                continue
            z = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
            if z is None or z is y or not same_shape(z.shape, y.shape) or z.dtype != y.dtype:
                continue
            b = conv.inputs[2] if len(conv.inputs) > 2 else None
            new = _fused_conv(conv, [conv.inputs[0], conv.inputs[1], b, z], [])
            new.metadata_props.update(_metadata([conv, add]))
            replace_chain(graph, [conv, add], new)
            count += 1
        return fusion_result(model, count)


class FuseConvActivationPass(ir.passes.InPlacePass):
    """Conv (or a FusedConv without activation) -> activation becomes FusedConv with `activation`.

    Matches the activations of ember.ops.fused.ACTIVATIONS (Clip with constant bounds only), and
    only when the conv output feeds the activation alone: anyone else reading it would otherwise
    see activated values.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        count = 0
        for conv in list(graph):
            if conv.graph is None or not (_is_conv(conv) or _is_plain_fused_conv(conv, z_ok=True)):
                continue
            y = conv.outputs[0]
            act_node = sole_consumer(y)
            act = match_activation(act_node) if act_node is not None else None
            if act is None or act_node is None or act_node.inputs[0] is not y:
                continue
            new = _fused_conv(conv, list(conv.inputs), act.attributes())
            new.metadata_props.update(_metadata([conv, act_node]))
            replace_chain(graph, [conv, act_node], new)
            count += 1
        return fusion_result(model, count)


class FuseGemmActivationPass(ir.passes.InPlacePass):
    """Gemm -> activation becomes FusedGemm with `activation`, when the Gemm output feeds the
    activation alone."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        count = 0
        for gemm in list(graph):
            if gemm.graph is None or gemm.op_type != "Gemm" or gemm.domain != "":
                continue
            y = gemm.outputs[0]
            act_node = sole_consumer(y)
            act = match_activation(act_node) if act_node is not None else None
            if act is None or act_node is None or act_node.inputs[0] is not y:
                continue
            attrs = [*gemm.attributes.values(), *act.attributes()]
            new = ir.Node(
                EMBER_DOMAIN,
                "FusedGemm",
                list(gemm.inputs),
                attrs,
                name=gemm.name,
                outputs=[ir.Value()],
                metadata_props={FUSED_KEY: fused_label([gemm, act_node])},
            )
            replace_chain(graph, [gemm, act_node], new)
            count += 1
        return fusion_result(model, count)


class ReduceMeanToGlobalAveragePoolPass(ir.passes.InPlacePass):
    """ReduceMean over axes [2, 3] with keepdims=1 of a 4-D float tensor becomes GlobalAveragePool.

    The two compute the same mean; the PyTorch exporter writes adaptive_avg_pool2d(x, 1) as the
    ReduceMean, which ember's pooling kernels (and the channels-last pass) do not see.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        count = 0
        for node in list(graph):
            if node.op_type != "ReduceMean" or node.domain != "":
                continue
            x = node.inputs[0]
            if x is None or rank(x) != 4 or x.dtype not in _FLOATS:
                continue
            if attr_value(node, "keepdims", 1) != 1 or _axes(node, model) != [2, 3]:
                continue
            new = ir.Node(
                "",
                "GlobalAveragePool",
                [x],
                name=node.name,
                outputs=[ir.Value()],
                metadata_props={FUSED_KEY: fused_label([node])},
            )
            replace_chain(graph, [node], new)
            count += 1
        return ir.passes.PassResult(model, modified=count > 0)


_FLOATS = frozenset(
    {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
)


def _axes(node: ir.Node, model: ir.Model) -> list[int] | None:
    """ReduceMean's axes (an attribute before opset 18, an input since), normalized and sorted."""
    if onnx_opset(model) >= 18:
        if len(node.inputs) < 2 or node.inputs[1] is None:
            return None
        a = constant_array(node.inputs[1])
        axes = None if a is None else [int(i) for i in a.reshape(-1)]
    else:
        axes = attr_value(node, "axes")  # type: ignore[assignment]
    if axes is None:
        return None
    return sorted(i + 4 if i < 0 else i for i in axes)
