"""The engines a benchmark compares: which rows a run has (EngineSpec), and one adapter per engine.

An adapter loads a model, binds a batch of inputs and runs it, configured the way the fairness rules
in the report say (threads, graph optimizations, performance hints, precision). Adapters run inside
a benchmark worker process (ember.bench.worker); they know nothing about timing or reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from typing import Any

import numpy as np

# How to get each peer's library when it is missing: the one line a skipped peer prints.
INSTALL = {
    "ort": "pip install onnxruntime",
    "openvino": "pip install openvino",
    "torch": "pip install 'ember[torch]'  (torch==2.13.0, CPU build)",
}
_MODULE = {"ember": "ember", "ort": "onnxruntime", "openvino": "openvino", "torch": "torch"}
_DIST = {"ember": "ember", "ort": "onnxruntime", "openvino": "openvino", "torch": "torch"}
_TITLE = {"ember": "ember", "ort": "ONNX Runtime", "openvino": "OpenVINO", "torch": "PyTorch"}


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """One row of a report: an engine, the precision asked of it and which model file it runs."""

    name: str  # row id: ember, ort, openvino-f32, openvino, torch
    peer: str  # ember, ort, openvino or torch
    precision: (
        str  # what it is asked to run: fp32, bf16, int8, or "default" (OpenVINO's own choice)
    )
    quantized: bool = (
        False  # runs the int8 QDQ model made by ORT's quantizer instead of the fp32 one
    )
    notes: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return _TITLE[self.peer]

    @property
    def library(self) -> str:
        return _DIST[self.peer]

    @property
    def label(self) -> str:
        """ "OpenVINO (f32 hint)", "ONNX Runtime (fp32)": short enough for a table column."""
        if self.peer == "openvino":
            hint = "default" if self.precision == "default" else f"{self.precision} hint"
            return f"OpenVINO ({hint})"
        return f"{self.title} ({self.precision})"


def library_module(peer: str) -> str:
    """The module a peer's adapter imports: "onnxruntime" for "ort"."""
    return _MODULE[peer]


def peer_available(peer: str) -> bool:
    """Whether a peer's library can be found, without importing it (imports happen in workers)."""
    module = _MODULE[peer]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
        return False


# What a row ran when it is not plainly what was asked, in the words the report prints.
_NOTE_ORT_INT8 = (
    "QDQ model from onnxruntime.quantization.quantize_static (calibrated on the benchmark inputs, "
    "per-channel int8 weights, uint8 activations)"
)
_NOTE_ORT_BF16 = "ONNX Runtime's CPU provider has no bf16 mode for an fp32 model: it ran fp32"
_NOTE_OV_DEFAULT = "no precision hint: OpenVINO's default (bf16 on CPUs that have it)"
_NOTE_OV_INT8 = "the same int8 QDQ model as ONNX Runtime; OpenVINO's default precision elsewhere"
_NOTE_EMBER_INT8 = "the same int8 QDQ model as ONNX Runtime, fused into ember's int8 kernels"
_NOTE_TORCH = {
    "fp32": "eager, torch.inference_mode",
    "bf16": "eager, torch.autocast bf16",
    "int8": "torch.ao.quantization.quantize_dynamic: int8 weights for nn.Linear only",
}


