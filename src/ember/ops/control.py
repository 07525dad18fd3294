"""Control-flow ops: If, Loop and Scan, running their GRAPH attributes as `Subgraph` callables.

The runtime binds outer-scope values; these ops only feed the formal inputs and collect outputs.
A loop that runs zero times still owes its scan outputs: their dtype and fixed dims come from the
body graph's declared output types (unknown dims become 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ember.ops.common import normalize_axis
from ember.ops.registry import op

if TYPE_CHECKING:
    from ember.runtime.plan import Subgraph


def _scalar_bool(x: Any, what: str) -> bool:
    a = np.asarray(x)
    if a.size != 1:
        raise ValueError(f"{what} must hold exactly one element, got shape {a.shape}")
    return bool(a.reshape(-1)[0])


def _empty_scan_output(body: Subgraph, index: int, leading: int = 0) -> np.ndarray:
    """A zero-length scan output for body output `index`, from its declared type."""
    value = body.outputs[index]
    dtype: Any = np.float32
    if value.dtype is not None:
        try:
            dtype = value.dtype.numpy()
        except (TypeError, ValueError):
            dtype = object  # STRING
    dims: list[int] = []
    if value.shape is not None:
        dims = [d if isinstance(d, int) else 0 for d in value.shape]
    return np.zeros((*([0] * (leading + 1)), *dims), dtype=dtype)


@op
def If(cond: np.ndarray, *, then_branch: Subgraph, else_branch: Subgraph) -> tuple[Any, ...]:
    """Run `then_branch` or `else_branch`; their outputs (tensors, sequences or optionals) are
    the node's outputs."""
    branch = then_branch if _scalar_bool(cond, "If's cond") else else_branch
    return tuple(branch())


@op
def Loop(
    M: np.ndarray | None = None,
    cond: np.ndarray | None = None,
    *v_initial: Any,
    body: Subgraph,
) -> tuple[Any, ...]:
    """for i in range(M) while cond: body(i, cond, *carried) -> (cond, *carried, *scan outputs).

    Returns the final loop-carried values, then each scan output stacked along a new axis 0.
    Omitted M / cond mean "no trip limit" / "start true" (like onnxruntime, the body's cond output
    is always honoured).
    """
    trip_count = None if M is None else int(np.asarray(M).reshape(-1)[0])
    keep_going = True if cond is None else _scalar_bool(cond, "Loop's cond")
    carried = list(v_initial)
    n_carried = len(carried)
    if body.n_inputs != 2 + n_carried:
        raise ValueError(
            f"Loop body takes {body.n_inputs} inputs but the node gives 2 + {n_carried} "
            "(iteration number, cond, loop-carried values)"
        )
    scans: list[list[Any]] | None = None
    i = 0
    while keep_going and (trip_count is None or i < trip_count):
        outs = body(np.array(i, dtype=np.int64), np.array(keep_going), *carried)
        if len(outs) < 1 + n_carried:
            raise ValueError(
                f"Loop body returned {len(outs)} outputs, expected at least 1 + {n_carried}"
            )
        keep_going = _scalar_bool(outs[0], "Loop body's cond output")
        carried = list(outs[1 : 1 + n_carried])
        if scans is None:
            scans = [[] for _ in outs[1 + n_carried :]]
        for acc, value in zip(scans, outs[1 + n_carried :], strict=True):
            acc.append(value)
        i += 1
    n_scans = body.n_outputs - 1 - n_carried
    if scans is None:
        stacked = [_empty_scan_output(body, 1 + n_carried + k) for k in range(n_scans)]
    else:
        stacked = [_stack(acc, "Loop", k) for k, acc in enumerate(scans)]
    return (*carried, *stacked)


def _stack(values: list[Any], op_name: str, k: int) -> np.ndarray:
    shapes = {np.shape(v) for v in values}
    if len(shapes) > 1:
        raise ValueError(
            f"{op_name} scan output {k} changes shape across iterations: {sorted(shapes)}"
        )
    return np.stack([np.asarray(v) for v in values])


