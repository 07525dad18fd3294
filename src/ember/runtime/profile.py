"""Where a model's time goes: per-step times, the top ops, what the optimizer fused, and memory.

`Model.profile(inputs)` builds a Profile; `ember profile model.onnx` prints one.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ember.runtime.model import Model
    from ember.runtime.plan import ArenaLayout, Plan


@dataclasses.dataclass(frozen=True)
class StepTime:
    index: int
    name: str  # the node's name
    op: str  # "Conv", "ai.ember::FusedConv"
    kernel: str  # "onednn conv", "reference", ...
    fused: str  # what the node replaced ("Conv+BatchNormalization+Relu"), "" if nothing
    seconds: float  # median over the profiled runs


@dataclasses.dataclass(frozen=True)
class Profile:
    model: str
    level: int
    threads: int | None
    steps: list[StepTime]
    total: float  # median wall time of a whole run, seconds
    arena_bytes: int | None  # None: no arena (exact mode, or outputs=)
    naive_bytes: int | None  # one buffer per arena-backed value
    peak_live_bytes: int | None
    # The run as one native Program (runtime/program.py): its kernel calls and median wall time.
    # Steps are timed step by step (the Program has no per-step clock), so they sum to more.
    program_calls: int | None = None
    program_total: float | None = None

    @classmethod
    def from_runs(
        cls,
        model: Model,
        plan: Plan,
        runs: list[list[float]],
        layout: ArenaLayout | None,
        program_runs: list[float] | None = None,
    ) -> Profile:
        steps = []
        for i, step in enumerate(plan.steps):
            node = step.node
            op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
            steps.append(
                StepTime(
                    index=i,
                    name=node.name or f"#{i}",
                    op=op,
                    kernel=step.kernel_name,
                    fused=node.metadata_props.get("ember.fused", ""),
                    seconds=statistics.median(r[i] for r in runs),
                )
            )
        report: Any = layout.report if layout is not None else None
        return cls(
            model=model.name,
            level=model.level,
            threads=model.threads,
            steps=steps,
            total=statistics.median(sum(r) for r in runs),
            arena_bytes=None if report is None else report.size,
            naive_bytes=None if report is None else report.naive,
            peak_live_bytes=None if report is None else report.peak_live,
            program_calls=None
            if program_runs is None or layout is None or layout.program is None
            else len(layout.program.program),
            program_total=statistics.median(program_runs) if program_runs else None,
        )

    def by_op(self) -> list[tuple[str, str, int, float]]:
        """(op, kernel, count, seconds) per op type and kernel, slowest first."""
        acc: dict[tuple[str, str], list[float]] = defaultdict(list)
        for s in self.steps:
            acc[(s.op, s.kernel)].append(s.seconds)
        rows = [(op, kernel, len(t), sum(t)) for (op, kernel), t in acc.items()]
        return sorted(rows, key=lambda r: -r[3])

    def fusions(self) -> dict[str, int]:
        """What the optimizer fused: replaced pattern -> how many nodes."""
        counts: dict[str, int] = defaultdict(int)
        for s in self.steps:
            if s.fused:
                counts[f"{s.fused} -> {s.op}"] += 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def format(self, top: int = 15) -> str:
        """The profile as text: top ops, slowest steps, fusions, memory."""
        total = self.total or 1e-12
        lines = [
            f"{self.model}: {self.total * 1e3:.3f} ms per run (median), {len(self.steps)} steps, "
            f"optimization level {self.level}, threads {self.threads or 'default'}",
        ]
        if self.program_total is not None:
            lines.append(
                f"runs as one native Program ({self.program_calls} kernel calls): "
                f"{self.program_total * 1e3:.3f} ms per run (median); the step times below are "
                "from step-by-step runs"
            )
        lines += [
            "",
            "top ops:",
            f"  {'op':<34} {'kernel':<18} {'count':>5} {'ms':>9} {'share':>6}",
        ]
        for op, kernel, n, sec in self.by_op()[:top]:
            lines.append(f"  {op:<34} {kernel:<18} {n:>5} {sec * 1e3:>9.3f} {sec / total:>6.1%}")
        lines += ["", "slowest steps:"]
        for s in sorted(self.steps, key=lambda s: -s.seconds)[:top]:
            lines.append(
                f"  {s.seconds * 1e3:>8.3f} ms  {s.op:<30} {s.kernel:<18} {s.name}"
                + (f"  [{s.fused}]" if s.fused else "")
            )
        fusions = self.fusions()
        lines += ["", "fused:" if fusions else "fused: nothing"]
        for pattern, n in fusions.items():
            lines.append(f"  {n:>4} x {pattern}")
        lines.append("")
        if self.arena_bytes is None:
            lines.append("memory: no arena (exact mode or named outputs)")
        elif not self.naive_bytes:
            lines.append("memory: no intermediate values in the arena (outputs are per run)")
        else:
            assert self.naive_bytes is not None and self.peak_live_bytes is not None
            lines.append(
                f"memory: activation arena {_mib(self.arena_bytes)} (peak live "
                f"{_mib(self.peak_live_bytes)}) vs {_mib(self.naive_bytes)} with one buffer "
                f"per value ({self.naive_bytes / max(self.arena_bytes, 1):.1f}x less)"
            )
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"
