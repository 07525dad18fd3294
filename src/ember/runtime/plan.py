"""compile(graph) -> Plan: a flat, prebuilt list of steps that Plan.run executes.

Compilation resolves every node to its op function once (a native kernel where one applies, see
runtime/native.py, else the NumPy reference), converts attributes once, gives every value a slot
in a per-call environment list, and records after which step each slot is last used so that
intermediates are freed as soon as possible. Plan.run does no graph walking: many threads may run
one Plan at once.
Subgraph attributes (If, Loop, Scan) compile to nested Plans that read captured outer-scope values
from the caller's environment.

Memory: the first run for a given set of input shapes records every value's shape; from then on the
outputs of native kernels are written into one arena per thread (shared by every plan the thread
runs), laid out by ember.memory from the values' lifetimes (see `ArenaLayout`).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from ember import flags
from ember.errors import EmberError, ExecutionError, UnsupportedError
from ember.ir.verify import describe, subgraph_reads, topological_order
from ember.ops import registry
from ember.ops.registry import OpContext
from ember.runtime import native
from ember.runtime.program import Lowered
from ember.runtime.program import lower as lower_program


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
    kernel: native.Kernel | None = None  # the native kernel `fn` runs, if any
    gather: tuple[int, ...] = ()  # env index per input; an omitted input reads the always-None slot

    @property
    def kernel_name(self) -> str:
        """What runs this step: a native kernel's name, "reference" or "onnx.reference"."""
        if self.kernel is not None:
            return self.kernel.name
        return "onnx.reference" if self.fallback else "reference"


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
    arena_enabled: bool = False
    # Output shapes follow from input shapes alone (no Reshape to a computed shape, NonZero, ...):
    # a signature's recorded shapes then hold for every later run with that signature.
    shape_static: bool = False
    # input-shape signature -> ArenaLayout; filled by run(), shared by threads (dict ops are atomic)
    _layouts: dict[Any, ArenaLayout] = dataclasses.field(default_factory=dict, compare=False)
    _cache: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    @functools.cached_property
    def uses_blas(self) -> bool:
        """True when a reference op that calls NumPy's BLAS (matmul, conv, ...) runs here."""
        return any(s.kernel is None and s.node.op_type in _BLAS_OPS for s in self.steps)

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

    def run(
        self,
        inputs: Sequence[Any],
        outer: Mapping[ir.Value, Any] | None = None,
        *,
        timings: list[float] | None = None,
    ) -> list[Any]:
        """Run on positional `inputs` (one per graph input); returns one value per output.

        `timings`, when given, receives each step's wall time in seconds, in step order.
        """
        sig = self._signature(inputs) if self.arena_enabled else None
        arena = self._layouts.get(sig) if sig is not None else None
        if arena is not None and arena.program is not None and timings is None:
            results = arena.program.run(inputs, arena.memory())
            if results is not None:
                return results
        env = self._env_template()
        for slot, value in zip(self.input_slots, inputs, strict=True):
            env[slot] = value
        for captured, slot in self.captures:
            env[slot] = outer[captured] if outer is not None else None
        out_bufs = arena.buffers() if arena is not None else []
        direct = arena.direct if arena is not None else []
        # The first run for a signature records the shapes an arena layout needs.
        records: list[tuple[Any, ...]] | None = None
        if sig is not None and arena is None and len(self._layouts) < _MAX_LAYOUTS:
            records = []
        step = None
        try:
            for index, step in enumerate(self.steps):
                args = [env[i] for i in step.gather]
                start = time.perf_counter() if timings is not None else 0.0
                if arena is not None and (buf := out_bufs[index]) is not None:
                    if (fn := direct[index]) is not None:
                        # Shapes and dtypes are as recorded: the kernel itself, no checks.
                        result = fn(*args, out=buf)
                        if result is None:  # a case the kernel leaves to the reference
                            result = step.fn(*args)
                    elif all(
                        a is None or a.shape == want
                        for a, want in zip(args, arena.in_shapes[index], strict=True)
                    ):
                        result = step.fn(*args, out=buf)
                    else:  # the buffer fits only the shapes recorded when it was laid out
                        result = step.fn(*args)
                elif step.subplans:
                    kwargs = dict(step.attrs)
                    for name, sub in step.subplans.items():
                        reads = step.subplan_reads[name]
                        kwargs[name] = Subgraph(
                            sub, {v: env[r] for (v, _), r in zip(sub.captures, reads, strict=True)}
                        )
                    result = step.fn(*args, **kwargs)
                else:
                    result = step.fn(*args, **step.attrs)
                if timings is not None:
                    timings.append(time.perf_counter() - start)
                if type(result) is not tuple:  # a list is one sequence value, a tuple many
                    first = step.outputs[0] if step.outputs else None
                    env[first if first is not None else -1] = result
                    if records is not None:
                        records.append(_shapes(args, (result,)))
                else:
                    if records is not None:
                        records.append(_shapes(args, result))
                    for out_slot, value in zip(step.outputs, result, strict=False):
                        if out_slot is not None:
                            env[out_slot] = value
                for free_slot in step.frees:
                    env[free_slot] = None
        except EmberError:
            raise
        except Exception as e:
            assert step is not None
            raise ExecutionError(f"{describe(step.node)} failed: {type(e).__name__}: {e}") from e
        if records is not None:
            assert sig is not None
            self._layouts[sig] = ArenaLayout.build(
                self, records, [s if d == _F32 else None for s, d in sig]
            )
        outputs = [env[s] for s in self.output_slots]
        if arena is not None:
            # An output that may be a view of arena memory is copied out: the arena is reused.
            outputs = [
                np.array(o, copy=True) if i in arena.copy_outputs else o
                for i, o in enumerate(outputs)
            ]
        return outputs

    def _env_template(self) -> list[Any]:
        """A fresh environment: constants in place, then two extra slots: [n_slots] stays None
        (omitted inputs read it) and [-1] takes outputs nobody reads."""
        template = self._cache.get("env")
        if template is None:
            template = [None] * (self.n_slots + 2)
            for slot, value in self.constants:
                template[slot] = value
            self._cache["env"] = template
        return list(template)

    # -- the arena ------------------------------------------------------------------------------

    def _signature(self, inputs: Sequence[Any]) -> tuple[Any, ...] | None:
        sig = []
        for v in inputs:
            if not isinstance(v, np.ndarray):
                return None
            sig.append((v.shape, v.dtype.str))
        return tuple(sig)

    def memory_layout(self, inputs: Sequence[Any]) -> ArenaLayout | None:
        """The arena layout for inputs of these shapes (None: no arena); runs once to build it."""
        sig = self._signature(inputs) if self.arena_enabled else None
        if sig is None:
            return None
        if sig not in self._layouts:
            self.run(inputs)
        return self._layouts.get(sig)


