"""A finished benchmark: the JSON document (layout in ember.bench.schema) and its writers.

BenchReport wraps the document; it writes JSON, the HTML report (ember.bench.html) and the terminal
tables (ember.bench.console). `fairness_notes` states, in words, how every engine was configured.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class BenchReport:
    """The result of `ember.bench(...)`: `data` is the JSON document (see ember.bench.schema)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @property
    def results(self) -> list[dict[str, Any]]:
        return list(self.data["results"])

    @property
    def ratios(self) -> list[dict[str, Any]]:
        return list(self.data["ratios"])

    def result(self, engine: str, batch: int) -> dict[str, Any]:
        """The row of one engine at one batch size."""
        for r in self.data["results"]:
            if r["engine"] == engine and r["batch"] == batch:
                return r
        raise KeyError(f"no result for engine {engine!r} at batch {batch}")

    def ratio(self, peer: str, batch: int) -> float | None:
        """ember's speed over `peer`'s at `batch` (>1: ember faster), or None if either failed."""
        for r in self.data["ratios"]:
            if r["peer"] == peer and r["batch"] == batch:
                return float(r["value"])
        return None

    def to_json(self) -> str:
        return json.dumps(self.data, indent=1, allow_nan=False, default=_jsonable)

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        return _write_atomic(Path(path), self.to_json())

    def write_html(self, path: str | os.PathLike[str]) -> Path:
        from ember.bench.html import render_html

        return _write_atomic(Path(path), render_html(self.data))

    def print(self, console: Any = None) -> None:
        from ember.bench.console import print_report

        print_report(self.data, console)

    def __repr__(self) -> str:
        return f"<BenchReport {self.data['model']['name']!r}: {len(self.data['results'])} results>"


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # NumPy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def fairness_notes(doc: dict[str, Any]) -> list[str]:
    """How each engine was set up and measured, in sentences; the report prints them all."""
    cfg = doc["config"]
    n = cfg["threads"]
    engines = {e["peer"]: e for e in doc["engines"]}
    notes = []
    threads = [f"every engine gets {n} thread{'s' if n > 1 else ''}"]
    if "ember" in engines:
        threads.append(
            f"ember: threads={n} (the OpenMP pool of its native kernels; NumPy's BLAS pool, "
            "used by reference ops, gets the same count)"
        )
    if "ort" in engines:
        threads.append(f"ONNX Runtime: intra_op_num_threads={n}, inter_op_num_threads=1")
    if "openvino" in engines:
        threads.append(f"OpenVINO: INFERENCE_NUM_THREADS={n}")
    if "torch" in engines:
        threads.append(f"PyTorch: torch.set_num_threads({n}), 1 inter-op thread")
    notes.append("; ".join(threads) + ".")
    if "ort" in engines:
        notes.append(
            "ONNX Runtime: CPUExecutionProvider, all graph optimizations (ORT_ENABLE_ALL), "
            "sequential execution."
        )
    ov = [e for e in doc["engines"] if e["peer"] == "openvino"]
    if ov:
        rows = ", ".join(f"{e['label']} ran {e['precision_ran'] or '?'}" for e in ov)
        notes.append(
            f"OpenVINO twice: {rows}. Compiled per batch with static shapes; LATENCY hint at "
            "batch 1, "
            "THROUGHPUT above, where one timed call runs the compiled model's optimal number of "
            "requests in parallel (settings.infer_requests_per_call), each on the whole batch."
        )
    if cfg["precision"] != "fp32":
        ran = ", ".join(
            f"{e['name']}: {e['precision_ran'] or e['precision']}" for e in doc["engines"]
        )
        said = (
            "ember ran bf16 inside convolutions and matmuls"
            if cfg["precision"] == "bf16"
            else "ember ran the same int8 QDQ model as ONNX Runtime, on its own int8 kernels"
        )
        notes.append(
            f"--precision {cfg['precision']} was asked; {said}. What each engine ran: {ran}."
        )
    notes.append(
        f"Timing: per engine and batch, load and the first call are timed apart, {cfg['warmup']}+ "
        f"warm-up calls are not timed, then {cfg['rounds']} interleaved rounds in rotating order "
        "of "
        f"{cfg['min_time_s'] / cfg['rounds']:.3g} s each (at least one call per round, at most "
        f"{cfg['max_iters']} timed calls in all). Each engine runs in its own process, and a slice "
        "starts only when every engine process is idle (thread pools spin after a call returns). A "
        "call is timed with perf_counter_ns around the engine's run on inputs already in memory."
    )
    notes.append(
        "Agreement: every engine's outputs against ember's exact mode (float64 accumulation) on "
        "the "
        f"same inputs ({doc['model']['input_data']}); task {doc['model']['task']}."
    )
    m = doc["machine"]
    flags = ", ".join(k for k, v in (m.get("cpu_flags") or {}).items() if v) or "unknown"
    notes.append(
        f"Machine: {m.get('cpu_model') or 'unknown CPU'} "
        f"({m.get('cpu_affinity') or m.get('cpu_count')} "
        f"usable CPUs; flags {flags}); load average {m.get('load_average')} at start, "
        f"{m.get('load_average_end')} at end (a load above the CPU count means other work shared "
        "the CPUs)."
    )
    return notes
