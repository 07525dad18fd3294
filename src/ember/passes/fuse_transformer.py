"""Level-2 passes for transformers: fold Transposes, fuse decomposed LayerNorm and GELU, BERT-style
attention, MatMul+Add(bias) and the activation after it into the ai.ember ops.

The patterns are the ones torch's exporters write: TorchScript at opset 14 decomposes everything,
the dynamo exporter keeps LayerNormalization and Gelu and spells Reshape targets as shape subgraphs.
Attention needs recorded shapes (ember.ir.infer_shapes) unless every Reshape target is a constant.
Main graph only. A fusion requires that nothing outside its pattern reads a value it removes.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
import onnx_ir as ir

from ember.ops.registry import EMBER_DOMAIN
from ember.passes.rewrite import (
    FUSED_KEY,
    add_initializer,
    attr_value,
    constant_array,
    fused_label,
    fusion_result,
    match_activation,
    onnx_opset,
    rank,
    sole_consumer,
    use_ember_domain,
)

#: A dim as the matchers compare them: an int, a symbol's name, or None (unknown).
Dim = int | str | None

# Relative tolerance for the constants of GELU (sqrt(2), sqrt(2/pi), 0.044715, 0.5, 1): exporters
# write them rounded to float32 or to a few decimals.
_CONST_RTOL = 1e-5


# --- graph helpers -------------------------------------------------------------------------------


def _is(node: ir.Node | None, op_type: str, domain: str = "") -> bool:
    return node is not None and node.op_type == op_type and node.domain == domain


def _producer(value: ir.Value | None, op_type: str, domain: str = "") -> ir.Node | None:
    """The node computing `value` when it is an `op_type` node, else None."""
    node = value.producer() if value is not None else None
    return node if _is(node, op_type, domain) else None


def _consumer(value: ir.Value, op_type: str) -> ir.Node | None:
    """The one node reading `value` (once) when it is an `op_type` node and `value` is no graph
    output, else None."""
    node = sole_consumer(value)
    return node if _is(node, op_type) else None


def _perm(node: ir.Node) -> list[int] | None:
    perm = attr_value(node, "perm")
    return None if perm is None else [int(p) for p in perm]  # type: ignore[attr-defined]


def _transpose(value: ir.Value | None, perm: Sequence[int]) -> ir.Node | None:
    """The Transpose with exactly `perm` computing `value`, else None."""
    node = _producer(value, "Transpose")
    return node if node is not None and _perm(node) == list(perm) else None


def _scalar(value: ir.Value | None, max_rank: int = 1) -> float | None:
    """A numeric constant holding one number, of rank <= `max_rank` (so that broadcasting it adds
    no axes to what it meets), as a float; else None."""
    a = constant_array(value)
    if a is None or a.size != 1 or a.ndim > max_rank or a.dtype.kind not in "fiu":
        return None
    return float(a.reshape(-1)[0])


def _is_scalar(value: ir.Value | None, want: float, max_rank: int = 1) -> bool:
    c = _scalar(value, max_rank)
    return c is not None and math.isclose(c, want, rel_tol=_CONST_RTOL)


def _other(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """The other input of a binary node that reads `value` once."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is value and b is not value:
        return b
    if b is value and a is not value:
        return a
    return None


def _max_rank(x: ir.Value) -> int:
    """The rank a constant meeting `x` may have without adding axes (1 when x's rank is unknown)."""
    r = rank(x)
    return 1 if r is None else r


def _feeds_only(value: ir.Value, readers: Sequence[ir.Node]) -> bool:
    """Whether `value` is read by exactly `readers` (a node listed twice reads it twice) and is no
    graph output."""
    if value.is_graph_output():
        return False
    return sorted(id(u.node) for u in value.uses()) == sorted(map(id, readers))


def _remove_dead(graph: ir.Graph, nodes: Iterable[ir.Node]) -> None:
    """Remove `nodes`, then their producers, as far as nothing reads their outputs any more;
    initializers that only they read go too."""
    work = list(nodes)
    while work:
        node = work.pop()
        if node.graph is not graph:
            continue
        if any(v.uses() or v.is_graph_output() for v in node.outputs):
            continue
        inputs = [v for v in node.inputs if v is not None]
        graph.remove(node, safe=True)
        for v in inputs:
            producer = v.producer()
            if producer is not None:
                work.append(producer)
            elif (
                v.name is not None
                and graph.initializers.get(v.name) is v
                and not v.uses()
                and not v.is_graph_input()
                and not v.is_graph_output()
            ):
                graph.initializers.pop(v.name)


def _replace(
    graph: ir.Graph, old: ir.Value, new_nodes: Sequence[ir.Node], removed: Iterable[ir.Node]
) -> None:
    """Put `new_nodes` just before the node computing `old`; the last new node's first output takes
    over `old` (readers, name, type, shape). Then drop `removed` and what only they read.

    Every value the new nodes read must exist before `old`'s producer: true for a pattern whose
    inputs all feed nodes that come before its last one.
    """
    last = old.producer()
    assert last is not None
    new = new_nodes[-1].outputs[0]
    graph.insert_before(last, new_nodes)
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
    name = old.name
    new.type, new.shape = old.type, old.shape
    _remove_dead(graph, [last, *removed])
    new.name = name  # only now: while the old value lived, the name was taken


def _constant_like(graph: ir.Graph, value: ir.Value, array: np.ndarray, base: str) -> ir.Value:
    """`value` itself when it is a constant of exactly `array`'s shape and dtype, else a new
    initializer holding `array`."""
    held = constant_array(value)
    if held is not None and held.shape == array.shape and held.dtype == array.dtype:
        return value
    return add_initializer(graph, base, np.ascontiguousarray(array))


# --- 1. Transpose folding ------------------------------------------------------------------------


