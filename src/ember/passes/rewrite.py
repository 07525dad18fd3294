"""What ember's graph passes share: reading constants, naming new values, swapping a chain of nodes
for one fused node, and recording what a fused node replaced.

It knows nothing about any particular pattern; the passes beside it do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from ember.ops.registry import EMBER_DOMAIN
from ember.runtime.plan import attribute_value, tensor_array

#: node.metadata_props key: the op types a fused node replaced, "Conv+BatchNormalization+Relu".
FUSED_KEY = "ember.fused"
#: node.metadata_props key: "NHWC" on nodes that take and give channels-last tensors.
LAYOUT_KEY = "ember.layout"


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """`value`'s array when it is a constant, else None.

    A constant is an initializer that is not also a graph input (a caller may override those), or
    the output of a Constant node with a `value` attribute.
    """
    tensor = _constant_tensor(value)
    return None if tensor is None else tensor_array(tensor)


def is_constant(value: ir.Value | None) -> bool:
    """Whether `constant_array(value)` has an array, without reading it."""
    return _constant_tensor(value) is not None


def _constant_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    if value is None:
        return None
    if value.is_initializer():
        return None if value.is_graph_input() else value.const_value
    node = value.producer()
    if node is not None and node.op_type == "Constant" and node.domain == "":
        attr = node.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            return attr.value
    return None


def sole_consumer(value: ir.Value) -> ir.Node | None:
    """The one node reading `value` (once), when nothing else reads it and it is no graph output.

    Fusing a node into its producer is only safe then: nobody else sees the intermediate value.
    """
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0].node


def attr_value(node: ir.Node, name: str, default: object = None) -> object:
    """An attribute as a plain Python value (ints, floats, str, lists), or `default`."""
    attr = node.attributes.get(name)
    return default if attr is None else attribute_value(attr)


def same_shape(a: ir.Shape | None, b: ir.Shape | None) -> bool:
    """Whether two recorded shapes are known to be equal: same rank, and each dim the same int or
    the same named symbol (two unknown dims are not known to be equal)."""
    if a is None or b is None or len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, int) or isinstance(y, int):
            if x != y:
                return False
        elif x.value is None or x.value != y.value:
            return False
    return True


def rank(value: ir.Value | None) -> int | None:
    if value is None or value.shape is None:
        return None
    return len(value.shape)


def unique_name(graph: ir.Graph, base: str) -> str:
    """`base`, or `base_1`, `base_2`, ... : a name no value in `graph` has yet."""
    taken = _names(graph)
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def _names(graph: ir.Graph) -> set[str]:
    names = {v.name for v in graph.inputs if v.name}
    names.update(graph.initializers)
    for node in graph:
        names.update(v.name for v in node.outputs if v.name)
    return names


def add_initializer(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    """A new initializer holding `array`, named after `base`."""
    name = unique_name(graph, base)
    value = ir.Value(
        name=name,
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        shape=ir.Shape(array.shape),
        const_value=ir.tensor(array, name=name),
    )
    graph.register_initializer(value)
    return value


def fused_label(nodes: Sequence[ir.Node]) -> str:
    """What a node fused from `nodes` replaced, keeping what each of them had replaced already."""
    return "+".join(n.metadata_props.get(FUSED_KEY, n.op_type) for n in nodes)


def replace_chain(graph: ir.Graph, chain: Sequence[ir.Node], new_node: ir.Node) -> None:
    """Put `new_node` in place of `chain`, a producer-to-consumer run of nodes whose last node's
    first output is the only value that outlives it; that output keeps its name, type and shape.

    `new_node` goes where the chain's last node was: every value it reads exists there.
    """
    old = chain[-1].outputs[0]
    new = new_node.outputs[0]
    new.name = old.name
    new.type = old.type
    new.shape = old.shape
    graph.insert_before(chain[-1], new_node)
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
    graph.remove(list(reversed(chain)), safe=True)


def use_ember_domain(model: ir.Model) -> None:
    """Import the ai.ember opset, which the fused ops live in."""
    model.opset_imports.setdefault(EMBER_DOMAIN, 1)  # the main graph's imports


def fusion_result(model: ir.Model, count: int) -> ir.passes.PassResult:
    """What a fusing pass returns: the model changed when it fused anything, and then it imports
    the ai.ember opset its fused ops live in."""
    if count:
        use_ember_domain(model)
    return ir.passes.PassResult(model, modified=count > 0)


def onnx_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


@dataclasses.dataclass(frozen=True)
class Activation:
    """An activation as the fused ops take it: the ONNX op's name and its attributes in order."""

    name: str
    params: tuple[float, ...] = ()

    def attributes(self) -> list[ir.Attr]:
        attrs: list[ir.Attr] = [ir.AttrString("activation", self.name)]
        if self.params:
            attrs.append(ir.AttrFloat32s("activation_params", list(self.params)))
        return attrs


def match_activation(node: ir.Node) -> Activation | None:
    """The fused-op form of `node` when it is an activation the fused ops take, else None.

    Clip qualifies only with constant bounds (attributes before opset 11, inputs since).
    """
    t = node.op_type
    if node.domain == EMBER_DOMAIN and t == "Gelu":
        return Activation("GeluTanh" if attr_value(node, "approximate") == "tanh" else "Gelu")
    if node.domain != "" or not node.inputs:
        return None
    if t in ("Relu", "Sigmoid", "Tanh", "HardSwish"):
        return Activation(t)
    if t == "LeakyRelu":
        return Activation(t, (float(attr_value(node, "alpha", 0.01)),))  # type: ignore[arg-type]
    if t == "Elu":
        return Activation(t, (float(attr_value(node, "alpha", 1.0)),))  # type: ignore[arg-type]
    if t == "HardSigmoid":
        alpha, beta = attr_value(node, "alpha", 0.2), attr_value(node, "beta", 0.5)
        return Activation(t, (float(alpha), float(beta)))  # type: ignore[arg-type]
    if t == "Gelu":
        return Activation("GeluTanh" if attr_value(node, "approximate") == "tanh" else "Gelu")
    if t == "Clip":
        bounds = [_clip_bound(node, 1, "min", -np.inf), _clip_bound(node, 2, "max", np.inf)]
        if None in bounds:
            return None
        return Activation(t, tuple(float(b) for b in bounds))  # type: ignore[arg-type]
    return None


def _clip_bound(node: ir.Node, index: int, name: str, default: float) -> float | None:
    """A Clip bound: its attribute (opset < 11), its constant input, or `default` when omitted;
    None when the input is not a constant scalar."""
    if name in node.attributes:
        return float(attr_value(node, name))  # type: ignore[arg-type]
    v = node.inputs[index] if len(node.inputs) > index else None
    if v is None or not v.name:
        return default
    a = constant_array(v)
    if a is None or a.size != 1:
        return None
    return float(a.reshape(-1)[0])