# Reference ops whose time goes into NumPy's BLAS (np.matmul, np.einsum, tensordot).
_BLAS_OPS = frozenset(
    "MatMul Gemm Conv ConvTranspose Einsum FusedConv FusedGemm FusedMatMul MultiHeadAttention "
    "Attention LSTM GRU RNN MatMulInteger ConvInteger QLinearMatMul QLinearConv".split()
)
# Ops whose output shape depends on the values of an input after the first (a shape, axes,
# repeats, pads, bounds): unless those inputs are constants, shapes can change between runs with
# the same input shapes. _VALUE_SHAPED_ANY: ops whose shapes depend on their data.
_VALUE_SHAPED = frozenset(
    "Reshape Expand Tile Slice Pad Resize Upsample OneHot Squeeze Unsqueeze "
    "Split TopK CenterCropPad Col2Im DFT STFT MelWeightMatrix ReduceMax ReduceMin ReduceMean "
    "ReduceSum ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare "
    "RandomNormalLike RandomUniformLike GridSample AffineGrid BlackmanWindow HannWindow "
    "HammingWindow".split()
)
_VALUE_SHAPED_ANY = frozenset(
    "NonZero Unique Compress NonMaxSuppression StringSplit ConstantOfShape Range "
    "SequenceAt SequenceConstruct SplitToSequence ConcatFromSequence Loop If Scan "
    "TfIdfVectorizer RegexFullMatch StringNormalizer Optional OptionalGetElement".split()
)
_F32 = np.dtype(np.float32).str  # as signatures spell dtypes (ml_dtypes' float8 are "<f1" there)
_MAX_LAYOUTS = 16  # input-shape signatures with an arena layout, per plan (batch sizes, lengths)
# What native kernels write into the arena: float32, and the int8 kernels' uint8/int8.
_ARENA_DTYPES = frozenset({np.dtype(np.float32), np.dtype(np.uint8), np.dtype(np.int8)})


def _shapes(args: Sequence[Any], result: tuple[Any, ...]) -> tuple[Any, ...]:
    """(input shapes, first output's shape, its dtype, all inputs float32) of one step."""
    in_shapes = tuple(a.shape if isinstance(a, np.ndarray) else None for a in args)
    all_f32 = all(a is None or (isinstance(a, np.ndarray) and a.dtype == np.float32) for a in args)
    first = result[0] if result else None
    if isinstance(first, np.ndarray):
        return (in_shapes, first.shape, first.dtype, all_f32)
    return (in_shapes, None, None, all_f32)


