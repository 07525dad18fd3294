"""compile(graph) -> Plan: a flat, prebuilt list of steps that Plan.run executes.

Compilation resolves every node to its op function once, converts attributes once, gives every value
a slot in a per-call environment list, and records after which step each slot is last used so that
intermediates are freed as soon as possible. Plan.run does no graph walking and keeps no state: many
threads may run one Plan at once. Subgraph attributes (If, Loop, Scan) compile to nested Plans that
read captured outer-scope values from the caller's environment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from ember import flags
from ember.errors import EmberError, ExecutionError, UnsupportedError
from ember.ir.verify import describe, subgraph_reads, topological_order
from ember.ops import registry
from ember.ops.registry import OpContext


@dataclasses.dataclass(frozen=True)
class Step:
    node: ir.Node
    fn: Callable[..., Any]
    inputs: tuple[int | None, ...]  # slot per node input; None = omitted optional input
    outputs: tuple[int | None, ...]  # slot per node output; None = output nobody reads
    attrs: Mapping[str, Any]
    subplans: Mapping[str, Plan]  # graph attributes
    subplan_reads: Mapping[
        str, tuple[int, ...]
    ]  # per subplan: slots here of its captures, in order
    frees: tuple[int, ...]  # slots last read by this step
    fallback: bool  # runs through onnx.reference, not an ember op


@dataclasses.dataclass(frozen=True)
class Plan:
    """An executable graph. Build with `compile_graph`; run with `run` (thread-safe)."""

    graph: ir.Graph
    steps: tuple[Step, ...]
    n_slots: int
    constants: tuple[tuple[int, np.ndarray], ...]  # (slot, initializer value)
    input_slots: tuple[int, ...]  # graph inputs, in order (subgraph: its formal inputs)
    output_slots: tuple[int, ...]
    captures: tuple[tuple[ir.Value, int], ...]  # outer-scope values this graph reads

    @property
    def fallback_nodes(self) -> list[ir.Node]:
        """Nodes (including inside subgraphs) that run through the onnx.reference fallback."""
        nodes = []
        for s in self.steps:
            if s.fallback:
                nodes.append(s.node)
            for sub in s.subplans.values():
                nodes.extend(sub.fallback_nodes)
        return nodes

    def run(self, inputs: Sequence[Any], outer: Mapping[ir.Value, Any] | None = None) -> list[Any]:
        """Run on positional `inputs` (one per graph input); returns one value per output."""
        env: list[Any] = [None] * self.n_slots
        for slot, value in self.constants:
            env[slot] = value
        for slot, value in zip(self.input_slots, inputs, strict=True):
            env[slot] = value
        for captured, slot in self.captures:
            env[slot] = outer[captured] if outer is not None else None
        for step in self.steps:
            args = [env[i] if i is not None else None for i in step.inputs]
            kwargs = dict(step.attrs)
            for name, sub in step.subplans.items():
                reads = step.subplan_reads[name]
                kwargs[name] = Subgraph(
                    sub, {v: env[r] for (v, _), r in zip(sub.captures, reads, strict=True)}
                )
            try:
                result = step.fn(*args, **kwargs)
            except EmberError:
                raise
            except Exception as e:
                raise ExecutionError(
                    f"{describe(step.node)} failed: {type(e).__name__}: {e}"
                ) from e
            if not isinstance(result, tuple):  # a list is one sequence value, a tuple many outputs
                result = (result,)
            for out_slot, value in zip(step.outputs, result, strict=False):
                if out_slot is not None:
                    env[out_slot] = value
            for free_slot in step.frees:
                env[free_slot] = None
        return [env[s] for s in self.output_slots]


class Subgraph:
    """A graph attribute bound to the environment of the node that runs it: call it like a function.

    `body(*inputs)` returns the list of the subgraph's outputs. Outer-scope values are read from the
    enclosing environment at call time.
    """

    def __init__(self, plan: Plan, outer: Mapping[ir.Value, Any]) -> None:
        self.plan = plan
        self._outer = outer  # fixed while the node runs: the enclosing graph is paused

    @property
    def n_inputs(self) -> int:
        return len(self.plan.input_slots)

    @property
    def outputs(self) -> Sequence[ir.Value]:
        """The subgraph's declared outputs (their types tell the dtype of an empty scan output)."""
        return self.plan.graph.outputs

    @property
    def n_outputs(self) -> int:
        return len(self.plan.output_slots)

    def __call__(self, *inputs: Any) -> list[Any]:
        return self.plan.run(inputs, self._outer)


