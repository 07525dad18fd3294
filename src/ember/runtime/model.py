"""The user-facing Model: a loaded graph plus compiled Plans, inputs checked against its signature.

`ember.load(...)` returns one. It knows nothing about where requests come from.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from ember import flags
from ember.errors import ConfigError, InputError
from ember.ir import ModelSource, load_model
from ember.runtime.batching import batch_separable, chunk_size, run_in_chunks
from ember.runtime.plan import Plan, compile_graph

if TYPE_CHECKING:
    from ember.runtime.profile import Profile

#: precision= values: fp32 everywhere, or bf16 inside convolutions and matmuls (opt-in)
PRECISIONS = ("fp32", "bf16")


@functools.cache
def _blas_pool() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


def set_threads(n: int) -> None:
    """Threads for the native kernels (oneDNN's and ember's one OpenMP pool), process-wide."""
    global _set_num_threads
    if _set_num_threads is None:
        from ember.kernels.cpu import _C

        _set_num_threads = _C.set_num_threads
    _set_num_threads(n)


_set_num_threads: Any = None  # ember._C.set_num_threads, once the extension is imported


Dim = int | str | None  # a fixed size, a symbolic name, or unknown


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: its name, element type and shape (dims may be symbolic)."""

    name: str
    dtype: np.dtype[Any] | None  # None: not a tensor (sequence, optional, map) or unknown
    shape: tuple[Dim, ...] | None  # None: rank unknown

    def __str__(self) -> str:
        dims = (
            "?"
            if self.shape is None
            else "[" + ", ".join(str(d) if d is not None else "?" for d in self.shape) + "]"
        )
        return f"{self.name}: {self.dtype if self.dtype is not None else '?'}{dims}"


def tensor_spec(value: ir.Value) -> TensorSpec:
    """The TensorSpec of a graph value (dtype None for non-tensors, dims None when unknown)."""
    dtype = None
    if isinstance(value.type, ir.TensorType) and value.dtype is not None:
        try:
            dtype = np.dtype(value.dtype.numpy())
        except (TypeError, ValueError):
            dtype = None  # e.g. STRING: checked loosely
    shape: tuple[Dim, ...] | None = None
    if value.shape is not None:
        shape = tuple(
            d if isinstance(d, int) else (d.value if d.value else None) for d in value.shape
        )
    return TensorSpec(value.name or "", dtype, shape)