class ArenaLayout:
    """Where each arena-backed value lives, for one input-shape signature; buffers per thread.

    A value is arena-backed when a native kernel that can write into a given buffer produces it
    and it is not a graph output. Reference ops may return views of their inputs (Reshape,
    Transpose, Slice, ...), so a buffer stays reserved until the last reader of any value that may
    alias it, and a graph output that may alias one is copied out at the end of the run.
    """

    def __init__(
        self,
        offsets: dict[int, tuple[int, tuple[int, ...], np.dtype]],  # step -> (offset, shape, dtype)
        in_shapes: list[tuple[Any, ...]],
        size: int,
        copy_outputs: frozenset[int],
        report: Any,
        direct: list[Callable[..., Any] | None],
        program: Lowered | None = None,
    ) -> None:
        self.offsets = offsets
        self.in_shapes = in_shapes
        self.size = size
        self.copy_outputs = copy_outputs
        self.report = report  # ember.memory.ArenaPlan
        self.direct = direct  # per step: the unchecked kernel to call, or None
        self.program = program  # the whole run as one native call, when every step lowers
        self._n_steps = len(in_shapes)

    def memory(self) -> np.ndarray:
        """This thread's arena, grown to this layout's size if smaller."""
        if _thread_arena.memory.size < self.size:
            # Grow this thread's one arena; views into the old one are dropped with it.
            _thread_arena.views.clear()
            _thread_arena.memory = np.empty(self.size, np.uint8)
        return _thread_arena.memory

    def buffers(self) -> list[np.ndarray | None]:
        """This thread's output buffer per step (None: the step allocates its own)."""
        views = _thread_arena.views
        bufs = views.get(self)
        if bufs is None:
            arena = self.memory()
            bufs = [None] * self._n_steps
            for i, (offset, shape, dtype) in self.offsets.items():
                n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                bufs[i] = arena[offset : offset + n].view(dtype).reshape(shape)
            views[self] = bufs
        return bufs

    @classmethod
    def build(
        cls, plan: Plan, records: list[tuple[Any, ...]], input_shapes: Sequence[Any]
    ) -> ArenaLayout:
        """The layout for one input signature from its first run's `records` (see _shapes);
        `input_shapes`: each graph input's shape."""
        from ember.memory import Request, plan_arena

        n = len(plan.steps)
        output_slots = set(plan.output_slots)
        last_read: dict[int, int] = {}
        for i, step in enumerate(plan.steps):
            for slot in step.inputs:
                if slot is not None:
                    last_read[slot] = i
        for slot in plan.output_slots:
            last_read[slot] = n  # read after the last step
        producer_of: dict[int, int] = {}  # arena slot -> step index
        roots: dict[int, frozenset[int]] = {}  # slot -> arena slots it may alias
        for i, step in enumerate(plan.steps):
            out = step.outputs[0] if step.outputs else None
            _, shape, dtype, _ = records[i]
            backed = (
                step.kernel is not None
                and out is not None
                and out not in output_slots
                and shape is not None
                and dtype in _ARENA_DTYPES
                and len(step.outputs) == 1
            )
            if backed:
                assert out is not None
                roots[out] = frozenset({out})
                producer_of[out] = i
                continue
            inherited: frozenset[int] = frozenset()
            for slot in step.inputs:
                if slot is not None:
                    inherited |= roots.get(slot, frozenset())
            for o in step.outputs:
                if o is not None and inherited:
                    roots[o] = inherited
        end = {r: producer_of[r] for r in producer_of}
        for slot, rs in roots.items():
            for r in rs:
                end[r] = max(end[r], last_read.get(slot, producer_of[r]))
        requests = []
        for slot, i in producer_of.items():
            _, shape, dtype, _ = records[i]
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            inplace: tuple[int, ...] = ()
            step = plan.steps[i]
            if step.kernel is not None and step.kernel.elementwise:
                inplace = tuple(
                    s
                    for s in step.inputs
                    if s is not None and s in producer_of and records[producer_of[s]][1] == shape
                )
            requests.append(
                Request(id=slot, size=max(size, 1), start=i, end=end[slot], inplace_of=inplace)
            )
        arena = plan_arena(requests)
        offsets = {
            producer_of[slot]: (
                arena.offsets[slot],
                records[producer_of[slot]][1],
                np.dtype(records[producer_of[slot]][2]),
            )
            for slot in producer_of
        }
        copy_outputs = frozenset(k for k, slot in enumerate(plan.output_slots) if roots.get(slot))
        # Where recorded shapes hold for every run of the signature and a step's inputs were all
        # float32, the planned run calls the kernel itself: no shape or dtype checks per call.
        direct: list[Callable[..., Any] | None] = [None] * n
        if plan.shape_static:
            for i in offsets:
                kernel = plan.steps[i].kernel
                if kernel is not None and records[i][3]:
                    direct[i] = kernel.raw
        program = None
        if plan.shape_static and flags.EMBER_PROGRAM:
            program = lower_program(plan, input_shapes, records, offsets, arena.size)
        return cls(
            offsets, [r[0] for r in records], arena.size, copy_outputs, arena, direct, program
        )