def engine_specs(peers: list[str], precision: str, has_module: bool) -> list[EngineSpec]:
    """The rows of a run: ember first, then each peer in the order asked (OpenVINO twice).

    Missing peers are kept here; the harness skips them with one line. With int8, every engine
    runs the int8 QDQ model ONNX Runtime's quantizer makes of the fp32 one.

    >>> [s.name for s in engine_specs(["ort", "openvino"], "fp32", has_module=False)]
    ['ember', 'ort', 'openvino-f32', 'openvino']
    """
    if precision == "int8":
        specs = [EngineSpec("ember", "ember", "int8", quantized=True, notes=(_NOTE_EMBER_INT8,))]
    else:
        specs = [EngineSpec("ember", "ember", "bf16" if precision == "bf16" else "fp32")]
    for peer in peers:
        if peer == "ort" and precision == "int8":
            specs.append(EngineSpec("ort", "ort", "int8", quantized=True, notes=(_NOTE_ORT_INT8,)))
        elif peer == "ort":
            notes = (_NOTE_ORT_BF16,) if precision == "bf16" else ()
            specs.append(EngineSpec("ort", "ort", "fp32", notes=notes))
        elif peer == "openvino":
            specs.append(EngineSpec("openvino-f32", "openvino", "f32"))
            if precision == "fp32":
                specs.append(
                    EngineSpec("openvino", "openvino", "default", notes=(_NOTE_OV_DEFAULT,))
                )
            elif precision == "bf16":
                specs.append(EngineSpec("openvino-bf16", "openvino", "bf16"))
            else:
                specs.append(
                    EngineSpec("openvino-int8", "openvino", "default", True, (_NOTE_OV_INT8,))
                )
        elif peer == "torch" and has_module:
            name = "torch" if precision == "fp32" else f"torch-{precision}"
            specs.append(EngineSpec(name, "torch", precision, notes=(_NOTE_TORCH[precision],)))
    return specs


class Engine:
    """A loaded engine bound to one batch of inputs. `run()` is what the harness times."""

    load_per_batch = False  # True: a fresh compile per batch size (the load time repeats)
    requests_per_call = 1  # OpenVINO's THROUGHPUT mode runs several requests of the batch per call

    def __init__(self, spec: EngineSpec, threads: int) -> None:
        self.spec = spec
        self.threads = threads
        self.settings: dict[str, Any] = {"threads": threads}

    def load(self, path: str) -> None:
        raise NotImplementedError

    def bind(self, feeds: dict[str, np.ndarray]) -> None:
        """Take this batch's inputs (and compile for them, when the engine compiles per batch)."""
        raise NotImplementedError

    def run(self) -> Any:
        raise NotImplementedError

    def outputs(self, result: Any) -> list[np.ndarray]:
        """A run's outputs as NumPy arrays in the model's output order (for the agreement check)."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop what `bind` built, before the next batch."""


class EmberEngine(Engine):
    def __init__(self, spec: EngineSpec, threads: int) -> None:
        super().__init__(spec, threads)
        # ember's native kernels run on its OpenMP pool (load(threads=)); the reference ops that
        # remain run on NumPy's BLAS pool (OpenBLAS or MKL), so both get the peers' thread count.
        from threadpoolctl import threadpool_info, threadpool_limits

        self._limits = threadpool_limits(limits=threads)
        pools = threadpool_info()
        self.settings["blas_threads"] = threads
        self.settings["blas"] = sorted({f"{p['internal_api']} {p['version']}" for p in pools})

    def load(self, path: str) -> None:
        import ember

        self.model = ember.load(
            path,
            threads=self.threads,
            precision="bf16" if self.spec.precision == "bf16" else "fp32",
        )
        self.settings.update(optimization_level=self.model.level, precision=self.model.precision)

    def bind(self, feeds: dict[str, np.ndarray]) -> None:
        self.feeds = feeds

    def run(self) -> Any:
        return self.model.run(self.feeds)

    def outputs(self, result: Any) -> list[np.ndarray]:
        return [np.asarray(result[o.name]) for o in self.model.outputs]


class OrtEngine(Engine):
    def load(self, path: str) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.settings.update(
            provider="CPUExecutionProvider",
            graph_optimization_level="ORT_ENABLE_ALL",
            intra_op_num_threads=self.threads,
            inter_op_num_threads=1,
            execution_mode="sequential",
        )

    def bind(self, feeds: dict[str, np.ndarray]) -> None:
        self.feeds = feeds

    def run(self) -> Any:
        return self.session.run(None, self.feeds)

    def outputs(self, result: Any) -> list[np.ndarray]:
        return [np.asarray(r) for r in result]