class FoldTransposesPass(ir.passes.InPlacePass):
    """Transpose of a constant -> a transposed initializer (a MatMul then reads pre-transposed
    weights); Transpose of a Transpose -> one Transpose with the composed perm, or nothing when they
    cancel; an identity Transpose -> nothing. A Transpose computing a graph output stays.

    NOTE: a constant that something else reads too is copied, not moved: a weight shared by a Gather
    and a transposed MatMul (tied embeddings) is then stored twice, which beats transposing it on
    every run.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        count = 0
        for node in list(graph):
            if node.graph is graph and _is(node, "Transpose") and _fold_transpose(graph, node):
                count += 1
        return ir.passes.PassResult(model, modified=count > 0)


def _fold_transpose(graph: ir.Graph, node: ir.Node) -> bool:
    x, y = node.inputs[0], node.outputs[0]
    if x is None:
        return False
    # A graph output keeps its producer (and with it its name): it may change, never vanish.
    keep = y.is_graph_output()
    perm = _perm(node)
    array = constant_array(x)
    if array is not None and not keep:
        folded = np.ascontiguousarray(np.transpose(array, perm))
        value = add_initializer(graph, f"{x.name or 'constant'}_transposed", folded)
        ir.convenience.replace_all_uses_with(y, value)
        _remove_dead(graph, [node])
        return True
    if perm is None:  # the default reverses the axes: a rank is needed to compose it
        r = rank(x)
        if r is None:
            return False
        perm = list(reversed(range(r)))
    if perm == list(range(len(perm))) and not keep:
        ir.convenience.replace_all_uses_with(y, x)
        _remove_dead(graph, [node])
        return True
    inner = _producer(x, "Transpose")
    if inner is None or inner.inputs[0] is None or perm == list(range(len(perm))):
        return False
    inner_perm = _perm(inner) or list(reversed(range(len(perm))))
    if len(inner_perm) != len(perm):
        return False
    # y[i] = x[perm[i]] = src[inner_perm[perm[i]]]
    composed = [inner_perm[p] for p in perm]
    src = inner.inputs[0]
    if composed == list(range(len(composed))) and not keep:
        ir.convenience.replace_all_uses_with(y, src)
        _remove_dead(graph, [node])
    else:
        node.replace_input_with(0, src)
        node.attributes["perm"] = ir.AttrInt64s("perm", composed)
        _remove_dead(graph, [inner])  # unless something else reads it
    return True


# --- 2. MatMul + Add(bias) -> Gemm / FusedMatMul; + activation -----------------------------------


def _constant_weight(value: ir.Value | None) -> np.ndarray | None:
    """A constant 2-D float matrix (MatMul's B), else None."""
    w = constant_array(value)
    return w if w is not None and w.ndim == 2 and w.dtype.kind == "f" else None


class FuseMatMulBiasPass(ir.passes.InPlacePass):
    """MatMul(A, W) -> Add(bias), W a constant [K, N] and bias a constant of N values (or one) along
    the last axis, the MatMul's output read by the Add alone: Gemm(A, W, bias) when A is known to be
    2-D, else ai.ember FusedMatMul(A, W, bias[N]) (any rank of A, ONNX MatMul broadcasting).

    >>> import onnx.parser
    >>> m = ir.from_proto(onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17]>
    ...     g (float[3, 1, 2] x) => (float[3, 1, 2] y)
    ...       <float[2, 2] w = {1, 2, 3, 4}, float[2] b = {1, 1}>
    ...     { h = MatMul(x, w)
    ...       y = Add(h, b) }'''))
    >>> FuseMatMulBiasPass()(m).modified
    True
    >>> [(n.op_type, n.metadata_props["ember.fused"]) for n in m.graph]
    [('FusedMatMul', 'MatMul+Add')]
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        gemm_ok = onnx_opset(model) >= 7  # Gemm broadcasts C since opset 7
        count = fused = 0
        for mm in list(graph):
            if mm.graph is not graph or not _is(mm, "MatMul"):
                continue
            new = _fuse_bias(graph, mm, gemm_ok=gemm_ok)
            if new is not None:
                count += 1
                fused += new.domain == EMBER_DOMAIN
        if fused:
            use_ember_domain(model)
        return ir.passes.PassResult(model, modified=count > 0)


def _fuse_bias(graph: ir.Graph, mm: ir.Node, *, gemm_ok: bool) -> ir.Node | None:
    a, y = mm.inputs[0], mm.outputs[0]
    w = _constant_weight(mm.inputs[1])
    add = _consumer(y, "Add")
    if a is None or w is None or add is None:
        return None
    bias = _other(add, y)
    b = constant_array(bias)
    n = w.shape[1]
    if bias is None or b is None or b.dtype != w.dtype or b.size not in (1, n):
        return None
    if b.ndim > 1 and any(d != 1 for d in b.shape[:-1]):
        return None  # not along the last axis
    # The bias may add no axes: MatMul(A, W) has max(rank A, 2) of them, or 1 when A is 1-D.
    a_rank = rank(a)
    out_rank = 1 if a_rank is None or a_rank == 1 else max(a_rank, 2)
    if b.ndim > out_rank:
        return None
    vector = np.broadcast_to(b.reshape(-1), (n,))
    bias_vector = _constant_like(graph, bias, vector, f"{bias.name or 'bias'}_vector")
    meta = {FUSED_KEY: fused_label([mm, add])}
    inputs = [a, mm.inputs[1], bias_vector]
    if a_rank == 2 and gemm_ok:
        new = ir.node("Gemm", inputs, name=mm.name, metadata_props=meta)
    else:
        new = ir.node("FusedMatMul", inputs, domain=EMBER_DOMAIN, name=mm.name, metadata_props=meta)
    _replace(graph, add.outputs[0], [new], [add, mm])
    return new


class FuseMatMulActivationPass(ir.passes.InPlacePass):
    """FusedMatMul or FusedGemm without an activation, Gemm, or MatMul with a constant 2-D B, whose
    output feeds an activation alone (Relu, Gelu of ONNX or ai.ember, Clip with constant bounds...):
    the activation becomes the fused op's `activation` ("Gelu" for erf GELU, "GeluTanh")."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        count = 0
        for node in list(graph):
            if node.graph is not graph or not node.outputs:
                continue
            y = node.outputs[0]
            act_node = sole_consumer(y)
            act = match_activation(act_node) if act_node is not None else None
            if act is None or act_node is None or act_node.inputs[0] is not y:
                continue
            if _is(node, "FusedMatMul", EMBER_DOMAIN) or _is(node, "FusedGemm", EMBER_DOMAIN):
                if attr_value(node, "activation", ""):
                    continue
                op_type = node.op_type
            elif _is(node, "Gemm"):
                op_type = "FusedGemm"
            elif _is(node, "MatMul") and _constant_weight(node.inputs[1]) is not None:
                op_type = "FusedMatMul"
            else:
                continue
            attrs = {a.name: a for a in node.attributes.values()}
            attrs.update({a.name: a for a in act.attributes()})
            new = ir.Node(
                EMBER_DOMAIN,
                op_type,
                list(node.inputs),
                list(attrs.values()),
                name=node.name,
                metadata_props={FUSED_KEY: fused_label([node, act_node])},
            )
            _replace(graph, act_node.outputs[0], [new], [act_node, node])
            count += 1
        return fusion_result(model, count)


# --- 3. LayerNorm --------------------------------------------------------------------------------


class FuseLayerNormPass(ir.passes.InPlacePass):
    """The decomposed layer norm older exporters write, over the last k axes of x:

        d = Sub(x, ReduceMean(x));  v = ReduceMean(Pow(d, 2) | Mul(d, d))
        n = Div(d, Sqrt(Add(v, eps))) | Mul(d, Reciprocal(Sqrt(Add(v, eps))))
        y = Add(Mul(n, scale), bias)                     (the bias Add is optional)

    -> ai.ember LayerNorm(x, scale, bias) with axis=-k, epsilon=eps; scale, bias, eps constants
    that broadcast over the normalized axes only. Mul and Add take their operands in either order.
    ONNX LayerNormalization is left alone: the runtime runs it as it is.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        count = 0
        for node in list(graph):
            if node.graph is not graph or not _is(node, "ReduceMean"):
                continue
            match = _match_layer_norm(node)
            if match is None:
                continue
            inputs = [match.x, _constant_like(graph, match.scale, match.scale_array, "ln_scale")]
            if match.bias is not None and match.bias_array is not None:
                inputs.append(_constant_like(graph, match.bias, match.bias_array, "ln_bias"))
            new = ir.node(
                "LayerNorm",
                inputs,
                {"axis": match.axis, "epsilon": match.epsilon},
                domain=EMBER_DOMAIN,
                name=match.nodes[-1].name,
                metadata_props={FUSED_KEY: fused_label(match.nodes)},
            )
            _replace(graph, match.nodes[-1].outputs[0], [new], match.nodes)
            count += 1
        return fusion_result(model, count)


@dataclasses.dataclass
class _LayerNorm:
    x: ir.Value
    axis: int
    epsilon: float
    scale: ir.Value
    scale_array: np.ndarray  # broadcast to the normalized shape where that is known
    bias: ir.Value | None
    bias_array: np.ndarray | None
    nodes: list[ir.Node]  # in data-flow order; the last one's output is the result


def _reduce_axes(node: ir.Node) -> list[int] | None:
    """ReduceMean's axes (an attribute before opset 18, an input since) when keepdims=1."""
    if attr_value(node, "keepdims", 1) != 1:
        return None
    axes = attr_value(node, "axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        array = constant_array(node.inputs[1])
        axes = None if array is None else [int(a) for a in array.reshape(-1)]
    return [int(a) for a in axes] if axes else None  # type: ignore[attr-defined]


def _trailing_axes(axes: list[int] | None, x_rank: int | None) -> int | None:
    """k when `axes` are exactly the last k axes of a rank-`x_rank` tensor, else None."""
    if axes is None:
        return None
    if x_rank is not None:
        axes = [a - x_rank if a >= 0 else a for a in axes]
    k = len(axes)
    return k if sorted(axes) == list(range(-k, 0)) else None


def _affine(array: np.ndarray | None, norm_shape: list[Dim] | None, k: int) -> np.ndarray | None:
    """A Mul/Add operand as LayerNorm's Scale/B, or None when it would broadcast over more than the
    k normalized axes. Where the normalized shape is known the array is broadcast to it."""
    if array is None or array.dtype.kind != "f":
        return None
    while array.ndim > k and array.shape[0] == 1:
        array = array.reshape(array.shape[1:])
    if array.ndim > k:
        return None
    if norm_shape is not None and all(isinstance(d, int) for d in norm_shape):
        shape = tuple(d for d in norm_shape if isinstance(d, int))
        try:
            if np.broadcast_shapes(array.shape, shape) != shape:
                return None
        except ValueError:
            return None
        return np.broadcast_to(array, shape)
    # NOTE: with the normalized dims unknown the array must have k axes already; where the Mul
    # would have broadcast x up to it, LayerNorm refuses to grow its output and fails loudly.
    return array if array.ndim == k else None


def _match_layer_norm(mean_node: ir.Node) -> _LayerNorm | None:
    x, mean = mean_node.inputs[0], mean_node.outputs[0]
    k = _trailing_axes(_reduce_axes(mean_node), rank(x))
    sub = _consumer(mean, "Sub")
    if x is None or k is None or sub is None or sub.inputs != (x, mean):
        return None
    d = sub.outputs[0]
    square = next(
        (
            n
            for n in d.consumers()
            if (_is(n, "Pow") and n.inputs[0] is d and _is_scalar(n.inputs[1], 2.0))
            or (_is(n, "Mul") and n.inputs == (d, d))
        ),
        None,
    )
    var_node = _consumer(square.outputs[0], "ReduceMean") if square is not None else None
    if square is None or var_node is None or var_node.inputs[0] is not square.outputs[0]:
        return None
    if _trailing_axes(_reduce_axes(var_node), rank(x)) != k:
        return None
    add_eps = _consumer(var_node.outputs[0], "Add")
    eps_value = _other(add_eps, var_node.outputs[0]) if add_eps is not None else None
    eps = _scalar(eps_value, _max_rank(x))
    sqrt = _consumer(add_eps.outputs[0], "Sqrt") if add_eps is not None else None
    if add_eps is None or eps is None or eps < 0 or sqrt is None:
        return None
    nodes = [mean_node, sub, square, var_node, add_eps, sqrt]
    s = sqrt.outputs[0]
    norm = sole_consumer(s)
    if _is(norm, "Reciprocal") and norm is not None:
        nodes.append(norm)
        recip = norm.outputs[0]
        norm = _consumer(recip, "Mul")
        if norm is None or _other(norm, recip) is not d:
            return None
    elif not (_is(norm, "Div") and norm is not None and norm.inputs == (d, s)):
        return None
    nodes.append(norm)
    if not _feeds_only(d, [norm, *([square] * (1 if square.op_type == "Pow" else 2))]):
        return None
    mul = _consumer(norm.outputs[0], "Mul")
    scale = _other(mul, norm.outputs[0]) if mul is not None else None
    x_dims = _dims(x)
    norm_shape = x_dims[-k:] if x_dims is not None and len(x_dims) >= k else None
    scale_array = _affine(constant_array(scale), norm_shape, k)
    if mul is None or scale is None or scale_array is None:
        return None
    nodes.append(mul)
    add_bias = _consumer(mul.outputs[0], "Add")
    bias = _other(add_bias, mul.outputs[0]) if add_bias is not None else None
    bias_array = _affine(constant_array(bias), norm_shape, k)
    if add_bias is None or bias is None or bias_array is None:
        return _LayerNorm(x, -k, eps, scale, scale_array, None, None, nodes)
    return _LayerNorm(x, -k, eps, scale, scale_array, bias, bias_array, [*nodes, add_bias])


# --- 4. GELU -------------------------------------------------------------------------------------

_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715


class FuseGeluPass(ir.passes.InPlacePass):
    """GELU spelled out -> ai.ember Gelu(x):

        erf form:  x * 0.5 * (1 + Erf(x / sqrt(2)))        (Div by 1.4142.. or Mul by 0.7071..)
        tanh form: x * 0.5 * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))  -> approximate="tanh"

    The product of x, 0.5 and (1 + ...) may be taken in any order ((x*a)*0.5, (x*0.5)*a, x*(a*0.5)),
    each Mul/Add with its operands either way round; x^3 is Pow(x, 3) or x*x*x.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        count = 0
        for node in list(graph):
            if node.graph is not graph:
                continue
            if _is(node, "Erf"):
                match, approximate = _match_gelu_erf(node), "none"
            elif _is(node, "Tanh"):
                match, approximate = _match_gelu_tanh(node), "tanh"
            else:
                continue
            if match is None:
                continue
            new = ir.node(
                "Gelu",
                [match.x],
                {"approximate": approximate},
                domain=EMBER_DOMAIN,
                name=match.nodes[-1].name,
                metadata_props={FUSED_KEY: fused_label(match.nodes)},
            )
            _replace(graph, match.nodes[-1].outputs[0], [new], match.nodes)
            count += 1
        return fusion_result(model, count)


@dataclasses.dataclass
class _Term:
    """value = f(x) computed by `nodes` (in data-flow order)."""

    x: ir.Value
    nodes: list[ir.Node]


def _times(value: ir.Value | None, want: float, op_type: str = "Mul") -> _Term | None:
    """value = x * want (Mul, either side) or, with op_type="Div", x / want."""
    node = value.producer() if value is not None else None
    if not _is(node, op_type) or node is None or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    orders = [(a, b), (b, a)] if op_type == "Mul" else [(a, b)]
    for x, c in orders:
        if x is not None and _is_scalar(c, want, _max_rank(x)):
            return _Term(x, [node])
    return None


def _plus_one(value: ir.Value) -> ir.Node | None:
    """The Add computing value + 1 (either side), the only reader of `value`."""
    add = _consumer(value, "Add")
    if add is None or not _is_scalar(_other(add, value), 1.0, _max_rank(value)):
        return None
    return add


def _gelu_product(x: ir.Value, one_plus: ir.Node) -> list[ir.Node] | None:
    """The two Muls computing x * 0.5 * a (a = one_plus's output) in any association."""
    a = one_plus.outputs[0]
    m1 = _consumer(a, "Mul")
    other = _other(m1, a) if m1 is not None else None
    if m1 is None or other is None:
        return None
    if other is x or _is_scalar(other, 0.5, _max_rank(x)):  # (x * a) * 0.5 or (a * 0.5) * x
        m2 = _consumer(m1.outputs[0], "Mul")
        last = _other(m2, m1.outputs[0]) if m2 is not None else None
        ok = _is_scalar(last, 0.5, _max_rank(x)) if other is x else last is x
        return [m1, m2] if m2 is not None and ok else None
    half = _times(other, 0.5)  # (x * 0.5) * a
    if half is None or half.x is not x or not _feeds_only(other, [m1]):
        return None
    return [*half.nodes, m1]


def _match_gelu_erf(erf: ir.Node) -> _Term | None:
    arg = erf.inputs[0]
    inner = _times(arg, _SQRT_2, "Div") or _times(arg, 1 / _SQRT_2)
    if arg is None or inner is None or not _feeds_only(arg, [erf]):
        return None
    add = _plus_one(erf.outputs[0])
    product = _gelu_product(inner.x, add) if add is not None else None
    if add is None or product is None:
        return None
    return _Term(inner.x, [*inner.nodes, erf, add, *product])


def _cube(value: ir.Value | None, x: ir.Value) -> list[ir.Node] | None:
    """The nodes computing value = x^3: Pow(x, 3), Mul(x, Mul(x, x)) or Mul(Mul(x, x), x)."""
    node = value.producer() if value is not None else None
    if _is(node, "Pow") and node is not None and node.inputs[0] is x:
        return [node] if _is_scalar(node.inputs[1], 3.0) else None
    if not _is(node, "Mul") or node is None:
        return None
    square = _producer(_other(node, x), "Mul")
    if square is None or square.inputs != (x, x) or not _feeds_only(square.outputs[0], [node]):
        return None
    return [square, node]


def _match_gelu_tanh(tanh: ir.Node) -> _Term | None:
    arg = tanh.inputs[0]
    outer = _times(arg, _SQRT_2_OVER_PI)
    inner_sum = _producer(outer.x, "Add") if outer is not None else None
    if arg is None or outer is None or inner_sum is None or not _feeds_only(arg, [tanh]):
        return None
    if not _feeds_only(outer.x, outer.nodes):
        return None
    a, b = inner_sum.inputs
    for x, term in ((a, b), (b, a)):
        cubic = _times(term, _GELU_CUBIC)
        if x is None or term is None or cubic is None or not _feeds_only(term, [inner_sum]):
            continue
        cube = _cube(cubic.x, x)
        if cube is None or not _feeds_only(cubic.x, cubic.nodes):
            continue
        add = _plus_one(tanh.outputs[0])
        product = _gelu_product(x, add) if add is not None else None
        if add is None or product is None:
            return None
        return _Term(x, [*cube, *cubic.nodes, inner_sum, *outer.nodes, tanh, add, *product])
    return None


# --- 5. Attention --------------------------------------------------------------------------------


class FuseAttentionPass(ir.passes.InPlacePass):
    """BERT-style attention -> ai.ember MultiHeadAttention(Q, K, V, mask?) with num_heads and scale.

    From the projections Q, K, V [B, S, H*D]: Reshape to [B, S, H, D] and Transpose [0,2,1,3]; K
    instead Transpose [0,2,3,1], or [0,2,1,3] followed by a swap of the last two axes (Transpose
    [0,1,3,2], or torch SDPA's Reshape [B*H, S, D] -> Transpose [0,2,1] -> Reshape [B, H, D, S]);
    MatMul(Q, K^T) scaled by constants (Div or Mul on the scores, or Mul on Q and on K^T: `scale` is
    their product); Add(mask); Softmax(axis=-1); an optional Where(IsNaN(p), 0, p) guard; MatMul
    with V; an optional no-op Reshape; Transpose [0,2,1,3]; Reshape to [B, Sq, H*Dv].

    Head counts and sizes come from constant Reshape targets or recorded shapes (run
    ember.ir.infer_shapes first): a target computed at run time (Shape -> Slice -> Concat) counts
    when the recorded shapes prove what the Reshape does. Values inside the pattern may be read by
    Shape nodes besides the pattern (those only look at shapes), by nothing else.

    The NaN guard: softmax gives NaN only for a row that is all -inf (or holds NaN or +inf). When
    the mask is provably finite (the dynamo export's Where(m, 0, -3.4e38), a constant, a Cast of
    ints...) no row is, so the guard goes. Otherwise (the TorchScript export's mask of -inf) the
    fused op is followed by Where(IsNaN(out), 0, out): a fully masked row gives 0 there, as the
    original did.
    NOTE: differences remain only where values are not finite: NaN in V gives NaN in the original
    and 0 with the guard after; with a finite mask, a row with NaN or inf in Q or K (or scores below
    about -2e31, which the -3.4e38 mask pushes to -inf) gives the original's 0 but NaN fused.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        opset = onnx_opset(model)
        count = 0
        for node in list(graph):
            if node.graph is not graph or not _is(node, "Softmax"):
                continue
            match = _match_attention(node, opset)
            if match is not None:
                _fuse_attention(graph, match)
                count += 1
        return fusion_result(model, count)


@dataclasses.dataclass
class _Heads:
    """Reshape(x) -> [B, S, H, D], x being [B, S, H*D]."""

    x: ir.Value
    dims: list[Dim]  # x's dims, unknown ones named uniquely
    num_heads: int
    head_size: int


@dataclasses.dataclass
class _Scores:
    """scale * Q K^T with Q and K split into heads."""

    q: _Heads
    k: _Heads
    scale: float


@dataclasses.dataclass
class _Attention:
    scores: _Scores
    v: _Heads
    mask: ir.Value | None
    guard: ir.Node | None  # the Where of a NaN guard on the softmax
    nodes: list[ir.Node]  # every node the fused op replaces
    output: ir.Value  # the final Reshape's output


def _dims(value: ir.Value | None) -> list[Dim] | None:
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else d.value for d in value.shape]


def _named(dims: list[Dim], tag: str) -> list[Dim]:
    """`dims` with every unknown dim given a unique name, so that a Reshape's 0 (copy the input
    dim) proves an output dim equal to an input dim neither of which is known."""
    return [f"?{tag}{i}" if d is None else d for i, d in enumerate(dims)]


def _differs(a: Dim, b: int) -> bool:
    """Whether dim `a` is known to differ from `b`."""
    return isinstance(a, int) and a != b


def _same(a: Dim, *others: Dim) -> bool:
    """Whether dim `a` is known to equal one of `others`: the same int or the same symbol."""
    return a is not None and any(type(a) is type(b) and a == b for b in others)


def _solve_free(in_dims: Sequence[Dim], known: Sequence[Dim]) -> Dim:
    """What a Reshape's -1 stands for, when the input dims and the other output dims fix it."""
    if any(d is None for d in [*in_dims, *known]):
        return None
    in_syms = collections.Counter(d for d in in_dims if isinstance(d, str))
    out_syms = collections.Counter(d for d in known if isinstance(d, str))
    if out_syms - in_syms:
        return None
    left = list((in_syms - out_syms).elements())
    p_in = math.prod(d for d in in_dims if isinstance(d, int))
    p_out = math.prod(d for d in known if isinstance(d, int))
    if p_out == 0 or p_in % p_out:
        return None
    ratio = p_in // p_out
    if not left:
        return ratio
    return left[0] if len(left) == 1 and ratio == 1 else None


def _reshape_dims(node: ir.Node, in_dims: Sequence[Dim] | None) -> list[Dim] | None:
    """The output dims of Reshape `node` reading a value of `in_dims`: from a constant target (0
    copies an input dim unless allowzero, -1 solved), merged with the recorded output shape."""
    recorded = _dims(node.outputs[0])
    target = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if target is None or target.ndim != 1:
        return recorded
    t = [int(v) for v in target]
    if t.count(-1) > 1 or any(v < -1 for v in t):
        return None
    allowzero = attr_value(node, "allowzero", 0) == 1
    out: list[Dim] = []
    for i, v in enumerate(t):
        if v == 0 and not allowzero:
            if in_dims is None or i >= len(in_dims):
                return None
            out.append(in_dims[i])
        else:
            out.append(v)
    if -1 in t:
        free = t.index(-1)
        known = [d for i, d in enumerate(out) if i != free]
        out[free] = None if in_dims is None else _solve_free(in_dims, known)
    if recorded is None:
        return out
    if len(recorded) != len(out):
        return None
    merged: list[Dim] = []
    for r, c in zip(recorded, out, strict=True):
        if isinstance(r, int) and isinstance(c, int) and r != c:
            return None
        merged.append(r if isinstance(r, int) or c is None else c)
    return merged


def _split_heads(reshape: ir.Node | None) -> _Heads | None:
    """`reshape` as x [B, S, H*D] -> [B, S, H, D] with H and D known ints, else None."""
    x = reshape.inputs[0] if reshape is not None else None
    raw = _dims(x)
    if reshape is None or x is None or raw is None or len(raw) != 3:
        return None
    c = raw[2]
    x_dims = _named(raw, f"{id(x)}:")
    out = _reshape_dims(reshape, x_dims)
    if not isinstance(c, int) or out is None or len(out) != 4:
        return None
    if not (_same(out[0], x_dims[0]) and _same(out[1], x_dims[1])):
        return None
    h, d = out[2], out[3]
    if isinstance(d, int) and not isinstance(h, int) and d > 0 and c % d == 0:
        h = c // d  # [B, S, ?, D]: the count of elements fixes H
    elif isinstance(h, int) and not isinstance(d, int) and h > 0 and c % h == 0:
        d = c // h
    if not (isinstance(h, int) and isinstance(d, int)) or h <= 0 or h * d != c:
        return None
    return _Heads(x, x_dims, h, d)


def _heads(value: ir.Value | None, perm: Sequence[int], nodes: list[ir.Node]) -> _Heads | None:
    """value = Transpose(Reshape(x) -> [B, S, H, D], perm); on a match both nodes join `nodes`."""
    t = _transpose(value, perm)
    reshape = _producer(t.inputs[0], "Reshape") if t is not None else None
    heads = _split_heads(reshape)
    if t is None or reshape is None or heads is None:
        return None
    nodes += [t, reshape]
    return heads


@dataclasses.dataclass
class _Scaled:
    value: ir.Value
    factor: float


def _strip_scale(value: ir.Value | None, nodes: list[ir.Node]) -> _Scaled | None:
    """Peel Mul and Div by constant scalars off `value`: what is under them and the factor they
    multiply it by. The peeled nodes join `nodes`."""
    if value is None:
        return None
    factor = 1.0
    for _ in range(4):
        node = value.producer()
        if node is None or node.domain != "" or node.op_type not in ("Mul", "Div"):
            break
        a, b = node.inputs
        cb, ca = _scalar(b, 4), _scalar(a, 4)
        if node.op_type == "Div" and a is not None and cb:
            factor, value = factor / cb, a
        elif node.op_type == "Mul" and a is not None and cb is not None:
            factor, value = factor * cb, a
        elif node.op_type == "Mul" and b is not None and ca is not None:
            factor, value = factor * ca, b
        else:
            break
        nodes.append(node)
    return _Scaled(value, factor)


def _key_heads(value: ir.Value, nodes: list[ir.Node]) -> _Heads | None:
    """value = K as [B, H, D, S] in one of three spellings; the nodes join `nodes`."""
    t = _producer(value, "Transpose")
    if t is not None and _perm(t) == [0, 2, 3, 1]:
        return _heads(value, [0, 2, 3, 1], nodes)
    if t is not None and _perm(t) == [0, 1, 3, 2]:
        heads = _heads(t.inputs[0], [0, 2, 1, 3], nodes)
        if heads is not None:
            nodes.append(t)
        return heads
    # torch's SDPA export: Reshape [B*H, S, D] -> Transpose [0, 2, 1] -> Reshape [B, H, D, S]
    back = _producer(value, "Reshape")
    t3 = _transpose(back.inputs[0], [0, 2, 1]) if back is not None else None
    flat = _producer(t3.inputs[0], "Reshape") if t3 is not None else None
    if back is None or t3 is None or flat is None:
        return None
    found: list[ir.Node] = []
    heads = _heads(flat.inputs[0], [0, 2, 1, 3], found)
    if heads is None:
        return None
    b, s = heads.dims[0], heads.dims[1]
    h, d = heads.num_heads, heads.head_size
    bhsd = _dims(flat.inputs[0]) or [None] * 4  # as recorded
    flat_dims = _reshape_dims(flat, [b, h, s, d])
    if flat_dims is None or len(flat_dims) != 3:
        return None
    if not (_same(flat_dims[1], s, bhsd[2]) and flat_dims[2] == d):
        return None  # not [B*H, S, D]
    back_dims = _reshape_dims(back, [flat_dims[0], d, flat_dims[1]])
    if back_dims is None or len(back_dims) != 4:
        return None
    b_ok, s_ok = _same(back_dims[0], b, bhsd[0]), _same(back_dims[3], s, bhsd[2])
    # A Reshape keeps the count of elements, B*H*S*D: with H, D and S known ints in the last
    # three dims, the first can only be B, whatever symbol shape inference named it.
    b_ok = b_ok or (back_dims[1] == h and back_dims[2] == d and isinstance(s, int) and s_ok)
    if not (b_ok and back_dims[2] == d and s_ok) or _differs(back_dims[1], h):
        return None  # not [B, H, D, S] (given B, D and S, the count of elements fixes H)
    nodes += [back, t3, flat, *found]
    return heads


def _match_scores(value: ir.Value | None, nodes: list[ir.Node]) -> _Scores | None:
    """value = scale * Q K^T, Q and K split into heads."""
    scaled = _strip_scale(value, nodes)
    mm = _producer(scaled.value, "MatMul") if scaled is not None else None
    if scaled is None or mm is None:
        return None
    nodes.append(mm)
    qs = _strip_scale(mm.inputs[0], nodes)
    q = _heads(qs.value, [0, 2, 1, 3], nodes) if qs is not None else None
    ks = _strip_scale(mm.inputs[1], nodes)
    k = _key_heads(ks.value, nodes) if ks is not None else None
    if qs is None or q is None or ks is None or k is None:
        return None
    if (k.num_heads, k.head_size) != (q.num_heads, q.head_size):
        return None
    scale = scaled.factor * qs.factor * ks.factor
    if not math.isfinite(scale) or scale == 0:  # 0 would mean 1/sqrt(D) to the fused op
        return None
    return _Scores(q, k, scale)


def _mask_fits(mask: ir.Value, scores: Sequence[Dim]) -> bool:
    """Whether the mask's recorded shape broadcasts to the scores' [B, H, Sq, Sk] without growing
    them. Unknown dims pass: MultiHeadAttention fails on a mask that would grow the scores."""
    dims = _dims(mask)
    if dims is None or len(dims) > len(scores):
        return False
    for m, s in zip(reversed(dims), reversed(scores), strict=False):
        if isinstance(m, int) and m != 1 and isinstance(s, int) and m != s:
            return False
    return True


def _only_reader(value: ir.Value) -> ir.Node | None:
    """The one node reading `value` besides Shape nodes."""
    readers = [u.node for u in value.uses() if not _is(u.node, "Shape")]
    return readers[0] if len(readers) == 1 else None


def _closed(nodes: Sequence[ir.Node], output: ir.Value) -> bool:
    """Whether every value the pattern `nodes` compute, but its output, is no graph output and is
    read by pattern nodes and Shape nodes alone."""
    inside = set(map(id, nodes))
    for node in nodes:
        for value in node.outputs:
            if value is output:
                continue
            if value.is_graph_output():
                return False
            for use in value.uses():
                if id(use.node) not in inside and not _is(use.node, "Shape"):
                    return False
    return True


def _match_attention(softmax: ir.Node, opset: int) -> _Attention | None:
    axis = attr_value(softmax, "axis", -1 if opset >= 13 else 1)
    if axis not in (-1, 3):  # 3 = the last axis of the 4-D scores
        return None
    nodes: list[ir.Node] = [softmax]
    # scores (+ mask) -> Softmax
    scores: _Scores | None = None
    mask: ir.Value | None = None
    add = _producer(softmax.inputs[0], "Add")
    if add is None:
        scores = _match_scores(softmax.inputs[0], nodes)
    else:
        nodes.append(add)
        for i in (0, 1):
            trial: list[ir.Node] = []
            scores = _match_scores(add.inputs[i], trial)
            if scores is not None:
                mask = add.inputs[1 - i]
                nodes += trial
                break
    if scores is None:
        return None
    # Softmax -> optional Where(IsNaN(p), 0, p) -> MatMul with V
    p = softmax.outputs[0]
    guard = None
    readers = [u.node for u in p.uses()]
    if len(readers) == 2:
        isnan = next((n for n in readers if _is(n, "IsNaN")), None)
        guard = next((n for n in readers if _is(n, "Where")), None)
        if isnan is None or guard is None or guard.inputs != (isnan.outputs[0], guard.inputs[1], p):
            return None
        if _scalar(guard.inputs[1], 4) != 0.0:
            return None
        nodes += [isnan, guard]
        p = guard.outputs[0]
    pv = _consumer(p, "MatMul")
    if pv is None or pv.inputs[0] is not p:
        return None
    nodes.append(pv)
    v = _heads(pv.inputs[1], [0, 2, 1, 3], nodes)
    if v is None or v.num_heads != scores.q.num_heads:
        return None
    # -> optional no-op Reshape -> Transpose [0, 2, 1, 3] -> Reshape [B, Sq, H*Dv]
    b, sq = scores.q.dims[0], scores.q.dims[1]
    h, dv = v.num_heads, v.head_size
    value, nxt = pv.outputs[0], _only_reader(pv.outputs[0])
    if _is(nxt, "Reshape") and nxt is not None:
        recorded = _dims(value) or [None] * 4
        out = _reshape_dims(nxt, [b, h, sq, dv])
        if out is None or len(out) != 4 or _differs(out[1], h):
            return None
        if not (_same(out[0], b, recorded[0]) and _same(out[2], sq) and out[3] == dv):
            return None  # not [B, H, Sq, Dv] (given B, Sq and Dv, the count fixes H)
        nodes.append(nxt)
        value, nxt = nxt.outputs[0], _only_reader(nxt.outputs[0])
    if not _is(nxt, "Transpose") or nxt is None or _perm(nxt) != [0, 2, 1, 3]:
        return None
    nodes.append(nxt)
    final = _only_reader(nxt.outputs[0])
    if not _is(final, "Reshape") or final is None:
        return None
    recorded = _dims(nxt.outputs[0]) or [None] * 4
    out = _reshape_dims(final, [b, sq, h, dv])
    if out is None or len(out) != 3 or (isinstance(out[2], int) and out[2] != h * dv):
        return None
    if not (_same(out[0], b, recorded[0]) and _same(out[1], sq, recorded[1])):
        return None  # not [B, Sq, H*Dv] (given B and Sq, the count fixes the last dim)
    nodes.append(final)
    # The mask, and who reads what
    if mask is not None:
        sk = scores.k.dims[1]
        if None not in (mask.dtype, scores.q.x.dtype) and mask.dtype != scores.q.x.dtype:
            return None
        if not _mask_fits(mask, [b, h, sq, sk]):
            return None
    nodes = list(dict.fromkeys(nodes))  # Q = K = V reuses nodes
    if not _closed(nodes, final.outputs[0]):
        return None
    return _Attention(scores, v, mask, guard, nodes, final.outputs[0])


#: The most a value of each integer type can hold, for `_bound`.
_INT_MAX = {
    ir.DataType.BOOL: 1.0,
    ir.DataType.INT8: 2.0**7,
    ir.DataType.UINT8: 2.0**8,
    ir.DataType.INT16: 2.0**15,
    ir.DataType.UINT16: 2.0**16,
    ir.DataType.INT32: 2.0**31,
    ir.DataType.UINT32: 2.0**32,
    ir.DataType.INT64: 2.0**63,
    ir.DataType.UINT64: 2.0**64,
}


# Ops whose output holds values of their first input only.
_SAME_VALUES = frozenset("Neg Identity Reshape Expand Unsqueeze Squeeze Transpose".split())


def _bound(value: ir.Value | None, depth: int = 8) -> float:
    """An upper bound of |value| everywhere, or inf when none is proven (NaN counts as inf)."""
    if value is None or depth == 0:
        return math.inf
    array = constant_array(value)
    if array is not None:
        if array.dtype.kind not in "fiub":
            return math.inf
        if array.size == 0:
            return 0.0
        top = float(np.max(np.abs(array.astype(np.float64))))
        return top if math.isfinite(top) else math.inf
    node = value.producer()
    if node is None or node.domain != "" or not node.inputs:
        return math.inf
    ins = node.inputs
    if node.op_type == "Cast":
        source = ins[0].dtype if ins[0] is not None else None
        return _INT_MAX[source] if source in _INT_MAX else _bound(ins[0], depth - 1)
    if node.op_type == "Where" and len(ins) == 3:
        return max(_bound(ins[1], depth - 1), _bound(ins[2], depth - 1))
    if node.op_type in ("Add", "Sub") and len(ins) == 2:
        return _bound(ins[0], depth - 1) + _bound(ins[1], depth - 1)
    if node.op_type == "Mul" and len(ins) == 2:
        return _bound(ins[0], depth - 1) * _bound(ins[1], depth - 1)
    if node.op_type in _SAME_VALUES:
        return _bound(ins[0], depth - 1)
    return math.inf


def _finite(mask: ir.Value | None) -> bool:
    """Whether the mask provably holds finite float32 values only."""
    return mask is None or _bound(mask) <= float(np.finfo(np.float32).max)


def _fuse_attention(graph: ir.Graph, match: _Attention) -> None:
    order = {id(n): i for i, n in enumerate(graph)}
    nodes = sorted(match.nodes, key=lambda n: order[id(n)])
    inputs = [match.scores.q.x, match.scores.k.x, match.v.x]
    if match.mask is not None:
        inputs.append(match.mask)
    mha = ir.node(
        "MultiHeadAttention",
        inputs,
        {"num_heads": match.v.num_heads, "scale": match.scores.scale},
        domain=EMBER_DOMAIN,
        name=nodes[-1].name,
        metadata_props={FUSED_KEY: _attention_label(nodes)},
    )
    new_nodes = [mha]
    if match.guard is not None and not _finite(match.mask):
        y = mha.outputs[0]
        y.type, y.shape = match.output.type, match.output.shape
        isnan = ir.node("IsNaN", [y])
        isnan.outputs[0].type, isnan.outputs[0].shape = ir.TensorType(ir.DataType.BOOL), y.shape
        zero = match.guard.inputs[1]
        meta = {FUSED_KEY: "IsNaN+Where (the softmax NaN guard, after the attention)"}
        new_nodes += [isnan, ir.node("Where", [isnan.outputs[0], zero, y], metadata_props=meta)]
    _replace(graph, match.output, new_nodes, nodes)


def _attention_label(nodes: Sequence[ir.Node]) -> str:
    """Attention(Mul+Mul+MatMul+Add+Softmax+MatMul+4 Transpose+4 Reshape): the computing ops in
    graph order, then how many Transposes and Reshapes."""
    moves = ("Transpose", "Reshape")
    ops = [n.op_type for n in nodes if n.op_type not in moves]
    counts = collections.Counter(n.op_type for n in nodes if n.op_type in moves)
    ops += [f"{counts[t]} {t}" if counts[t] > 1 else t for t in moves if counts[t]]
    return f"Attention({'+'.join(ops)})"


#: Level 2's transformer passes in the order they run: Transposes fold first (MatMuls then see
#: constant weights); LayerNorm and GELU become single ops (so that an activation can join its
#: MatMul); attention fuses while the projections' outputs carry their recorded shapes; then
#: MatMul+Add, and the activation after it.
TRANSFORMER_PASSES: list[ir.passes.PassBase] = [
    FoldTransposesPass(),
    FuseLayerNormPass(),
    FuseGeluPass(),
    FuseAttentionPass(),
    FuseMatMulBiasPass(),
    FuseMatMulActivationPass(),
]

__all__ = [
    "TRANSFORMER_PASSES",
    "FoldTransposesPass",
    "FuseAttentionPass",
    "FuseGeluPass",
    "FuseLayerNormPass",
    "FuseMatMulActivationPass",
    "FuseMatMulBiasPass",
]
