"""A differentiable executor of ember's IR on torch: the same ONNX graph as a trainable nn.Module.

`to_torch(model)` turns an onnx_ir graph into a `GraphModule` whose float weights are
nn.Parameters, run node by node in topological order with torch ops (shape subgraphs such as
Shape -> Gather -> Concat -> Reshape run on int64 tensors, eagerly). `to_onnx_model(module, like)`
writes the trained values back into a copy of the graph. Unsupported ops fail in `to_torch`, not at
the first forward. torch is the optional extra `torch`, imported only when these are called.
Knows nothing about losses or training loops (distill.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx_ir as ir

from ember.errors import ConfigError, ExecutionError, ModelError, UnsupportedError
from ember.ir import load_model
from ember.ir.verify import topological_order

OpFn = Callable[..., Any]  # torch tensors (None for an omitted optional input) -> tensor | tuple

#: initializer inputs that are statistics or bounds, not weights: they stay buffers (never trained).
#: BatchNormalization's running mean/var are updated in train mode, as torch's BatchNorm does.
_FROZEN_INPUTS: dict[str, set[int]] = {
    "BatchNormalization": {3, 4},
    "Clip": {1, 2},
    "Pow": {1},
}
#: ops whose function takes `training=` (train mode changes what they compute)
_TRAINING_AWARE = {"BatchNormalization"}


def require_torch(what: str = "ember.distill") -> ModuleType:
    """The torch module, or a ConfigError that says how to install it."""
    try:
        import torch
    except ImportError:
        raise ConfigError(
            f"{what} needs the torch extra: pip install 'ember[torch]' (torch==2.13.0, CPU build)"
        ) from None
    return torch


def to_torch(model: ir.Model | str | Path) -> Any:
    """The ONNX graph as a trainable `torch.nn.Module` (a `GraphModule`).

    Float initializers become nn.Parameters (except BatchNorm statistics, Clip bounds, Pow
    exponents and 0-d constants, which are buffers, as are integer initializers). `forward` takes
    the graph inputs (positionally in graph order, or by name) as tensors or arrays and returns a
    dict of output name -> tensor. Every op is resolved here: an op this executor lacks is an
    UnsupportedError naming the node, before any forward.

    >>> import numpy as np, torch
    >>> from ember.zoo import model_path
    >>> module = to_torch(model_path("mnist_mlp")).eval()
    >>> module(torch.zeros(2, 784))["logits"].shape
    torch.Size([2, 10])
    """
    torch = require_torch("ember.compress.to_torch")
    if not isinstance(model, ir.Model):
        model = load_model(model)
    return _graph_module_type(torch)(model)


def to_onnx_model(module: Any, like: ir.Model) -> ir.Model:
    """A copy of `like` (the graph `module` was made from) with the module's current weights.

    Parameters and buffers (BatchNorm running statistics included) are written back into the
    initializers they came from, in the initializer's original dtype; the graph is unchanged.

    >>> from ember.ir import load_model
    >>> from ember.zoo import model_path
    >>> original = load_model(model_path("mnist_mlp"))
    >>> copy = to_onnx_model(to_torch(original), original)
    >>> copy is original, sorted(copy.graph.initializers) == sorted(original.graph.initializers)
    (False, True)
    """
    require_torch("ember.compress.to_onnx_model")
    keys = getattr(module, "initializer_keys", None)
    if keys is None:
        raise ConfigError(
            f"to_onnx_model takes a module made by to_torch, got {type(module).__name__}"
        )
    out = load_model(ir.to_proto(like), check=False)
    state = dict(module.named_parameters()) | dict(module.named_buffers())
    for name, key in keys.items():
        init = out.graph.initializers.get(name)
        if init is None or init.const_value is None:
            raise ModelError(
                f"to_onnx_model: initializer {name!r} of the module is not in the given model; "
                "pass the model the module was made from (to_torch(model))"
            )
        old = init.const_value.numpy()
        new = state[key].detach().cpu().numpy()
        if new.shape != old.shape:
            raise ModelError(
                f"to_onnx_model: initializer {name!r} has shape {list(old.shape)} in the given "
                f"model but {list(new.shape)} in the module; pass the model the module was made "
                "from"
            )
        init.const_value = ir.Tensor(np.ascontiguousarray(new.astype(old.dtype)), name=name)
    return out


# --- the module ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Step:
    """One node, resolved: the torch function and the value slots it reads and writes."""

    fn: OpFn
    inputs: tuple[int | None, ...]
    outputs: tuple[int, ...]
    where: str  # "node 'Conv_0' (Conv)", for messages
    takes_training: bool  # called with training=module.training (BatchNormalization)


_MODULE_TYPES: dict[int, type] = {}


def _graph_module_type(torch: ModuleType) -> type:
    """The GraphModule class (made once, here, because subclassing nn.Module needs torch)."""
    if id(torch) in _MODULE_TYPES:
        return _MODULE_TYPES[id(torch)]

    class GraphModule(torch.nn.Module):  # type: ignore[name-defined,misc]
        """An ONNX graph as an nn.Module; see `to_torch`."""

        def __init__(self, model: ir.Model) -> None:
            super().__init__()
            graph = model.graph
            opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
            self.input_names = [v.name or "" for v in graph.inputs]
            self.output_names = [v.name or "" for v in graph.outputs]
            # initializer name -> parameter/buffer attribute name (module names cannot hold '.').
            self.initializer_keys: dict[str, str] = {}
            slots: dict[ir.Value, int] = {}

            def slot(value: ir.Value) -> int:
                return slots.setdefault(value, len(slots))

            self._input_slots = [slot(v) for v in graph.inputs]
            frozen = _frozen_initializers(graph)
            taken: set[str] = set()
            self._initializer_slots: list[tuple[str, int]] = []  # (attribute name, slot)
            for name, value in graph.initializers.items():
                if value.const_value is None:
                    raise ModelError(f"initializer {name!r} has no data")
                array = value.const_value.numpy()
                key = _attribute_name(name, taken)
                tensor = torch.from_numpy(np.array(array))  # a writable copy
                if tensor.is_floating_point() and array.ndim > 0 and name not in frozen:
                    self.register_parameter(key, torch.nn.Parameter(tensor))
                else:
                    self.register_buffer(key, tensor)
                self.initializer_keys[name] = key
                self._initializer_slots.append((key, slot(value)))
            self._steps: list[_Step] = []
            for node in topological_order(graph):
                where = _describe(node)
                if node.domain not in ("", "ai.onnx"):
                    raise UnsupportedError(
                        f"{where}: op domain {node.domain!r} is not supported by the torch "
                        "executor (only standard ONNX ops); pass the model as exported, before "
                        "ember's optimizer fuses ops"
                    )
                maker = _MAKERS.get(node.op_type)
                if maker is None:
                    raise UnsupportedError(
                        f"{where}: op {node.op_type!r} (opset {opset}) is not supported by the "
                        f"torch executor; supported: {', '.join(sorted(_MAKERS))}"
                    )
                attrs = _Attrs(node, where)
                fn = maker(attrs, _NodeInfo(node.op_type, opset, len(node.outputs), where))
                attrs.check_all_read()
                self._steps.append(
                    _Step(
                        fn,
                        tuple(
                            slot(v) if v is not None and v.name != "" else None for v in node.inputs
                        ),
                        tuple(slot(v) for v in node.outputs),
                        where,
                        node.op_type in _TRAINING_AWARE,
                    )
                )
            missing = [v.name for v in graph.outputs if v not in slots]
            if missing:
                raise ModelError(f"graph outputs {missing} are produced by no node")
            self._output_slots = [slots[v] for v in graph.outputs]
            self._n_slots = len(slots)
            self._optional = {v.name for v in graph.inputs if v.name in graph.initializers}

        def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            feeds = dict(zip(self.input_names, args, strict=False)) | kwargs
            env: list[Any] = [None] * self._n_slots
            for key, s in self._initializer_slots:
                env[s] = getattr(self, key)
            for name, s in zip(self.input_names, self._input_slots, strict=True):
                if name in feeds:
                    x = feeds[name]
                    # A copy: arrays may be read-only views (memory-mapped data files).
                    env[s] = x if torch.is_tensor(x) else torch.from_numpy(np.array(x))
                elif name not in self._optional:
                    raise ExecutionError(
                        f"missing input {name!r}; the graph takes {', '.join(self.input_names)}"
                    )
            for step in self._steps:
                args_ = [None if s is None else env[s] for s in step.inputs]
                try:
                    if step.takes_training:
                        out = step.fn(*args_, training=self.training)
                    else:
                        out = step.fn(*args_)
                except (RuntimeError, ValueError, IndexError, TypeError) as e:
                    raise ExecutionError(f"{step.where} failed in torch: {e}") from e
                if len(step.outputs) == 1:
                    env[step.outputs[0]] = out[0] if isinstance(out, tuple) else out
                else:
                    for s, o in zip(step.outputs, out, strict=False):
                        env[s] = o
            return {n: env[s] for n, s in zip(self.output_names, self._output_slots, strict=True)}

    GraphModule.__module__ = __name__
    _MODULE_TYPES[id(torch)] = GraphModule
    return GraphModule


def _frozen_initializers(graph: ir.Graph) -> set[str]:
    frozen = set()
    for node in graph:
        for i in _FROZEN_INPUTS.get(node.op_type, ()):
            if i < len(node.inputs) and node.inputs[i] is not None:
                frozen.add(node.inputs[i].name)  # type: ignore[union-attr]
    return {name for name in frozen if name}


def _attribute_name(name: str, taken: set[str]) -> str:
    key = "w_" + re.sub(r"\W", "_", name)
    while key in taken:
        key += "_"
    taken.add(key)
    return key


def _describe(node: ir.Node) -> str:
    return f"node {node.name or '<unnamed>'!r} ({node.op_type})"


# --- attributes ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _NodeInfo:
    op_type: str
    opset: int
    n_outputs: int
    where: str


class _Attrs:
    """A node's attributes; any the op maker did not read is an UnsupportedError (never ignored)."""

    def __init__(self, node: ir.Node, where: str) -> None:
        self._attrs = dict(node.attributes)
        self._read: set[str] = set()
        self.where = where

    def get(self, name: str, default: Any = None) -> Any:
        self._read.add(name)
        attr = self._attrs.get(name)
        if attr is None:
            return default
        value = attr.value
        if isinstance(value, ir.TensorProtocol):
            return value.numpy()
        if isinstance(value, Sequence) and not isinstance(value, str):
            return list(value)
        return value

    def has(self, name: str) -> bool:
        return name in self._attrs

    def unsupported(self, what: str) -> UnsupportedError:
        return UnsupportedError(f"{self.where}: {what} is not supported by the torch executor")

    def check_all_read(self) -> None:
        unread = sorted(set(self._attrs) - self._read)
        if unread:
            raise self.unsupported(f"attribute(s) {', '.join(unread)}")


