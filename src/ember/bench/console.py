"""What a benchmark shows on the terminal: a progress bar while it runs, then rich tables.

Progress and notes (skipped peers, failures) go to stderr; tables go to stdout. On a terminal the
progress is a live bar; elsewhere (CI logs, pipes) only the notes are printed, one line each.
"""

from __future__ import annotations

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
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self._console(),
            transient=True,
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


def fmt_agreement(a: dict[str, Any] | None, short: bool = False) -> str:
    """ "top-1 100%" for a classifier; for an embedding "1-cos 2.4e-08", one minus the smallest
    cosine similarity over samples (0.99999998 would hide the digits that matter).

    >>> fmt_agreement({"cosine_min": 0.9999999}), fmt_agreement({"top1_agreement": 1.0}, short=True)
    ('1-cos 1.0e-07', '100%')
    """
    if a is None:
        return "-"
    if "top1_agreement" in a:
        text = f"{a['top1_agreement']:.1%}".replace("100.0%", "100%")
        return text if short else f"top-1 {text}"
    gap = f"{max(0.0, 1.0 - a['cosine_min']):.1e}"
    return gap if short else f"1-cos {gap}"


def print_report(doc: dict[str, Any], console: Any = None) -> None:
    """The terminal view of a report: ratios first, then speed, then cost and accuracy, then the
    fine print. Sized to stay readable in 80 columns."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(highlight=False, soft_wrap=True)
    cfg = doc["config"]
    engines = {e["name"]: e for e in doc["engines"]}
    console.print(
        f"[bold]{escape(doc['model']['name'])}[/bold]: {cfg['threads']} threads, "
        f"precision {cfg['precision']}, batches {', '.join(map(str, cfg['batches']))}, "
        f"{cfg['min_time_s']:g} s per engine and batch, "
        f"{escape(doc['machine'].get('cpu_model') or 'unknown CPU')}"
    )

    def table(title: str, *cols: str) -> Any:
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for i, col in enumerate(cols):
            t.add_column(col, justify="left" if i == 0 else "right", no_wrap=i == 0)
        return t

    if doc["ratios"]:
        t = table(
            "ember speed / peer speed (>1: ember faster; 95% interval)",
            "peer",
            *(f"batch {b}" for b in cfg["batches"]),
        )
        for name in dict.fromkeys(r["peer"] for r in doc["ratios"]):
            cells = {r["batch"]: fmt_ratio(r) for r in doc["ratios"] if r["peer"] == name}
            t.add_row(
                escape(_engine_label(engines[name])), *(cells.get(b, "-") for b in cfg["batches"])
            )
        console.print(t)
    speed = table(
        "latency per call (ms) and throughput",
        "engine",
        "batch",
        "median",
        "p90",
        "p99",
        "samples/s",
        "overall",
        "calls",
    )
    cost = table(
        "cost, and agreement with ember's exact mode",
        "engine",
        "batch",
        "load ms",
        "1st ms",
        "peak MiB",
        "abs err",
        "rel err",
        "top-1" if doc["model"]["task"] == "classify" else "1-cos",
    )
    for r in doc["results"]:
        name = escape(r["engine"])
        if r["status"] != "ok":
            speed.add_row(name, str(r["batch"]), "[red]error[/red]")
            cost.add_row(name, str(r["batch"]), "[red]error[/red]: " + escape(str(r["error"]))[:60])
            continue
        lat, mem, agr = r["latency"], r["memory"] or {}, r["agreement"]
        speed.add_row(
            name,
            str(r["batch"]),
            _ms(lat["median_ms"]),
            _ms(lat["p90_ms"]),
            _ms(lat["p99_ms"]),
            f"{lat['throughput_median_sps']:,.0f}",
            f"{lat['throughput_sps']:,.0f}",
            str(lat["n"]),
        )
        cost.add_row(
            name,
            str(r["batch"]),
            _ms(r["load_s"] * 1e3),
            _ms(r["first_call_s"] * 1e3),
            _mib(mem.get("peak_delta_bytes")),
            "-" if agr is None else f"{agr['max_abs_err']:.1e}",
            "-" if agr is None else f"{agr['max_rel_err']:.1e}",
            fmt_agreement(agr, short=True),
        )
    console.print(speed)
    console.print(cost)
    console.print(
        "samples/s: batch / median latency; overall: samples / total time, which a busy machine "
        "drags down. peak MiB: the engine process's peak RSS in the batch minus its RSS before "
        "loading. "
        "abs/rel err: max over outputs, rel = abs / max |exact|."
    )
    for e in doc["engines"]:
        line = f"{e['name']}: {_engine_label(e)} {e['version'] or ''}"
        if e["status"] != "ok":
            line += f" [failed: {e['error']}]"
        console.print(escape(line.rstrip() + ("; " + "; ".join(e["notes"]) if e["notes"] else "")))
    for s in doc["skipped"]:
        console.print(f"skipped: {escape(s['message'])}")
    for line in doc["fairness"]:
        console.print(f"- {escape(line)}")


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _ms(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:,.0f}"


def _engine_label(e: dict[str, Any]) -> str:
    ran = e.get("precision_ran")
    if e["peer"] == "openvino" and e["precision"] == "default" and ran:
        return f"{e['label'][:-1]}: {ran})"
    return str(e["label"])