class OpenVinoEngine(Engine):
    """Compiled per batch: a static shape per batch is OpenVINO's fast path, and the performance
    hint differs (LATENCY at batch 1, THROUGHPUT above). Under THROUGHPUT one timed call runs the
    compiled model's optimal number of requests in parallel, each on the whole batch, because that
    is how the hint is meant to be used; `requests_per_call` counts them."""

    load_per_batch = True

    def load(self, path: str) -> None:
        import openvino as ov

        self.ov = ov
        self.core = ov.Core()
        self.path = path

    def bind(self, feeds: dict[str, np.ndarray]) -> None:
        ov = self.ov
        batch = next(iter(feeds.values())).shape[0] if feeds else 1
        model = self.core.read_model(self.path)
        model.reshape(
            {i.any_name: ov.PartialShape(list(feeds[i.any_name].shape)) for i in model.inputs}
        )
        hint = "LATENCY" if batch == 1 else "THROUGHPUT"
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": self.threads}
        if self.spec.precision in ("f32", "bf16"):
            config["INFERENCE_PRECISION_HINT"] = self.spec.precision
        compiled = self.core.compile_model(model, "CPU", config)
        nreq = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if batch > 1 else 1
        self.compiled = compiled
        self.feeds = feeds
        self.n_outputs = len(compiled.outputs)
        if nreq > 1:
            self.queue = ov.AsyncInferQueue(compiled, nreq)
        else:
            self.request = compiled.create_infer_request()
        self.nreq = nreq
        self.requests_per_call = nreq
        self.settings.update(
            performance_hint=hint,
            inference_precision=_ov_precision(compiled.get_property("INFERENCE_PRECISION_HINT")),
            inference_num_threads=int(compiled.get_property("INFERENCE_NUM_THREADS")),
            num_streams=int(compiled.get_property("NUM_STREAMS")),
            infer_requests_per_call=nreq,
            static_shapes=True,
        )

    def run(self) -> Any:
        if self.nreq == 1:
            return self.request.infer(self.feeds, share_inputs=True)
        for _ in range(self.nreq):
            self.queue.start_async(self.feeds, share_inputs=True)
        self.queue.wait_all()
        return None

    def outputs(self, result: Any) -> list[np.ndarray]:
        req = self.request if self.nreq == 1 else self.queue[0]
        return [np.array(req.get_output_tensor(i).data) for i in range(self.n_outputs)]

    def release(self) -> None:
        for name in ("queue", "request", "compiled"):
            if hasattr(self, name):
                delattr(self, name)


def _ov_precision(value: Any) -> str:
    text = str(value).lower()
    for short, names in (
        ("bf16", ("bf16", "bfloat16")),
        ("f16", ("f16", "float16")),
        ("f32", ("f32", "float32")),
    ):
        if any(n in text for n in names):
            return short
    return text


class TorchEngine(Engine):
    def __init__(self, spec: EngineSpec, threads: int, module: Any) -> None:
        super().__init__(spec, threads)
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        # Raises when already set in this process (the in-process fallback): leave it then.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        self.module = module
        self.settings.update(num_threads=torch.get_num_threads(), mode="eager, inference_mode")

    def load(self, path: str) -> None:
        import warnings

        torch = self.torch
        self.module = self.module.eval()
        if self.spec.precision == "int8":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
                self.module = torch.ao.quantization.quantize_dynamic(
                    self.module, {torch.nn.Linear}, dtype=torch.qint8
                )

    def bind(self, feeds: dict[str, np.ndarray]) -> None:
        self.args = tuple(self.torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values())

    def run(self) -> Any:
        torch = self.torch
        with torch.inference_mode():
            if self.spec.precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return self.module(*self.args)
            return self.module(*self.args)

    def outputs(self, result: Any) -> list[np.ndarray]:
        items = result if isinstance(result, list | tuple) else [result]
        return [t.detach().float().numpy() for t in items]


def open_engine(spec: EngineSpec, threads: int, module: Any = None) -> Engine:
    """The adapter for a row; imports its library (which is why this runs in the worker)."""
    if spec.peer == "ember":
        return EmberEngine(spec, threads)
    if spec.peer == "ort":
        return OrtEngine(spec, threads)
    if spec.peer == "openvino":
        return OpenVinoEngine(spec, threads)
    return TorchEngine(spec, threads, module)