# --- ops -----------------------------------------------------------------------------------------
# Each maker reads the node's attributes once and returns the function run at every forward.

_MAKERS: dict[str, Callable[[_Attrs, _NodeInfo], OpFn]] = {}


def _maker(*op_types: str) -> Callable[[Callable[[_Attrs, _NodeInfo], OpFn]], Any]:
    def register(fn: Callable[[_Attrs, _NodeInfo], OpFn]) -> Any:
        for op_type in op_types:
            _MAKERS[op_type] = fn
        return fn

    return register


def _ints(t: Any) -> list[int]:
    """A shape/axes/index tensor (or None) as Python ints."""
    return [int(v) for v in t.reshape(-1).tolist()]


def _torch_dtype(onnx_type: int) -> Any:
    import torch

    np_dtype = ir.DataType(onnx_type).numpy()
    return torch.from_numpy(np.empty(0, np_dtype)).dtype


def _simple(fn_of_torch: Callable[[Any], OpFn]) -> Callable[[_Attrs, _NodeInfo], OpFn]:
    def make(a: _Attrs, info: _NodeInfo) -> OpFn:
        import torch

        return fn_of_torch(torch)

    return make


_UNARY: dict[str, Callable[[Any], OpFn]] = {
    "Identity": lambda t: lambda x: x,
    "Relu": lambda t: t.relu,
    "Sigmoid": lambda t: t.sigmoid,
    "Tanh": lambda t: t.tanh,
    "Exp": lambda t: t.exp,
    "Log": lambda t: t.log,
    "Sqrt": lambda t: t.sqrt,
    "Neg": lambda t: t.neg,
    "Abs": lambda t: t.abs,
    "Erf": lambda t: t.erf,
    "Reciprocal": lambda t: t.reciprocal,
    "Floor": lambda t: t.floor,
    "Ceil": lambda t: t.ceil,
    "Sin": lambda t: t.sin,
    "Cos": lambda t: t.cos,
    "Softplus": lambda t: t.nn.functional.softplus,
    "Softsign": lambda t: t.nn.functional.softsign,
    "Not": lambda t: t.logical_not,
    "IsNaN": lambda t: t.isnan,
    "Sign": lambda t: t.sign,
}
for _op, _fn in _UNARY.items():
    _MAKERS[_op] = _simple(_fn)


