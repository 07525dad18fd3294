"""The self-contained HTML report: tables, the fairness notes and three plots as inline SVG.

Plots (matplotlib, text kept as text): latency distribution per engine (`#plot-latency`),
throughput vs batch (`#plot-throughput`) and speed vs accuracy, one point per engine and precision
(`#plot-accuracy`). No external file, script or font is referenced: the page can be mailed.
"""

from __future__ import annotations

import html
import io
import re
from typing import Any

from ember.bench.console import _engine_label, fmt_agreement, fmt_bytes, fmt_ratio
from ember.errors import ConfigError

COLORS = ["#d9480f", "#1c7ed6", "#2b8a3e", "#7048e8", "#e67700", "#0c8599", "#c2255c", "#495057"]
PLOTS = ("plot-latency", "plot-throughput", "plot-accuracy")


def require_matplotlib() -> None:
    """Fail before a long run, not after it, when the HTML report cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--html needs matplotlib for its plots: pip install matplotlib (or 'ember[bench]')"
        ) from None


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig: Any) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9}):
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: inline SVG needs neither


def _ok(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in doc["results"] if r["status"] == "ok"]


def plot_latency(doc: dict[str, Any]) -> str:
    """Box plots of per-call latency, a row of engines per batch; log scale when spread wide."""
    engines = {e["name"]: e for e in doc["engines"]}
    colors = {name: COLORS[i % len(COLORS)] for i, name in enumerate(engines)}
    batches = doc["config"]["batches"]
    fig = _figure(8, 0.6 + 2.2 * len(batches))
    axes = fig.subplots(len(batches), 1, squeeze=False)[:, 0]
    for ax, batch in zip(axes, batches, strict=True):
        rows = [r for r in _ok(doc) if r["batch"] == batch]
        if not rows:
            ax.text(0.5, 0.5, f"batch {batch}: no engine ran", ha="center", transform=ax.transAxes)
            continue
        data = [r["samples_ms"] for r in rows]
        parts = ax.boxplot(
            data,
            orientation="horizontal",
            whis=(1, 99),
            showfliers=True,
            patch_artist=True,
            flierprops={"markersize": 2, "alpha": 0.4},
        )
        for patch, r in zip(parts["boxes"], rows, strict=True):
            patch.set_facecolor(colors[r["engine"]])
            patch.set_alpha(0.6)
        ax.set_yticks(range(1, len(rows) + 1), [_engine_label(engines[r["engine"]]) for r in rows])
        lo = min(min(d) for d in data)
        hi = max(max(d) for d in data)
        if lo > 0 and hi / lo > 20:
            ax.set_xscale("log")
        ax.set_title(f"batch {batch}: latency per call (ms); whiskers p1-p99", loc="left")
        ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def plot_throughput(doc: dict[str, Any]) -> str:
    """Samples per second against batch size, one line per engine, log-log."""
    engines = {e["name"]: e for e in doc["engines"]}
    fig = _figure(7, 4)
    ax = fig.subplots()
    for i, name in enumerate(engines):
        rows = sorted((r for r in _ok(doc) if r["engine"] == name), key=lambda r: r["batch"])
        if rows:
            ax.plot(
                [r["batch"] for r in rows],
                [r["latency"]["throughput_median_sps"] for r in rows],
                "o-",
                color=COLORS[i % len(COLORS)],
                label=_engine_label(engines[name]),
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(doc["config"]["batches"], [str(b) for b in doc["config"]["batches"]])
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples / s (batch / median latency)")
    ax.set_title("throughput vs batch", loc="left")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _svg(fig)


def plot_accuracy(doc: dict[str, Any]) -> str:
    """Speed (samples/s at the largest batch every engine ran) against max abs error vs exact."""
    engines = {e["name"]: e for e in doc["engines"]}
    fig = _figure(7, 4)
    ax = fig.subplots()
    floor = 1e-12  # an exact match (error 0) sits on the floor of the log axis, and is labelled
    for i, name in enumerate(engines):
        rows = [r for r in _ok(doc) if r["engine"] == name and r["agreement"] is not None]
        if not rows:
            continue
        r = max(rows, key=lambda r: r["batch"])
        err = r["agreement"]["max_abs_err"]
        label = f"{_engine_label(engines[name])}, batch {r['batch']}" + (
            " (exact match)" if err == 0 else ""
        )
        ax.scatter(
            [r["latency"]["throughput_median_sps"]],
            [max(err, floor)],
            s=60,
            color=COLORS[i % len(COLORS)],
            label=label,
            zorder=3,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("samples / s at the largest batch (batch / median latency)")
    ax.set_ylabel("max abs error vs ember exact mode")
    ax.set_title(
        "speed vs accuracy, per engine and precision (right and low: better)",
        loc="left",
    )
    ax.grid(alpha=0.3, which="both")
    ax.margins(0.15)
    ax.legend(fontsize=8)
    return _svg(fig)


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def render_html(doc: dict[str, Any]) -> str:
    """The whole report as one HTML page."""
    require_matplotlib()
    e = html.escape
    cfg = doc["config"]
    engines = {x["name"]: x for x in doc["engines"]}
    parts = [
        f"<h1>ember bench: {e(doc['model']['name'])}</h1>",
        f"<p class=meta>{e(doc['machine']['time'])} &middot; "
        f"{e(doc['machine'].get('cpu_model') or '?')} "
        f"&middot; {cfg['threads']} threads &middot; precision {e(cfg['precision'])} &middot; "
        f"batches {', '.join(map(str, cfg['batches']))}</p>",
    ]
    if doc["ratios"]:
        peers = list(dict.fromkeys(r["peer"] for r in doc["ratios"]))
        rows = []
        for p in peers:
            cells = {r["batch"]: fmt_ratio(r) for r in doc["ratios"] if r["peer"] == p}
            rows.append(
                [e(_engine_label(engines[p]))] + [e(cells.get(b, "-")) for b in cfg["batches"]]
            )
        parts += [
            "<h2>ember speed / peer speed</h2>",
            "<p>&gt;1: ember is faster. Median time per sample; 95% bootstrap interval.</p>",
            _table(["peer"] + [f"batch {b}" for b in cfg["batches"]], rows),
        ]
    rows = []
    for r in doc["results"]:
        label = e(_engine_label(engines[r["engine"]]))
        if r["status"] != "ok":
            rows.append(
                [label, str(r["batch"]), f"<span class=err>error: {e(str(r['error']))}</span>"]
                + [""] * 10
            )
            continue
        lat, mem, agr = r["latency"], r["memory"] or {}, r["agreement"]
        rows.append(
            [
                label,
                str(r["batch"]),
                f"{lat['median_ms']:.3f}",
                f"{lat['p90_ms']:.3f}",
                f"{lat['p99_ms']:.3f}",
                f"{lat['throughput_median_sps']:,.0f}",
                f"{lat['throughput_sps']:,.0f}",
                f"{r['load_s']:.3f}",
                f"{r['first_call_s']:.3f}",
                e(fmt_bytes(mem.get("peak_delta_bytes"))),
                "-" if agr is None else f"{agr['max_abs_err']:.2e}",
                e(fmt_agreement(agr)),
                str(lat["n"]),
            ]
        )
    parts += [
        "<h2>Results</h2>",
        _table(
            [
                "engine",
                "batch",
                "median ms",
                "p90 ms",
                "p99 ms",
                "samples/s",
                "samples/s (all calls)",
                "load s",
                "first call s",
                "peak mem",
                "max abs err",
                "agreement",
                "calls",
            ],
            rows,
        ),
        "<p>samples/s: batch / median latency; (all calls): samples / total time, which a busy "
        "machine "
        "drags down. peak mem: the engine process's peak RSS during the batch minus its RSS before "
        "loading.</p>",
    ]
    parts.append("<h2>Plots</h2>")
    for pid, title, fn in (
        ("plot-latency", "Latency distribution per engine", plot_latency),
        ("plot-throughput", "Throughput vs batch", plot_throughput),
        ("plot-accuracy", "Speed vs accuracy", plot_accuracy),
    ):
        parts.append(f'<figure id="{pid}">{fn(doc)}<figcaption>{e(title)}</figcaption></figure>')
    parts.append(
        "<h2>Fairness and method</h2><ul>"
        + "".join(f"<li>{e(x)}</li>" for x in doc["fairness"])
        + "</ul>"
    )
    if doc["skipped"]:
        parts.append(
            "<h2>Skipped</h2><ul>"
            + "".join(f"<li>{e(s['message'])}</li>" for s in doc["skipped"])
            + "</ul>"
        )
    rows = [
        [
            e(x["label"]),
            e(x["version"] or "?"),
            e(x["precision_ran"] or "-"),
            e(x["isolation"] or "-"),
            e("; ".join(x["notes"])),
            e(", ".join(f"{k}={v}" for k, v in x["settings"].items())),
        ]
        for x in doc["engines"]
    ]
    parts += [
        "<h2>Engines</h2>",
        _table(["engine", "version", "ran", "isolation", "notes", "settings"], rows),
    ]
    m = doc["machine"]
    flags = ", ".join(k for k, v in (m.get("cpu_flags") or {}).items() if v)
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    parts.append(
        f"<h2>Machine</h2><p>{e(m.get('cpu_model') or '?')}; flags: {e(flags or '?')}; "
        f"{m.get('cpu_affinity')} usable CPUs of {m.get('cpu_count')}; {e(m['platform'])}; "
        f"load average {m.get('load_average')} at start, {m.get('load_average_end')} at end.</p>"
        f"<p>{e(versions)}</p>"
    )
    title = f"ember bench: {doc['model']['name']}"
    page = (
        f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{e(title)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    return re.sub(r"\n\s*\n", "\n", page)


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}.meta{color:#666}.err{color:#c00}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}figcaption{color:#666}
"""