def compile_graph(
    graph: ir.Graph,
    opsets: Mapping[str, int],
    *,
    exact: bool = False,
    outputs: Sequence[ir.Value] | None = None,
    allow_fallback: bool | None = None,
) -> Plan:
    """Compile `graph` (already verified) into a Plan computing `outputs` (default: graph outputs).

    Raises UnsupportedError listing every node whose op ember cannot run.
    """
    allow_fallback = flags.EMBER_ALLOW_FALLBACK if allow_fallback is None else allow_fallback
    wanted = list(graph.outputs) if outputs is None else list(outputs)
    nodes = _needed_nodes(graph, wanted)

    slots: dict[ir.Value, int] = {}

    def slot(v: ir.Value) -> int:
        if v not in slots:
            slots[v] = len(slots)
        return slots[v]

    input_slots = tuple(slot(v) for v in graph.inputs)
    constants = []
    for v in graph.initializers.values():
        if v in slots and v in graph.inputs:
            continue  # an initializer that is also an input: the caller's value wins
        if v.const_value is not None:
            constants.append((slot(v), tensor_array(v.const_value)))

    produced = set(graph.inputs) | set(graph.initializers.values())
    for n in nodes:
        produced.update(o for o in n.outputs)

    captures: list[tuple[ir.Value, int]] = []
    steps_raw = []
    unsupported: list[str] = []
    for node in nodes:
        opset = opsets.get(node.domain, 0)
        record = registry.find(node.op_type, node.domain, opset)
        in_slots: list[int | None] = []
        for maybe_v in node.inputs:
            if maybe_v is None or maybe_v.name == "":
                in_slots.append(None)
                continue
            v = maybe_v
            if v not in produced and v not in slots:
                captures.append((v, slot(v)))
            in_slots.append(slot(v))
        subplans: dict[str, Plan] = {}
        for name, attr in node.attributes.items():
            if attr.type == ir.AttributeType.GRAPH:
                subplans[name] = compile_graph(
                    attr.value, opsets, exact=exact, allow_fallback=allow_fallback
                )
        for sub in subplans.values():
            for v, _ in sub.captures:
                if v not in produced and v not in slots:
                    captures.append((v, slot(v)))
        if record is not None:
            try:
                fn, attrs = _bind_op(record, node, opset, exact)
            except UnsupportedError as e:
                unsupported.append(str(e))
                continue
            fallback = False
        elif (
            allow_fallback
            # onnx.reference runs a node's subgraphs itself, but cannot see our outer scope.
            and not any(sub.captures for sub in subplans.values())
            and (ref := _reference_fallback(node, opsets))
        ):
            fn, attrs, fallback = ref, {}, True
        else:
            where = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
            unsupported.append(f"{describe(node)}: op {where} (opset {opset}) is not implemented")
            continue
        out_slots = tuple(slot(v) if v is not None and v.name else None for v in node.outputs)
        steps_raw.append((node, fn, tuple(in_slots), out_slots, attrs, subplans, fallback))

    if unsupported:
        raise UnsupportedError(
            "ember cannot run this model; unsupported: " + "; ".join(unsupported)
        )

    output_slots = tuple(slot(v) for v in wanted)
    # Free a slot right after its last reader, unless it is an output of the whole graph.
    last_use: dict[int, int] = {}
    for i, (_, _, ins, _, _, subplans, _) in enumerate(steps_raw):
        for s in ins:
            if s is not None:
                last_use[s] = i
        for sub in subplans.values():
            for v, _ in sub.captures:
                last_use[slots[v]] = i
    keep = set(output_slots)
    frees: list[list[int]] = [[] for _ in steps_raw]
    for s, i in last_use.items():
        if s not in keep:
            frees[i].append(s)
    steps = tuple(
        Step(
            node,
            fn,
            ins,
            outs,
            attrs,
            subplans,
            {name: tuple(slots[v] for v, _ in sub.captures) for name, sub in subplans.items()},
            tuple(frees[i]),
            fallback,
        )
        for i, (node, fn, ins, outs, attrs, subplans, fallback) in enumerate(steps_raw)
    )
    return Plan(
        graph=graph,
        steps=steps,
        n_slots=len(slots),
        constants=tuple(constants),
        input_slots=input_slots,
        output_slots=output_slots,
        captures=tuple(captures),
    )