class Model:
    """A loaded model, ready to run. Thread-safe: many threads may call `run` at once.

    >>> import numpy as np, ember
    >>> from ember.zoo import model_path
    >>> m = ember.load(model_path("mnist_mlp"))
    >>> x = np.zeros((2, 784), np.float32)
    >>> m.run({"input": x})["logits"].shape
    (2, 10)
    """

    def __init__(
        self,
        model: ir.Model,
        *,
        exact: bool = False,
        name: str = "model",
        level: int | None = None,
        threads: int | None = None,
        precision: str = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
            )
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads must be a positive int or None, got {threads!r}")
        self.exact = exact
        self.name = name
        self.level = (0 if exact else 3) if level is None else level
        self.threads = threads if threads is not None else (flags.EMBER_THREADS or None)
        self.precision = precision
        # The signature is the model's, whatever the optimizer does to the graph.
        self.inputs = [tensor_spec(v) for v in model.graph.inputs]
        self.outputs = [tensor_spec(v) for v in model.graph.outputs]
        if self.level:
            from ember.passes import optimize

            optimize(model, self.level)
        self.ir = model
        graph = model.graph
        # An initializer listed as a graph input is a default the caller may override.
        self._optional_inputs = {v.name for v in graph.inputs if v.name in graph.initializers}
        self._output_names = tuple(o.name for o in self.outputs)
        self._values = {v.name: v for v in _all_values(graph)}
        self._input_names = tuple(v.name or "" for v in graph.inputs)
        self._checked: set[tuple[Any, ...]] = set()  # input (shape, dtype)s check_inputs passed
        # Large batches of per-sample graphs may run a few samples at a time (runtime/batching.py).
        self._split_batches = flags.EMBER_SPLIT_BATCH and not exact and batch_separable(graph)
        self._plans: dict[tuple[str, ...], Plan] = {}
        self._lock = threading.Lock()
        self.plan()  # compile now: unsupported ops fail at load, not at the first request

    @property
    def opsets(self) -> dict[str, int]:
        return dict(self.ir.opset_imports)

    def plan(self, outputs: Sequence[str] | None = None) -> Plan:
        """The compiled Plan computing `outputs` (default: the graph's outputs); cached."""
        key = tuple(outputs) if outputs is not None else self._output_names
        plan = self._plans.get(key)
        if plan is None:
            wanted = []
            for name in key:
                if name not in self._values:
                    gone = (
                        f" (optimization level {self.level} may have fused it away: load with "
                        "level=0 to read every intermediate)"
                        if self.level
                        else ""
                    )
                    raise InputError(
                        f"unknown output {name!r}{gone}; the model's outputs are "
                        f"{', '.join(o.name for o in self.outputs)}"
                    )
                wanted.append(self._values[name])
            with self._lock:
                plan = self._plans.get(key)
                if plan is None:
                    plan = compile_graph(
                        self.ir.graph,
                        self.opsets,
                        exact=self.exact,
                        outputs=wanted,
                        native_kernels=not self.exact,
                        bf16=self.precision == "bf16",
                        arena=outputs is None,
                    )
                    self._plans[key] = plan
        return plan

    def run(
        self, inputs: Mapping[str, Any], outputs: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Run the model. `outputs` may name any value in the graph, not only graph outputs."""
        plan = self.plan(outputs)
        results = self._run_plan(plan, self._args(inputs))
        return dict(
            zip(outputs if outputs is not None else self._output_names, results, strict=True)
        )

    def _args(self, inputs: Mapping[str, Any]) -> list[Any]:
        # Fast path: every input given as an ndarray, with shapes and dtypes already checked once
        # (check_inputs depends on nothing else); on a small model the full check costs as much
        # as the run.
        if type(inputs) is dict and len(inputs) == len(self._input_names):
            args = [inputs.get(name) for name in self._input_names]
            key = tuple([(a.shape, a.dtype) for a in args if isinstance(a, np.ndarray)])
            if len(key) == len(args) and key in self._checked:
                return args
        feeds = self.check_inputs(inputs)
        args = []
        for v in self.ir.graph.inputs:
            name = v.name or ""
            args.append(feeds[name] if name in feeds else _default(v))  # default only if absent
        key = tuple([(a.shape, a.dtype) for a in args if isinstance(a, np.ndarray)])
        if len(feeds) == len(args) == len(key):
            if len(self._checked) >= _MAX_CHECKED:
                self._checked.clear()
            self._checked.add(key)
        return args

    def _run_plan(
        self, plan: Plan, args: list[Any], timings: list[float] | None = None
    ) -> list[Any]:
        if self.threads is None:
            return self._execute(plan, args, timings)
        if not self.exact:
            # Process-wide: set on every run, so that models loaded with different counts each
            # run with their own.
            set_threads(self.threads)
        if not plan.uses_blas:
            return self._execute(plan, args, timings)
        # Reference ops on NumPy's BLAS pool get the same thread count; the two pools take turns
        # (ops run one at a time), so at most `threads` threads compute at once.
        with _blas_pool().limit(limits=self.threads):
            return self._execute(plan, args, timings)

    def _execute(self, plan: Plan, args: list[Any], timings: list[float] | None) -> list[Any]:
        """plan.run, or, for a large batch of a per-sample graph whose planned activations
        outgrow the cache, plan.run on a few samples at a time (runtime/batching.py)."""
        first = args[0] if args else None
        if (
            self._split_batches
            and isinstance(first, np.ndarray)
            and first.ndim
            and first.shape[0] > 1  # batch 1: nothing to split, and no lookup on the hot path
            and timings is None
            and plan.arena_enabled
        ):
            layout = plan._layouts.get(plan._signature(args))
            if layout is not None:
                chunk = chunk_size(layout.size, first.shape[0])
                if chunk is not None:
                    return run_in_chunks(plan.run, args, chunk)
        return plan.run(args, timings=timings)

    def profile(self, inputs: Mapping[str, Any], *, repeat: int = 10) -> Profile:
        """Per-step times over `repeat` runs (after one warm-up run) and the arena's memory."""
        from ember.runtime.profile import Profile

        plan = self.plan()
        args = self._args(inputs)
        self._run_plan(plan, args)  # warm-up: primitives built, arena laid out
        runs = []
        for _ in range(max(repeat, 1)):
            timings: list[float] = []
            self._run_plan(plan, args, timings)
            runs.append(timings)
        layout = plan.memory_layout(args)
        program_runs = None
        if layout is not None and layout.program is not None:
            program_runs = []
            for _ in range(max(repeat, 1)):
                start = time.perf_counter()
                self._run_plan(plan, args)
                program_runs.append(time.perf_counter() - start)
        return Profile.from_runs(self, plan, runs, layout, program_runs)

    def check_inputs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Validate `inputs` against the signature; InputError says expected vs got."""
        if not isinstance(inputs, Mapping):
            raise InputError(
                f"inputs must be a dict of name -> array, got {type(inputs).__name__}; "
                f"this model takes {', '.join(s.name for s in self.inputs)}"
            )
        known = {s.name: s for s in self.inputs}
        for name in inputs:
            if name not in known:
                raise InputError(
                    f"unknown input {name!r}; the model takes: {', '.join(map(str, self.inputs))}"
                )
        feeds: dict[str, Any] = {}
        bound: dict[str, tuple[int, str, int]] = {}  # symbolic dim -> (size, input, axis)
        for spec in self.inputs:
            if spec.name not in inputs:
                if spec.name in self._optional_inputs:
                    continue
                raise InputError(
                    f"missing input {spec.name!r} (expected {spec}); got inputs: "
                    f"{', '.join(inputs) or 'none'}"
                )
            value = inputs[spec.name]
            if spec.dtype is None:
                feeds[spec.name] = value  # sequences, optionals: passed through
                continue
            if not isinstance(value, np.ndarray):
                if isinstance(value, np.generic | int | float | bool | list | tuple):
                    value = np.asarray(value)
                else:
                    raise InputError(
                        f"input {spec.name!r}: expected a NumPy array, got {type(value).__name__}"
                    )
            if value.dtype != spec.dtype and not (
                spec.dtype.kind in "OUS" and value.dtype.kind in "OUS"
            ):
                raise InputError(
                    f"input {spec.name!r}: expected dtype {spec.dtype}, got {value.dtype}; "
                    f"convert it with .astype(np.{spec.dtype})"
                )
            if spec.shape is not None:
                if value.ndim != len(spec.shape):
                    raise InputError(
                        f"input {spec.name!r}: expected rank {len(spec.shape)} "
                        f"(shape {list(spec.shape)}), got rank {value.ndim} "
                        f"(shape {list(value.shape)})"
                    )
                for axis, (want, got) in enumerate(zip(spec.shape, value.shape, strict=True)):
                    if isinstance(want, int) and want != got:
                        raise InputError(
                            f"input {spec.name!r}: expected shape {list(spec.shape)}, got "
                            f"{list(value.shape)} (axis {axis} must be {want}, got {got})"
                        )
                    if isinstance(want, str):
                        if want in bound and bound[want][0] != got:
                            size, other, other_axis = bound[want]
                            raise InputError(
                                f"input {spec.name!r}: axis {axis} is dim {want!r} = {got}, but "
                                f"input {other!r} axis {other_axis} set {want!r} = {size}"
                            )
                        bound[want] = (got, spec.name, axis)
            feeds[spec.name] = value
        return feeds

    def __repr__(self) -> str:
        ins = ", ".join(map(str, self.inputs))
        outs = ", ".join(map(str, self.outputs))
        return f"<ember.Model {self.name!r} ({ins}) -> ({outs})>"


_MAX_CHECKED = 64  # input signatures remembered as valid, per model


def _default(value: ir.Value) -> Any:
    return value.const_value.numpy() if value.const_value is not None else None


def _all_values(graph: ir.Graph) -> list[ir.Value]:
    values = list(graph.inputs) + list(graph.initializers.values())
    for n in graph:
        values.extend(v for v in n.outputs if v.name)
    return values


def load(
    source: ModelSource,
    *,
    exact: bool = False,
    level: int | None = None,
    threads: int | None = None,
    precision: str = "fp32",
) -> Model:
    """Load an ONNX model (path, bytes, ModelProto or onnx_ir.Model) and compile it for running.

    `exact=True` uses only the reference ops, unoptimized, accumulating in float64 where the spec
    allows: the oracle for accuracy reports. Otherwise the graph is optimized at `level` (0-3,
    default 3; see ember.passes) and runs on native kernels with `threads` threads (default: the
    EMBER_THREADS environment variable, else one per core). `precision="bf16"` lets convolutions
    and matmuls compute in bfloat16 (faster on CPUs with AVX-512 BF16, about 3 significant digits).
    An onnx_ir.Model passed in is copied, not changed.

    >>> import ember
    >>> from ember.zoo import model_path
    >>> ember.load(model_path("digits_cnn")).inputs[0].shape
    ('batch', 1, 8, 8)
    """
    name = "model"
    if isinstance(source, str) or hasattr(source, "__fspath__"):
        from pathlib import Path

        name = Path(source).stem  # type: ignore[arg-type]
    elif isinstance(source, ir.Model):
        source = ir.serde.deserialize_model(ir.serde.serialize_model(source))
    return Model(
        load_model(source),
        exact=exact,
        name=name,
        level=level,
        threads=threads,
        precision=precision,
    )