class _ThreadArena(threading.local):
    """One arena per thread, shared by every layout (input shapes) of every plan it runs: a
    thread runs one plan at a time, so its arena is as big as the largest layout, not their sum.
    """

    def __init__(self) -> None:
        self.memory = np.empty(0, np.uint8)
        # layout -> its views into `memory`; weak, so a dropped Model's layouts go with it
        self.views: weakref.WeakKeyDictionary[ArenaLayout, list[np.ndarray | None]] = (
            weakref.WeakKeyDictionary()
        )


_thread_arena = _ThreadArena()


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
    native_kernels: bool = False,
    bf16: bool = False,
    arena: bool = False,
) -> Plan:
    """Compile `graph` (already verified) into a Plan computing `outputs` (default: graph outputs).

    `native_kernels`: run nodes on native CPU kernels where one applies (ignored in exact mode);
    `bf16`: let those kernels compute convolutions and matmuls in bfloat16; `arena`: write native
    kernels' outputs into a planned per-thread arena. Raises UnsupportedError listing every node
    whose op ember cannot run.
    """
    native_kernels = native_kernels and not exact
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
    constant_arrays: dict[ir.Value, np.ndarray] = {}
    for v in graph.initializers.values():
        if v in slots and v in graph.inputs:
            continue  # an initializer that is also an input: the caller's value wins
        if v.const_value is not None:
            constant_arrays[v] = tensor_array(v.const_value)
            constants.append((slot(v), constant_arrays[v]))

    produced = set(graph.inputs) | set(graph.initializers.values())
    for n in nodes:
        produced.update(o for o in n.outputs)

    def constant(v: ir.Value | None) -> np.ndarray | None:
        """The value's array when it is fixed at compile time (an initializer or a Constant)."""
        if v is None:
            return None
        if v in constant_arrays:
            return constant_arrays[v]
        producer = v.producer()
        if producer is not None and producer.op_type == "Constant" and producer.domain == "":
            value = producer.attributes.get("value")
            if value is not None and value.type == ir.AttributeType.TENSOR:
                return tensor_array(value.value)
        return None

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
        kernel = None
        if record is not None:
            try:
                fn, attrs = _bind_op(record, node, opset, exact)
            except UnsupportedError as e:
                unsupported.append(str(e))
                continue
            fallback = False
            if native_kernels and not subplans:
                kernel = native.select(node, attrs, fn, constant, opset=opset, bf16=bf16)
                if kernel is not None:
                    fn, attrs = kernel.fn, {}
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
        steps_raw.append((node, fn, tuple(in_slots), out_slots, attrs, subplans, fallback, kernel))

    if unsupported:
        raise UnsupportedError(
            "ember cannot run this model; unsupported: " + "; ".join(unsupported)
        )

    output_slots = tuple(slot(v) for v in wanted)
    # Free a slot right after its last reader, unless it is an output of the whole graph.
    last_use: dict[int, int] = {}
    for i, (_, _, ins, _, _, subplans, _, _) in enumerate(steps_raw):
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
    none_slot = len(slots)  # Plan._env_template: the slot that is always None
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
            kernel,
            tuple(none_slot if s is None else s for s in ins),
        )
        for i, (node, fn, ins, outs, attrs, subplans, fallback, kernel) in enumerate(steps_raw)
    )
    constant_slots = {slot for slot, _ in constants}
    shape_static = not any(
        step.subplans
        or step.fallback  # onnx.reference's ops: nothing known about their shapes
        or (
            step.node.op_type in _VALUE_SHAPED
            and any(s is not None and s not in constant_slots for s in step.inputs[1:])
        )
        or (step.node.op_type in _VALUE_SHAPED_ANY)
        for step in steps
    )
    return Plan(
        graph=graph,
        steps=steps,
        n_slots=len(slots),
        constants=tuple(constants),
        input_slots=input_slots,
        output_slots=output_slots,
        captures=tuple(captures),
        arena_enabled=arena and native_kernels and not captures,
        shape_static=shape_static,
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