def _needed_nodes(graph: ir.Graph, wanted: Sequence[ir.Value]) -> list[ir.Node]:
    """Nodes in topological order, dropping those that no wanted value depends on."""
    order = topological_order(graph)
    needed: set[ir.Node] = set()
    stack = [v.producer() for v in wanted if v.producer() is not None]
    while stack:
        n = stack.pop()
        if n is None or n in needed or n.graph is not graph:
            continue
        needed.add(n)
        for v in list(n.inputs) + subgraph_reads(n):
            if v is not None and v.producer() is not None:
                stack.append(v.producer())
    return [n for n in order if n in needed]


def _bind_op(
    record: registry.OpRecord, node: ir.Node, opset: int, exact: bool
) -> tuple[Callable[..., Any], dict[str, Any]]:
    attrs: dict[str, Any] = {}
    for name, attr in node.attributes.items():
        if attr.type == ir.AttributeType.GRAPH:
            continue
        if name not in record.attributes and not record.accepts_any_attribute:
            raise UnsupportedError(
                f"{describe(node)}: attribute {name!r} is not supported "
                f"(ember knows: {', '.join(sorted(record.attributes)) or 'none'})"
            )
        attrs[name] = attribute_value(attr)
    if record.wants_ctx:
        attrs["ctx"] = OpContext(exact=exact, n_outputs=len(node.outputs), opset=opset)
    return record.fn, attrs


def tensor_array(tensor: Any) -> np.ndarray:
    """An onnx_ir tensor as the array ops take: STRING tensors become object arrays of str."""
    array = tensor.numpy()
    if array.dtype.kind == "S":
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array)
    return array


def attribute_value(attr: ir.Attr) -> Any:
    """An ONNX attribute as the plain Python/NumPy value an op function takes."""
    t = attr.type
    v = attr.value
    if t == ir.AttributeType.STRING:
        return v.decode() if isinstance(v, bytes) else v
    if t == ir.AttributeType.STRINGS:
        return [s.decode() if isinstance(s, bytes) else s for s in v]
    if t == ir.AttributeType.INTS:
        return [int(i) for i in v]
    if t == ir.AttributeType.FLOATS:
        return [float(f) for f in v]
    if t == ir.AttributeType.TENSOR:
        return tensor_array(v)
    if t == ir.AttributeType.TENSORS:
        return [tensor_array(x) for x in v]
    return v


def _reference_fallback(node: ir.Node, opsets: Mapping[str, int]) -> Callable[..., Any] | None:
    """Run one node through onnx.reference; only for ops ember itself does not implement.

    None when onnx.reference cannot run it either.
    """
    from onnx.reference import ReferenceEvaluator

    proto = ir.serde.serialize_node(node)
    try:
        evaluator = ReferenceEvaluator(proto, opsets=dict(opsets))
    except Exception:  # noqa: BLE001  (any failure here means: no fallback for this node)
        return None
    input_names = [v.name if v is not None else "" for v in node.inputs]

    def run_reference(*args: Any) -> tuple[Any, ...]:
        feeds = {n: a for n, a in zip(input_names, args, strict=True) if n}
        return tuple(evaluator.run(None, feeds))

    return run_reference