@op
def Scan_8(
    sequence_lens: np.ndarray | None,
    *args: np.ndarray,
    body: Subgraph,
    num_scan_inputs: int,
    directions: list[int] | None = None,
) -> tuple[np.ndarray, ...]:
    """Opset-8 Scan: every input has a batch axis 0 and scans along axis 1; `sequence_lens`
    gives each batch entry's length (its scan outputs are zero past it)."""
    n_state = len(args) - num_scan_inputs
    if n_state < 0:
        raise ValueError(f"num_scan_inputs={num_scan_inputs} but Scan got {len(args)} inputs")
    states, scan_in = list(args[:n_state]), list(args[n_state:])
    directions = list(directions) if directions is not None else [0] * num_scan_inputs
    if len(directions) != num_scan_inputs:
        raise ValueError(f"directions needs {num_scan_inputs} entries, got {directions}")
    batch = args[0].shape[0] if args else 0
    T = scan_in[0].shape[1] if scan_in else 0
    lens = (
        np.full(batch, T, dtype=np.int64)
        if sequence_lens is None
        else np.asarray(sequence_lens, dtype=np.int64).reshape(-1)
    )
    final_states: list[list[np.ndarray]] = [[] for _ in states]
    scan_out: list[list[np.ndarray]] = []
    for b in range(batch):
        state = [s[b] for s in states]
        n = int(lens[b])
        steps: list[list[np.ndarray]] = []
        for t in range(n):
            xs = [x[b, n - 1 - t if rev else t] for x, rev in zip(scan_in, directions, strict=True)]
            outs = body(*state, *xs)
            state = list(outs[:n_state])
            steps.append(list(outs[n_state:]))
        for acc, s in zip(final_states, state, strict=True):
            acc.append(np.asarray(s))
        n_out = body.n_outputs - n_state
        per_output = []
        for k in range(n_out):
            if steps:
                y = _stack([s[k] for s in steps], "Scan", k)
                pad = np.zeros((T - n, *y.shape[1:]), dtype=y.dtype)
                per_output.append(np.concatenate([y, pad]))
            else:
                empty = _empty_scan_output(body, n_state + k)
                per_output.append(np.zeros((T, *empty.shape[1:]), dtype=empty.dtype))
        scan_out.append(per_output)
    n_out = body.n_outputs - n_state
    stacked_states = [np.stack(acc) for acc in final_states]
    if batch == 0:
        stacked_scans = [_empty_scan_output(body, n_state + k, leading=1) for k in range(n_out)]
    else:
        stacked_scans = [np.stack([per[k] for per in scan_out]) for k in range(n_out)]
    return (*stacked_states, *stacked_scans)


@op
def Scan_9(
    *args: np.ndarray,
    body: Subgraph,
    num_scan_inputs: int,
    scan_input_axes: list[int] | None = None,
    scan_input_directions: list[int] | None = None,
    scan_output_axes: list[int] | None = None,
    scan_output_directions: list[int] | None = None,
) -> tuple[np.ndarray, ...]:
    """Scan: body(*states, *slices) -> (*states, *scan outputs); slices are taken along each scan
    input's axis (reversed for direction 1), scan outputs stacked along their output axis."""
    n_state = len(args) - num_scan_inputs
    if n_state < 0 or num_scan_inputs < 1:
        raise ValueError(f"num_scan_inputs={num_scan_inputs} but Scan got {len(args)} inputs")
    states, scan_in = list(args[:n_state]), list(args[n_state:])
    in_axes = _per_scan(scan_input_axes, num_scan_inputs, "scan_input_axes")
    in_dirs = _per_scan(scan_input_directions, num_scan_inputs, "scan_input_directions")
    scan_in = [
        np.moveaxis(x, normalize_axis(a, x.ndim, name="scan_input_axes entry"), 0)
        for x, a in zip(scan_in, in_axes, strict=True)
    ]
    scan_in = [x[::-1] if d else x for x, d in zip(scan_in, in_dirs, strict=True)]
    lengths = {x.shape[0] for x in scan_in}
    if len(lengths) != 1:
        raise ValueError(f"Scan inputs have different lengths along their scan axes: {lengths}")
    (T,) = lengths
    n_out = body.n_outputs - n_state
    out_axes = _per_scan(scan_output_axes, n_out, "scan_output_axes")
    out_dirs = _per_scan(scan_output_directions, n_out, "scan_output_directions")
    steps: list[list[Any]] = []
    for t in range(T):
        outs = body(*states, *(x[t] for x in scan_in))
        states = list(outs[:n_state])
        steps.append(list(outs[n_state:]))
    results = []
    for k in range(n_out):
        if steps:
            per_step = [s[k] for s in steps]
            if out_dirs[k]:
                per_step.reverse()  # the first iteration's value goes last
            y = _stack(per_step, "Scan", k)
        else:
            y = _empty_scan_output(body, n_state + k)
        axis = normalize_axis(out_axes[k], y.ndim, name="scan_output_axes entry")
        results.append(np.moveaxis(y, 0, axis))
    return (*states, *results)


def _per_scan(values: list[int] | None, n: int, name: str) -> list[int]:
    if values is None:
        return [0] * n
    if len(values) != n:
        raise ValueError(f"{name} needs {n} entries, got {list(values)}")
    return list(values)