def _binary(torch_fn: Callable[[Any], OpFn]) -> Callable[[_Attrs, _NodeInfo], OpFn]:
    def make(a: _Attrs, info: _NodeInfo) -> OpFn:
        import torch

        fn = torch_fn(torch)

        def run(x: Any, y: Any) -> Any:
            out = fn(x, y)
            # ONNX types both operands alike; a 0-d operand must not change the result's dtype.
            return out if out.dtype == x.dtype or out.dtype == torch.bool else out.to(x.dtype)

        return run

    return make


_BINARY: dict[str, Callable[[Any], OpFn]] = {
    "Add": lambda t: t.add,
    "Sub": lambda t: t.sub,
    "Mul": lambda t: t.mul,
    "Pow": lambda t: t.pow,
    "Equal": lambda t: t.eq,
    "Less": lambda t: t.lt,
    "LessOrEqual": lambda t: t.le,
    "Greater": lambda t: t.gt,
    "GreaterOrEqual": lambda t: t.ge,
    "And": lambda t: t.logical_and,
    "Or": lambda t: t.logical_or,
    "Xor": lambda t: t.logical_xor,
}
for _op, _fn in _BINARY.items():
    _MAKERS[_op] = _binary(_fn)


@_maker("Div")
def _div(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    def div(x: Any, y: Any) -> Any:
        if x.is_floating_point():
            return torch.div(x, y).to(x.dtype)
        return torch.div(x, y, rounding_mode="trunc")  # integer Div truncates (C semantics)

    return div


@_maker("Max", "Min", "Sum", "Mean")
def _variadic(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    op = info.op_type
    pairs: dict[str, Any] = {
        "Max": torch.maximum,
        "Min": torch.minimum,
        "Sum": torch.add,
        "Mean": torch.add,
    }
    pair = pairs[op]

    def run(*xs: Any) -> Any:
        out = xs[0]
        for x in xs[1:]:
            out = pair(out, x)
        return out / len(xs) if op == "Mean" else out

    return run


@_maker("Where")
def _where(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    return lambda c, x, y: torch.where(c, x, y)


@_maker("LeakyRelu")
def _leaky_relu(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    alpha = a.get("alpha", 0.01)
    return lambda x: torch.nn.functional.leaky_relu(x, alpha)


@_maker("Elu")
def _elu(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    alpha = a.get("alpha", 1.0)
    return lambda x: torch.nn.functional.elu(x, alpha)


@_maker("HardSigmoid")
def _hard_sigmoid(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
    return lambda x: torch.clamp(alpha * x + beta, 0.0, 1.0)


@_maker("HardSwish")
def _hard_swish(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    return lambda x: x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)


@_maker("Gelu")
def _gelu(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    approximate = a.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise a.unsupported(f"approximate={approximate!r}")
    return lambda x: torch.nn.functional.gelu(x, approximate=approximate)


@_maker("PRelu")
def _prelu(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    return lambda x, slope: torch.where(x >= 0, x, x * slope)


@_maker("Clip")
def _clip(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    lo_attr, hi_attr = a.get("min"), a.get("max")  # opset < 11: attributes; later: inputs

    def clip(x: Any, lo: Any = None, hi: Any = None) -> Any:
        lo = lo if lo is not None else lo_attr
        hi = hi if hi is not None else hi_attr
        if lo is not None:
            x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype).reshape(()))
        if hi is not None:
            x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype).reshape(()))
        return x

    return clip


@_maker("Cast")
def _cast(a: _Attrs, info: _NodeInfo) -> OpFn:
    dtype = _torch_dtype(a.get("to"))
    a.get("saturate")  # only matters for float8 targets, which torch's CPU casts do not reach
    return lambda x: x.to(dtype)


@_maker("CastLike")
def _cast_like(a: _Attrs, info: _NodeInfo) -> OpFn:
    a.get("saturate")
    return lambda x, like: x.to(like.dtype)


@_maker("Constant")
def _constant(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    value = None
    for name, dtype in [
        ("value", None),
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ]:
        v = a.get(name)
        if v is not None:
            value = np.array(v, dtype=dtype)
    for name in ("sparse_value", "value_string", "value_strings"):
        if a.get(name) is not None:
            raise a.unsupported(f"attribute {name}")
    if value is None:
        raise a.unsupported("a Constant without a value")
    tensor = torch.from_numpy(np.array(value))
    return lambda: tensor


@_maker("ConstantOfShape")
def _constant_of_shape(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    value = a.get("value")
    fill = torch.from_numpy(np.zeros(1, np.float32) if value is None else np.array(value))
    return lambda shape: fill.reshape(()).expand(_ints(shape)).clone()


@_maker("Shape")
def _shape(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    start, end = a.get("start", 0), a.get("end")
    return lambda x: torch.tensor(list(x.shape)[start:end], dtype=torch.int64)


@_maker("Size")
def _size(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    return lambda x: torch.tensor(x.numel(), dtype=torch.int64)


@_maker("Reshape")
def _reshape(a: _Attrs, info: _NodeInfo) -> OpFn:
    allowzero = a.get("allowzero", 0)

    def reshape(x: Any, shape: Any) -> Any:
        dims = _ints(shape)
        if not allowzero:  # 0 copies the input's dim at that position
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return x.reshape(dims)

    return reshape


@_maker("Flatten")
def _flatten(a: _Attrs, info: _NodeInfo) -> OpFn:
    axis = a.get("axis", 1)

    def flatten(x: Any) -> Any:
        k = axis if axis >= 0 else axis + x.dim()  # axis == rank is allowed: (N, 1)
        return x.reshape(math.prod(x.shape[:k]), math.prod(x.shape[k:]))

    return flatten


@_maker("Transpose")
def _transpose(a: _Attrs, info: _NodeInfo) -> OpFn:
    perm = a.get("perm")
    return lambda x: x.permute(perm if perm is not None else list(reversed(range(x.dim()))))


def _axes(a: _Attrs, info: _NodeInfo, from_input_at: int) -> Callable[[Any], list[int] | None]:
    """Axes from the attribute (older opsets) or from the input (opset >= from_input_at)."""
    attr = a.get("axes") if info.opset < from_input_at else None
    return lambda t: _ints(t) if t is not None else attr


@_maker("Squeeze")
def _squeeze(a: _Attrs, info: _NodeInfo) -> OpFn:
    axes_of = _axes(a, info, 13)

    def squeeze(x: Any, axes: Any = None) -> Any:
        dims = axes_of(axes)
        if dims is None:
            return x.squeeze()
        return x.squeeze(tuple(d % x.dim() for d in dims)) if dims else x

    return squeeze


@_maker("Unsqueeze")
def _unsqueeze(a: _Attrs, info: _NodeInfo) -> OpFn:
    axes_of = _axes(a, info, 13)

    def unsqueeze(x: Any, axes: Any = None) -> Any:
        dims = axes_of(axes) or []
        rank = x.dim() + len(dims)
        for d in sorted(d % rank for d in dims):
            x = x.unsqueeze(d)
        return x

    return unsqueeze


@_maker("Concat")
def _concat(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    axis = a.get("axis")
    return lambda *xs: torch.cat([x for x in xs if x is not None], dim=axis)


@_maker("Split")
def _split(a: _Attrs, info: _NodeInfo) -> OpFn:
    axis = a.get("axis", 0)
    split_attr = a.get("split")
    a.get("num_outputs")  # the output count is the node's

    def split(x: Any, sizes: Any = None) -> tuple[Any, ...]:
        parts = _ints(sizes) if sizes is not None else split_attr
        if parts is None:  # equal parts, the last one smaller when uneven (opset 18)
            dim = x.shape[axis]
            chunk = -(-dim // info.n_outputs)
            parts = [min(chunk, dim - i * chunk) for i in range(info.n_outputs)]
        return tuple(x.split(parts, dim=axis))

    return split


@_maker("Slice")
def _slice(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    if info.opset < 10:
        raise a.unsupported("Slice before opset 10 (attributes starts/ends)")

    def slice_(x: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
        s, e = _ints(starts), _ints(ends)
        ax = _ints(axes) if axes is not None else list(range(len(s)))
        st = _ints(steps) if steps is not None else [1] * len(s)
        for start, end, axis, step in zip(s, e, ax, st, strict=True):
            axis %= x.dim()
            # Python's slice clamps out-of-range starts/ends exactly as ONNX specifies.
            idx = range(*slice(start, end, step).indices(x.shape[axis]))
            if step == 1:
                x = x.narrow(axis, idx.start, len(idx))
            else:
                x = x.index_select(axis, torch.tensor(list(idx), dtype=torch.int64))
        return x

    return slice_


@_maker("Gather")
def _gather(a: _Attrs, info: _NodeInfo) -> OpFn:
    axis = a.get("axis", 0)

    def gather(x: Any, indices: Any) -> Any:
        k = axis % x.dim()
        dim = x.shape[k]
        idx = indices.long()
        idx = idx.where(idx >= 0, idx + dim)
        out = x.index_select(k, idx.reshape(-1))
        return out.reshape((*x.shape[:k], *indices.shape, *x.shape[k + 1 :]))

    return gather


@_maker("GatherElements")
def _gather_elements(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    axis = a.get("axis", 0)

    def gather_elements(x: Any, indices: Any) -> Any:
        dim = x.shape[axis]
        idx = indices.long()
        return torch.gather(x, axis, idx.where(idx >= 0, idx + dim))

    return gather_elements


@_maker("GatherND")
def _gather_nd(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    batch_dims = a.get("batch_dims", 0)

    def gather_nd(x: Any, indices: Any) -> Any:
        b, k = batch_dims, indices.shape[-1]
        batch = math.prod(x.shape[:b])
        data = x.reshape((batch, *x.shape[b:]))  # (batch, *rest)
        idx = indices.long().reshape(batch, -1, k)  # (batch, M, k)
        dims = torch.tensor(data.shape[1 : 1 + k], dtype=torch.int64)
        idx = idx.where(idx >= 0, idx + dims)
        rows = torch.arange(batch).reshape(batch, 1).expand(batch, idx.shape[1])
        out = data[(rows, *idx.unbind(-1))]  # (batch, M, *x.shape[b + k:])
        return out.reshape((*indices.shape[:-1], *x.shape[b + k :]))

    return gather_nd


@_maker("Expand")
def _expand(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    def expand(x: Any, shape: Any) -> Any:
        # ONNX Expand broadcasts both ways: a 1 in `shape` keeps the input's dim.
        return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))

    return expand


@_maker("Tile")
def _tile(a: _Attrs, info: _NodeInfo) -> OpFn:
    return lambda x, repeats: x.repeat(_ints(repeats))


@_maker("Range")
def _range(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    def range_(start: Any, limit: Any, delta: Any) -> Any:
        return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)

    return range_


@_maker("Pad")
def _pad(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    mode = a.get("mode", "constant")
    pads_attr, value_attr = a.get("pads"), a.get("value", 0.0)  # opset < 11
    if mode not in ("constant", "reflect", "edge"):
        raise a.unsupported(f"mode={mode!r}")

    def pad(x: Any, pads: Any = None, value: Any = None, axes: Any = None) -> Any:
        p = _ints(pads) if pads is not None else pads_attr
        ax = [d % x.dim() for d in _ints(axes)] if axes is not None else list(range(x.dim()))
        n = len(ax)
        before, after = dict(zip(ax, p[:n], strict=True)), dict(zip(ax, p[n:], strict=True))
        flat: list[int] = []  # torch wants (last dim first) [before, after] pairs
        for d in reversed(range(x.dim())):
            flat += [before.get(d, 0), after.get(d, 0)]
        fill = value.item() if value is not None else value_attr
        if mode == "constant":
            return torch.nn.functional.pad(x, flat, value=fill)
        while flat[-2:] == [0, 0] and len(flat) > 2:  # torch's reflect/replicate pad trailing dims
            flat = flat[:-2]
        mode_ = "reflect" if mode == "reflect" else "replicate"
        return torch.nn.functional.pad(x, flat, mode=mode_)

    return pad


# --- reductions, normalization, softmax -----------------------------------------------------------


_REDUCE: dict[str, tuple[int, Callable[[Any, Any, list[int], bool], Any]]] = {
    # op: (first opset that takes axes as an input, function(torch, x, axes, keepdims))
    "ReduceMean": (18, lambda t, x, d, k: x.mean(dim=d, keepdim=k)),
    "ReduceSum": (13, lambda t, x, d, k: x.sum(dim=d, keepdim=k)),
    "ReduceMax": (18, lambda t, x, d, k: t.amax(x, dim=d, keepdim=k)),
    "ReduceMin": (18, lambda t, x, d, k: t.amin(x, dim=d, keepdim=k)),
    "ReduceProd": (18, lambda t, x, d, k: _prod(x, d, k)),
    "ReduceL2": (18, lambda t, x, d, k: (x * x).sum(dim=d, keepdim=k).sqrt()),
    "ReduceSumSquare": (18, lambda t, x, d, k: (x * x).sum(dim=d, keepdim=k)),
}


def _prod(x: Any, dims: list[int], keepdim: bool) -> Any:
    for d in sorted(dims, reverse=True):
        x = x.prod(dim=d, keepdim=keepdim)
    return x


def _reduce_maker(op: str) -> Callable[[_Attrs, _NodeInfo], OpFn]:
    input_opset, fn = _REDUCE[op]

    def make(a: _Attrs, info: _NodeInfo) -> OpFn:
        import torch

        axes_of = _axes(a, info, input_opset)
        keepdims = bool(a.get("keepdims", 1))
        noop_with_empty_axes = bool(a.get("noop_with_empty_axes", 0))

        def reduce(x: Any, axes: Any = None) -> Any:
            dims = axes_of(axes)
            if not dims:
                if noop_with_empty_axes:
                    return x
                dims = list(range(x.dim()))
            return fn(torch, x, [d % x.dim() for d in dims], keepdims)

        return reduce

    return make


for _op in _REDUCE:
    _MAKERS[_op] = _reduce_maker(_op)


@_maker("ArgMax", "ArgMin")
def _arg_max(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    axis, keepdims = a.get("axis", 0), bool(a.get("keepdims", 1))
    if a.get("select_last_index", 0):
        raise a.unsupported("select_last_index=1")
    fn = torch.argmax if info.op_type == "ArgMax" else torch.argmin
    return lambda x: fn(x, dim=axis, keepdim=keepdims)


@_maker("Softmax", "LogSoftmax")
def _softmax(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    log = info.op_type == "LogSoftmax"
    fn = torch.log_softmax if log else torch.softmax
    if info.opset >= 13:
        axis = a.get("axis", -1)
        return lambda x: fn(x, dim=axis)
    axis = a.get("axis", 1)

    def softmax_2d(x: Any) -> Any:  # before opset 13: over the input flattened at `axis`
        k = axis % x.dim()
        flat = x.reshape(math.prod(x.shape[:k]), -1)
        return fn(flat, dim=1).reshape(x.shape)

    return softmax_2d


@_maker("BatchNormalization")
def _batch_norm(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    eps = a.get("epsilon", 1e-5)
    momentum = a.get("momentum", 0.9)  # ONNX: running = running * momentum + batch * (1 - momentum)
    if a.get("training_mode", 0) or info.n_outputs > 1:
        raise a.unsupported("training-mode BatchNormalization (extra outputs)")
    a.get("spatial")  # opset < 9: 1 (per channel) is the only form exporters write

    def batch_norm(
        x: Any, scale: Any, bias: Any, mean: Any, var: Any, *, training: bool = False
    ) -> Any:
        # In train mode (module.train()) the batch's statistics normalize and update the running
        # ones in place, as torch's own BatchNorm layers do when fine-tuning.
        return torch.nn.functional.batch_norm(
            x, mean, var, scale, bias, training=training, momentum=1 - momentum, eps=eps
        )

    return batch_norm


@_maker("LayerNormalization")
def _layer_norm(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    axis, eps = a.get("axis", -1), a.get("epsilon", 1e-5)
    if a.get("stash_type", 1) != 1:
        raise a.unsupported("stash_type other than float32")
    if info.n_outputs > 1:
        raise a.unsupported("LayerNormalization's Mean/InvStdDev outputs")

    def layer_norm(x: Any, scale: Any, bias: Any = None) -> Any:
        shape = x.shape[axis % x.dim() :]
        return torch.nn.functional.layer_norm(
            x, shape, scale.expand(shape), None if bias is None else bias.expand(shape), eps
        )

    return layer_norm


@_maker("Dropout")
def _dropout(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    a.get("seed")
    a.get("ratio")  # opset < 12

    # Inference semantics always: the graph trains as it runs (no dropout noise added).
    def dropout(x: Any, ratio: Any = None, training_mode: Any = None) -> Any:
        if training_mode is not None and bool(training_mode.item()):
            raise ExecutionError(f"{info.where}: training_mode=True Dropout is not supported")
        return (x, torch.ones_like(x, dtype=torch.bool)) if info.n_outputs > 1 else x

    return dropout


# --- linear algebra, convolution, pooling ---------------------------------------------------------


@_maker("MatMul")
def _matmul(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    return torch.matmul


@_maker("Gemm")
def _gemm(a: _Attrs, info: _NodeInfo) -> OpFn:
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    trans_a, trans_b = a.get("transA", 0), a.get("transB", 0)

    def gemm(x: Any, w: Any, c: Any = None) -> Any:
        y = (x.t() if trans_a else x) @ (w.t() if trans_b else w)
        if alpha != 1.0:
            y = y * alpha
        if c is not None:
            y = y + (c * beta if beta != 1.0 else c)
        return y

    return gemm


def _spatial_pads(
    a: _Attrs, kernel: Callable[[Any], list[int]], strides: list[int] | None, dilations: Any
) -> Callable[[Any, Any], list[int]]:
    """pads [x1_begin, x2_begin, ..., x1_end, x2_end, ...] for an input, auto_pad resolved."""
    auto_pad = a.get("auto_pad", "NOTSET")
    pads = a.get("pads")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise a.unsupported(f"auto_pad={auto_pad!r}")

    def resolve(x: Any, w: Any) -> list[int]:
        k = kernel(w)
        n = len(k)
        if auto_pad == "VALID":
            return [0] * 2 * n
        if auto_pad == "NOTSET":
            return list(pads) if pads is not None else [0] * 2 * n
        s = strides or [1] * n
        d = dilations or [1] * n
        begin, end = [], []
        for i in range(n):
            size = x.shape[2 + i]
            out = -(-size // s[i])
            total = max(0, (out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - size)
            small, large = total // 2, total - total // 2
            begin.append(large if auto_pad == "SAME_LOWER" else small)
            end.append(small if auto_pad == "SAME_LOWER" else large)
        return begin + end

    return resolve


def _torch_padding(pads: list[int]) -> tuple[list[int], list[int] | None]:
    """(symmetric padding for the op, explicit F.pad list or None when symmetric)."""
    n = len(pads) // 2
    begin, end = pads[:n], pads[n:]
    if begin == end:
        return begin, None
    flat: list[int] = []
    for i in reversed(range(n)):
        flat += [begin[i], end[i]]
    return [0] * n, flat


@_maker("Conv")
def _conv(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    F = torch.nn.functional
    strides, dilations, group = a.get("strides"), a.get("dilations"), a.get("group", 1)
    kernel_shape = a.get("kernel_shape")
    pads_of = _spatial_pads(a, lambda w: kernel_shape or list(w.shape[2:]), strides, dilations)

    def conv(x: Any, w: Any, b: Any = None) -> Any:
        n = w.dim() - 2
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(n)
        if fn is None:
            raise ExecutionError(f"{info.where}: {n}-D convolution is not supported")
        padding, explicit = _torch_padding(pads_of(x, w))
        if explicit is not None:
            x = F.pad(x, explicit)
        return fn(x, w, b, strides or 1, padding, dilations or 1, group)

    return conv


@_maker("MaxPool", "AveragePool")
def _pool(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    F = torch.nn.functional
    is_max = info.op_type == "MaxPool"
    kernel = a.get("kernel_shape")
    strides, dilations = a.get("strides"), a.get("dilations")
    ceil_mode = bool(a.get("ceil_mode", 0))
    count_include_pad = bool(a.get("count_include_pad", 0))
    if a.get("storage_order", 0):
        raise a.unsupported("storage_order=1")
    if info.n_outputs > 1:
        raise a.unsupported("MaxPool's Indices output")
    if not is_max and dilations and any(d != 1 for d in dilations):
        raise a.unsupported("dilated AveragePool")
    pads_of = _spatial_pads(a, lambda w: kernel, strides, dilations)
    n = len(kernel)

    def pool(x: Any) -> Any:
        padding, explicit = _torch_padding(pads_of(x, None))
        if explicit is not None:
            if not is_max:
                raise ExecutionError(f"{info.where}: asymmetric AveragePool padding")
            x = F.pad(x, explicit, value=-math.inf)
        if is_max:
            max_pool: OpFn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
            return max_pool(x, kernel, strides or kernel, padding, dilations or 1, ceil_mode)
        avg_pool: OpFn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
        return avg_pool(x, kernel, strides or kernel, padding, ceil_mode, count_include_pad)

    return pool


@_maker("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(a: _Attrs, info: _NodeInfo) -> OpFn:
    import torch

    is_max = info.op_type == "GlobalMaxPool"

    def pool(x: Any) -> Any:
        dims = list(range(2, x.dim()))
        return torch.amax(x, dim=dims, keepdim=True) if is_max else x.mean(dim=dims, keepdim=True)

    return pool


def supported_ops() -> list[str]:
    """The ONNX op types the torch executor runs.

    >>> "Conv" in supported_ops() and "MatMul" in supported_ops()
    True
    """
    return sorted(_MAKERS)
