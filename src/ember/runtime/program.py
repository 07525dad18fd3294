"""Lowering a planned run into a C++ Program: a whole model run in one native call.

A shape-static plan's run for one input signature has fixed shapes and fixed arena offsets. When
every step of it is a native kernel that can lower itself (`native.Kernel.lower`) or a view of its
input (Reshape, Flatten, Squeeze, Unsqueeze: on contiguous memory, the same buffer with another
shape), the run becomes an `ember._C.Program` (csrc/program.h): Plan.run then makes one call per
model run, with the GIL released throughout, instead of one Python dispatch per step. For small
models that dispatch is most of the time: the MNIST MLP's three matmuls take about 8 us, and running
them step by step from Python added about 10 us more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ember.runtime.plan import Plan

# Ops that return a view of their first input when it is contiguous (every Program buffer is).
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})

_INPUT, _OUTPUT, _ARENA = 0, 1, 2  # buffer kinds, as ember._C.Program numbers them


@dataclasses.dataclass(frozen=True)
class Lowered:
    """A plan's run for one input signature, as one native call."""

    program: Any  # ember._C.Program
    output_shapes: tuple[tuple[int, ...], ...]

    def run(self, inputs: Sequence[Any], arena: np.ndarray) -> list[np.ndarray] | None:
        """The plan's outputs, or None when an input's layout needs the step-by-step run (a
        non-contiguous view): the caller falls back to it."""
        outputs = [np.empty(shape, np.float32) for shape in self.output_shapes]
        return outputs if self.program.run(inputs, arena, outputs) else None


def lower(
    plan: Plan,
    input_shapes: Sequence[tuple[int, ...] | None],
    records: Sequence[tuple[Any, ...]],
    offsets: Mapping[int, tuple[int, tuple[int, ...], np.dtype]],
    arena_bytes: int,
) -> Lowered | None:
    """The Program for a shape-static plan's run, or None when some step cannot be lowered.

    input_shapes: each graph input's shape (None: not a float32 array); records: the first run's
    (input shapes, output shape, dtype, all inputs float32) per step; offsets: step -> its output's
    arena offset (ArenaLayout).
    """
    from ember.kernels.cpu import _C

    if not plan.shape_static or len(set(plan.output_slots)) != len(plan.output_slots):
        return None
    buffers: list[tuple[int, int, tuple[int, ...]]] = []
    ref_of: dict[int, tuple[int, tuple[int, ...]]] = {}  # slot -> (buffer number, shape)
    for k, (slot, shape) in enumerate(zip(plan.input_slots, input_shapes, strict=True)):
        if shape is None:
            return None
        ref_of[slot] = (len(buffers), shape)
        buffers.append((_INPUT, k, shape))
    output_index = {slot: j for j, slot in enumerate(plan.output_slots)}
    constant_slots = {slot for slot, _ in plan.constants}
    steps = []
    for i, step in enumerate(plan.steps):
        _, out_shape, dtype, all_f32 = records[i]
        if len(step.outputs) != 1 or step.outputs[0] is None or dtype != np.float32:
            return None
        out_slot = step.outputs[0]
        ins = [None if s is None else ref_of.get(s) for s in step.inputs]
        unresolved = (
            s is not None and r is None and s not in constant_slots
            for s, r in zip(step.inputs, ins, strict=True)
        )
        if any(unresolved):
            return None  # reads a value no lowered step produced
        if step.kernel is None:
            source = ins[0] if ins else None
            if step.node.op_type not in VIEW_OPS or source is None or out_slot in output_index:
                return None
            ref_of[out_slot] = (source[0], tuple(out_shape))
            continue
        if step.kernel.lower is None or not all_f32 or not ins or ins[0] is None:
            return None
        if out_slot in output_index:
            buffer = (_OUTPUT, output_index[out_slot], tuple(out_shape))
        elif i in offsets:
            buffer = (_ARENA, offsets[i][0], tuple(out_shape))
        else:
            return None
        out_ref = (len(buffers), tuple(out_shape))
        lowered = step.kernel.lower(ins, out_ref)
        if lowered is None:
            return None
        buffers.append(buffer)
        steps.append(lowered)
        ref_of[out_slot] = out_ref
    produced = {b[1] for b in buffers if b[0] == _OUTPUT}
    if produced != set(range(len(plan.output_slots))):
        return None  # an output that is a graph input, a constant or a view
    output_shapes: list[tuple[int, ...]] = [()] * len(plan.output_slots)
    for kind, where, shape in buffers:
        if kind == _OUTPUT:
            output_shapes[where] = shape
    return Lowered(_C.Program(steps, buffers, arena_bytes), tuple(output_shapes))
