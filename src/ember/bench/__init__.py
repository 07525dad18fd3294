"""Side-by-side benchmarks: ember against ONNX Runtime, OpenVINO and PyTorch, with reports.

`ember.bench(model, ...)` (this package is callable) times every engine on the same inputs,
interleaved, each in its own process, and compares outputs with ember's exact mode. It knows nothing
about the internals of the peers; the layout of its JSON report is in ember.bench.schema.

>>> import ember.bench
>>> from ember import zoo
>>> report = ember.bench(zoo.model_path("mnist_mlp"), batches=[1], peers=[], min_time=0.02,
...                      rounds=2, progress=False)                       # doctest: +SKIP
>>> report.result("ember", 1)["latency"]["median_ms"] > 0                # doctest: +SKIP
True
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

from ember.bench.config import BenchConfig, default_threads, parse_batches, parse_peers
from ember.bench.console import Progress
from ember.bench.harness import export_torch, run_bench
from ember.bench.report import BenchReport
from ember.bench.schema import SCHEMA, validate

__all__ = [
    "SCHEMA",
    "BenchConfig",
    "BenchReport",
    "bench",
    "default_threads",
    "export_torch",
    "parse_batches",
    "parse_peers",
    "validate",
]


def bench(
    model: Any,
    *,
    inputs: Mapping[str, Any] | Sequence[Any] | None = None,
    batches: Sequence[int] = (1,),
    peers: Sequence[str] | None = None,
    threads: int | None = None,
    precision: str = "fp32",
    min_time: float = 2.0,
    max_iters: int = 1000,
    rounds: int = 10,
    warmup: int = 2,
    task: str = "auto",
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
    measure_memory: bool = True,
    torch_module: Any = None,
    input_names: Sequence[str] | None = None,
    name: str | None = None,
    ember_model: str | os.PathLike[str] | None = None,
    json: str | os.PathLike[str] | None = None,
    html: str | os.PathLike[str] | None = None,
    progress: bool = True,
    show: bool | None = None,
) -> BenchReport:
    """Benchmark `model` with ember and its peers; returns a BenchReport (and writes `json`/`html`).

    model: an ONNX path, bytes, ModelProto or onnx_ir.Model, a bundled zoo name ("digits_cnn"), or a
      torch.nn.Module (exported to ONNX for ember, ORT and OpenVINO, and run eagerly as the PyTorch
      peer). `torch_module=` adds the PyTorch peer to an ONNX model exported from that module.
    inputs: {name: array} with samples on axis 0 (cycled to fill a batch), or for a module its
      positional example inputs; default: random data of the model's signature (`dims` sizes
      symbolic dims other than the batch).
    peers: any of "ort", "openvino", "torch"; default: ort and openvino, plus torch for a module.
    ember_model: an ONNX file ember runs instead of `model`, such as a pruned, distilled or
      quantized version of it (same inputs and outputs); the peers still run `model` (with
      precision="int8", their int8 of it), and agreement is still measured against `model`.
      A peer that is not installed is skipped with one line saying how to install it.
    The timing options are BenchConfig's. `progress` shows a bar and notes on stderr; `show` prints
    the tables when done (default: when `progress` is on).
    """
    if peers is None:
        peers = ["ort", "openvino"] + (
            ["torch"] if torch_module is not None or _is_module(model) else []
        )
    config = BenchConfig(
        batches=tuple(batches),
        peers=tuple(peers),
        threads=default_threads() if threads is None else threads,
        precision=precision,
        min_time=min_time,
        max_iters=max_iters,
        rounds=rounds,
        warmup=warmup,
        task=task,
        dims=dict(dims or {}),
        seed=seed,
        measure_memory=measure_memory,
    )
    if html is not None:
        from ember.bench.html import require_matplotlib

        require_matplotlib()
    report = run_bench(
        model,
        config,
        inputs=inputs,
        torch_module=torch_module,
        input_names=input_names,
        name=name,
        ember_model=ember_model,
        progress=Progress(enabled=progress),
    )
    if show if show is not None else progress:
        report.print()
    if json is not None:
        report.write_json(json)
    if html is not None:
        report.write_html(html)
    return report


def _is_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


class _CallableModule(types.ModuleType):
    """`ember.bench(...)` calls `bench`, while `ember.bench` stays the package its parts live in."""

    def __call__(self, *args: Any, **kwargs: Any) -> BenchReport:
        return bench(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
