"""What a benchmark shows on the terminal: a progress bar while it runs, then rich tables.

Progress and notes (skipped peers, failures) go to stderr; tables go to stdout. On a terminal the
progress is a live bar; elsewhere (CI logs, pipes) only the notes are printed, one line each.
"""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """A progress bar over `total` units of work, plus permanent one-line notes.

    >>> p = Progress(enabled=False)
    >>> p.start(3, "x"); p.advance(); p.note("skipping OpenVINO: not installed"); p.stop()
    """

    def __init__(self, enabled: bool = True, console: Any = None) -> None:
        self.enabled = enabled
        self.console = console
        self._bar: Any = None
        self._task: Any = None

    def _console(self) -> Any:
        if self.console is None:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        return self.console

    def start(self, total: int, description: str) -> None:
        if not self.enabled or not self._console().is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        self._bar = Bar(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=self._console(), transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def update(self, description: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=description)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def note(self, line: str) -> None:
        """A line that stays: printed even when the bar is off (unless progress is disabled)."""
        if not self.enabled:
            return
        console = self._console()
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            console.print(line, markup=False, highlight=False)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def fmt_ratio(r: dict[str, Any]) -> str:
    """0.0312 -> "0.031x [0.030-0.033]": ember's speed over the peer's, with its 95% interval.

    >>> fmt_ratio({"value": 2.5, "low": 2.4, "high": 2.61})
    '2.50x [2.40-2.61]'
    """
    return f"{_sig(r['value'])}x [{_sig(r['low'])}-{_sig(r['high'])}]"


def _sig(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.2g}" if x < 0.01 else f"{x:.3f}"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.1f} MiB"


def fmt_agreement(a: dict[str, Any] | None) -> str:
    if a is None:
        return "-"
    if "top1_agreement" in a:
        return f"top-1 {a['top1_agreement']:.1%}"
    return f"cos {a['cosine_min']:.6f}"


def print_report(doc: dict[str, Any], console: Any = None) -> None:
    """The terminal view of a report: ratios first, then per-engine numbers, then the fine print."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(highlight=False, soft_wrap=True)
    cfg = doc["config"]
    engines = {e["name"]: e for e in doc["engines"]}
    console.print(
        f"[bold]{escape(doc['model']['name'])}[/bold]: {cfg['threads']} threads, precision {cfg['precision']}, "
        f"batches {', '.join(map(str, cfg['batches']))}, {cfg['min_time_s']:g} s per engine and batch, "
        f"{escape(doc['machine'].get('cpu_model') or 'unknown CPU')}"
    )
    if doc["ratios"]:
        t = Table(title="ember speed / peer speed (>1: ember faster; median per sample, 95% bootstrap interval)",
                  title_justify="left")
        t.add_column("peer")
        for b in cfg["batches"]:
            t.add_column(f"batch {b}", justify="right")
        for name in dict.fromkeys(r["peer"] for r in doc["ratios"]):
            cells = {r["batch"]: fmt_ratio(r) for r in doc["ratios"] if r["peer"] == name}
            t.add_row(escape(_engine_label(engines[name])), *(cells.get(b, "-") for b in cfg["batches"]))
        console.print(t)
    t = Table(title="per engine and batch (latency per call in ms; agreement with ember exact mode)",
              title_justify="left")
    for col, just in (("engine", "left"), ("batch", "right"), ("median", "right"), ("p90", "right"),
                      ("p99", "right"), ("samples/s", "right"), ("load s", "right"), ("first s", "right"),
                      ("peak mem", "right"), ("max abs err", "right"), ("agreement", "right"), ("n", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in doc["results"]:
        label = escape(_engine_label(engines[r["engine"]]))
        if r["status"] != "ok":
            t.add_row(label, str(r["batch"]), f"[red]error[/red]: {escape(str(r['error']))[:80]}")
            continue
        lat, mem, agr = r["latency"], r["memory"] or {}, r["agreement"]
        t.add_row(
            label, str(r["batch"]), f"{lat['median_ms']:.3f}", f"{lat['p90_ms']:.3f}", f"{lat['p99_ms']:.3f}",
            f"{lat['throughput_sps']:,.0f}", f"{r['load_s']:.3f}", f"{r['first_call_s']:.3f}",
            fmt_bytes(mem.get("peak_delta_bytes")), "-" if agr is None else f"{agr['max_abs_err']:.2e}",
            fmt_agreement(agr), str(lat["n"]),
        )
    console.print(t)
    console.print("peak mem: the engine process's peak RSS during the batch minus its RSS before loading")
    for s in doc["skipped"]:
        console.print(f"skipped: {escape(s['message'])}")
    for line in doc["fairness"]:
        console.print(f"- {escape(line)}")


def _engine_label(e: dict[str, Any]) -> str:
    ran = e.get("precision_ran")
    if e["peer"] == "openvino" and e["precision"] == "default" and ran:
        return f"{e['label'][:-1]}: {ran})"
    return str(e["label"])
