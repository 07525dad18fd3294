"""The timing harness: ember and its peers on the same inputs, interleaved, each in its own process.

Per batch size: every engine loads (timed apart), runs a first call (timed apart) and its warm-up
calls (never timed), then the engines take turns in `rounds` slices of `min_time / rounds` seconds
each, in a rotating order (A B C, B C A, C A B, ...), so that drift on a busy machine (another job
starting, the CPU clocking down) lands on every engine alike instead of on whichever ran last.
Outputs of each engine are compared with ember's exact mode on the same inputs.

It knows nothing about how a peer works inside (ember.bench.engines) or how results are shown
(ember.bench.report).
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from ember.bench import stats
from ember.bench.config import BenchConfig
from ember.bench.console import Progress
from ember.bench.engines import INSTALL, EngineSpec, engine_specs, peer_available
from ember.bench.machine import describe_machine, library_version, load_average
from ember.bench.report import BenchReport, fairness_notes
from ember.bench.worker import WorkerState, recv, send
from ember.errors import ConfigError, ModelError

SCHEMA_ID = "ember.bench/1"

# The worker's entry: sys.path of this process first, so it imports the same ember (and the module
# classes of a torch peer) however this process found them.
_BOOT = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "from ember.bench.worker import main; sys.exit(main())"
)


# -- runners: one engine, in a worker process or (fallback) in this process ----------------------


class ProcessRunner:
    """Talks to one worker process."""

    isolation = "process"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __init__(self) -> None:
        # The worker's stderr (library chatter), kept for the error message if the worker dies.
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, json.dumps([p for p in sys.path if p])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            send(self.proc.stdin, msg)
            return recv(self.proc.stdout)
        except (EOFError, BrokenPipeError, OSError):
            code = self.proc.wait()
            return {
                "ok": False,
                "error": f"the worker process died (exit code {code}): {self.tail()}",
            }

    def tail(self, lines: int = 3) -> str:
        self.log.seek(0)
        text = self.log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "no output"

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                send(self.proc.stdin, {"op": "exit"})
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class LocalRunner:
    """Runs an engine in this process: for a torch module that cannot be pickled into a worker.
    Its memory cannot be told apart from everything else here, so it is not reported."""

    isolation = "in-process"
    pid = os.getpid()

    def __init__(self) -> None:
        self.state = WorkerState(measure_memory=False)

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        if msg["op"] == "exit":
            return {"ok": True}
        return self.state.handle(msg)

    def close(self) -> None:
        pass


def _cpu_ns(pids: Sequence[int]) -> int | None:
    """CPU time used so far by every thread of `pids` (Linux /proc/PID/task/*/schedstat), in ns."""
    total = 0
    for pid in pids:
        for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
            try:
                with open(f) as fh:
                    total += int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # a thread that ended between glob and open
    return total or None


def quiesce(
    pids: Sequence[int], *, window: float = 0.005, busy: float = 0.05, timeout: float = 1.0
) -> float:
    """Wait until `pids` use less than `busy` of one CPU over `window` seconds; returns the wait.

    NOTE: thread pools keep spinning after a call returns (OpenBLAS for ~2**28 cycles, OpenMP,
    ONNX Runtime, TBB). Interleaving engines on a small machine would hand the next engine's slice
    to a CPU still busy with the previous engine's spinning threads, so every slice starts only
    once all engine processes (and this one) are idle. Where /proc is missing: a fixed 0.1 s pause.
    """
    start = time.perf_counter()
    prev = _cpu_ns(pids)
    if prev is None:
        time.sleep(0.1)
        return time.perf_counter() - start
    # Reading /proc costs this thread CPU time too (more with many engine threads to read):
    # that is the polling, not a busy engine, so it is not counted.
    own = time.thread_time_ns()
    while time.perf_counter() - start < timeout:
        time.sleep(window)
        cur = _cpu_ns(pids) or prev
        own_now = time.thread_time_ns()
        if (cur - prev) - (own_now - own) < busy * window * 1e9:
            break
        prev, own = cur, own_now
    return time.perf_counter() - start


# -- inputs ----------------------------------------------------------------------------------------


def make_inputs(
    specs: Sequence[Any], batch: int, dims: Mapping[str, int], seed: int
) -> dict[str, np.ndarray]:
    """Random inputs of a model's signature: axis 0 is the batch, other symbolic dims from `dims`.

    >>> import ember
    >>> from ember import zoo
    >>> specs = ember.load(zoo.model_path("digits_cnn")).inputs
    >>> make_inputs(specs, 4, {}, seed=0)["input"].shape
    (4, 1, 8, 8)
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        if spec.dtype is None or spec.shape is None:
            raise ConfigError(f"cannot make random data for input {spec} (unknown type or rank)")
        shape = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int):
                if axis == 0 and d != batch:
                    raise ConfigError(
                        f"input {spec.name!r} has a fixed first dim {d} ({spec}): the batch size "
                        f"can only be {d}"
                    )
                shape.append(d)
            elif axis == 0:
                shape.append(batch)
            elif d in dims:
                shape.append(dims[d])
            else:
                raise ConfigError(
                    f"input {spec.name!r} ({spec}) has the symbolic dim {d!r} on axis {axis}: "
                    f"give its size, e.g. --dim {d or 'NAME'}=128"
                )
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise ConfigError(
                f"cannot make random {spec.dtype} data for input {spec.name!r}: pass inputs"
            )
    return feeds


def take_batch(inputs: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The first `batch` samples of each input (cycling when there are fewer), contiguous."""
    out = {}
    for name, x in inputs.items():
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] == 0:
            raise ConfigError(f"input {name!r}: needs a leading sample axis, got shape {x.shape}")
        out[name] = np.ascontiguousarray(np.take(x, np.arange(batch) % x.shape[0], axis=0))
    return out


# -- the model -------------------------------------------------------------------------------------


def is_torch_module(obj: Any) -> bool:
    mod = sys.modules.get("torch")
    return mod is not None and isinstance(obj, mod.nn.Module)


def export_torch(
    module: Any,
    args: Sequence[Any],
    path: str | Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str] | None = None,
) -> Path:
    """Export a torch module to ONNX at `path` with a dynamic batch axis on every input.

    Tries torch's default (dynamo) exporter first and the TorchScript one if that fails. The example
    batch is widened to 2 when it is 1: an example batch of 1 would be specialized away.
    """
    import logging
    import warnings

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = []
    for a in args:
        t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
        tensors.append(t.repeat(2, *([1] * (t.dim() - 1))) if t.dim() and t.shape[0] == 1 else t)
    module = module.eval()
    errors = []
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "torchvision is not installed" and similar chatter
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            batch = torch.export.Dim("batch")
            try:
                torch.onnx.export(
                    module,
                    tuple(tensors),
                    str(path),
                    input_names=list(input_names),
                    output_names=list(output_names) if output_names else None,
                    dynamic_shapes=tuple({0: batch} if t.dim() else {} for t in tensors),
                    external_data=False,
                    verbose=False,
                )
                return path
            except Exception as e:  # noqa: BLE001 (any exporter failure: try the other exporter)
                errors.append(f"dynamo exporter: {type(e).__name__}: {e}")
            outs = list(output_names) if output_names else ["output"]
            try:
                torch.onnx.export(
                    module,
                    tuple(tensors),
                    str(path),
                    dynamo=False,
                    input_names=list(input_names),
                    output_names=outs,
                    dynamic_axes={n: {0: "batch"} for n in [*input_names, *outs]},
                )
                return path
            except Exception as e:  # noqa: BLE001
                errors.append(f"TorchScript exporter: {type(e).__name__}: {e}")
    finally:
        logger.setLevel(level)
    raise ModelError("could not export the torch module to ONNX: " + "; ".join(errors))


def quantize_int8(path: Path, out: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    """An int8 QDQ copy of the model by ONNX Runtime's static quantizer, calibrated on the inputs.

    Before quantizing, ORT's basic graph optimizations run (constant folding, Conv+BatchNorm
    folding), which is the part of its `quant_pre_process` that matters here; that function itself
    imports torch, which costs seconds and is not needed.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    pre = out.with_name(out.stem + ".pre.onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(pre)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    import logging

    logging.disable(logging.WARNING)  # "please consider pre-processing": done above, by hand
    try:
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        logging.disable(logging.NOTSET)
    return out


# -- the run ---------------------------------------------------------------------------------------


def run_bench(
    model: Any,
    config: BenchConfig,
    *,
    inputs: Mapping[str, Any] | Sequence[Any] | None = None,
    torch_module: Any = None,
    input_names: Sequence[str] | None = None,
    name: str | None = None,
    ember_model: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> BenchReport:
    """Benchmark `model` (a path, bytes, ModelProto, onnx_ir.Model or torch.nn.Module); see
    ember.bench.bench for the arguments."""
    ember_path = None
    if ember_model is not None:
        ember_path = Path(ember_model)
        if not ember_path.is_file():
            raise ModelError(f"ember_model: no such model file {str(ember_model)!r}")
    progress = progress or Progress(enabled=False)
    with tempfile.TemporaryDirectory(prefix="ember-bench-") as tmp:
        source = _resolve_model(model, inputs, input_names, Path(tmp), config, progress)
        if torch_module is None and source.module is not None:
            torch_module = source.module
        if "torch" in config.peers and torch_module is None:
            raise ConfigError(
                "the torch peer needs a torch.nn.Module: pass one from Python, "
                "ember.bench(module, inputs=...) or ember.bench(model, torch_module=module, ...)"
            )
        return _run(source, config, torch_module, Path(tmp), name, progress, ember_path)


class _Source:
    def __init__(
        self, path: Path, name: str, inputs: dict[str, np.ndarray] | None, module: Any = None
    ) -> None:
        self.path, self.name, self.inputs, self.module = path, name, inputs, module


def _resolve_model(
    model: Any,
    inputs: Mapping[str, Any] | Sequence[Any] | None,
    input_names: Sequence[str] | None,
    tmp: Path,
    config: BenchConfig,
    progress: Progress,
) -> _Source:
    if is_torch_module(model):
        if inputs is None:
            raise ConfigError(
                "benchmarking a torch module needs inputs=: example inputs, batch first"
            )
        if isinstance(inputs, Mapping):
            names = list(inputs)
            arrays = [np.asarray(v) for v in inputs.values()]
        else:
            arrays = [np.asarray(v.detach().numpy() if hasattr(v, "detach") else v) for v in inputs]
            names = (
                list(input_names)
                if input_names
                else (["input"] if len(arrays) == 1 else [f"input_{i}" for i in range(len(arrays))])
            )
        if len(names) != len(arrays):
            raise ConfigError(f"{len(arrays)} inputs but {len(names)} input names")
        progress.note(f"exporting {type(model).__name__} to ONNX (torch.onnx.export)")
        path = export_torch(model, arrays, tmp / "model.onnx", input_names=names)
        return _Source(
            path, type(model).__name__, dict(zip(names, arrays, strict=True)), module=model
        )
    feeds = None
    if inputs is not None:
        if not isinstance(inputs, Mapping):
            raise ConfigError("inputs= for an ONNX model must be a dict of input name -> array")
        feeds = {k: np.asarray(v) for k, v in inputs.items()}
    if isinstance(model, str | Path):
        path = Path(model)
        if not path.exists():
            from ember import zoo

            if str(model) in zoo.names():
                data = zoo.load_eval(str(model))
                return _Source(zoo.model_path(str(model)), str(model), feeds or {"input": data.x})
            raise ModelError(f"no such model file {str(model)!r}")
        if path.is_dir():
            raise ModelError(f"{str(model)!r} is a directory, not an ONNX model file")
        return _Source(path, path.stem, feeds)
    from ember.ir import load_model, save_model

    path = tmp / "model.onnx"
    save_model(load_model(model), path)
    return _Source(path, "model", feeds)


def _run(
    source: _Source,
    config: BenchConfig,
    torch_module: Any,
    tmp: Path,
    name: str | None,
    progress: Progress,
    ember_path: Path | None = None,
) -> BenchReport:
    import ember

    machine = describe_machine()
    reference = ember.load(source.path, exact=True)  # the oracle; also fails early on a bad model
    specs_in = [s for s in reference.inputs if s.name not in reference.ir.graph.initializers]
    feeds = _batches(source, specs_in, config)
    specs, skipped = _available(config, torch_module is not None, progress)
    engines = {s.name: _engine_entry(s) for s in specs}
    paths = {False: source.path}
    if any(s.quantized for s in specs):
        try:
            progress.note("quantizing to int8 (onnxruntime.quantization.quantize_static, QDQ)")
            calibration = [feeds[b] for b in config.batches]
            paths[True] = quantize_int8(source.path, tmp / "model.int8.onnx", calibration)
        except Exception as e:  # noqa: BLE001 (the quantizer's failure is those rows' error)
            why = (
                f"int8 needs onnxruntime's quantizer ({INSTALL['ort']})"
                if isinstance(e, ImportError)
                else f"int8 quantization failed: {type(e).__name__}: {e}"
            )
            for s in specs:
                if s.quantized:
                    engines[s.name].update(status="error", error=why)

    rounds = config.rounds_effective
    progress.start(
        len(specs) * (1 + len(config.batches) * (rounds + 1)), f"{source.name}: starting"
    )
    runners: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    task = config.task
    try:
        _start_all(
            specs, engines, runners, paths, torch_module, config, progress, source.name, ember_path
        )
        for batch in config.batches:
            ref_out = [np.asarray(v) for v in reference.run(feeds[batch]).values()]
            if task == "auto":
                task = stats.detect_task(ref_out)
            results += _bench_batch(
                batch, feeds[batch], specs, runners, engines, ref_out, task, config, progress,
                source.name,
            )  # fmt: skip
    finally:
        for runner, _ in runners.values():
            runner.close()
        progress.stop()

    for row in results:
        eng = engines[row["engine"]]
        if row["status"] == "ok" and not eng["settings"]:
            eng["settings"] = row["settings"]
    for eng in engines.values():
        if eng["status"] == "ok":
            eng["precision_ran"] = _precision_ran(eng)
    doc: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "model": {
            "name": name or source.name,
            "path": str(source.path),
            "inputs": [_spec_json(s) for s in specs_in],
            "outputs": [_spec_json(s) for s in reference.outputs],
            "task": task,
            "input_data": "given" if source.inputs is not None else f"random (seed {config.seed})",
        },
        "config": {
            "batches": list(config.batches),
            "peers": list(config.peers),
            "threads": config.threads,
            "precision": config.precision,
            "min_time_s": config.min_time,
            "max_iters": config.max_iters,
            "rounds": rounds,
            "warmup": config.warmup,
            "task": config.task,
            "dims": dict(config.dims),
            "seed": config.seed,
        },
        "machine": {**machine, "load_average_end": load_average()},
        "engines": list(engines.values()),
        "skipped": skipped,
        "results": results,
    }
    doc["ratios"] = _ratios(doc)
    doc["fairness"] = fairness_notes(doc)
    return BenchReport(doc)


def _batches(
    source: _Source, specs_in: list[Any], config: BenchConfig
) -> dict[int, dict[str, np.ndarray]]:
    """The inputs of every batch size: the given samples (cycled), or random data."""
    if source.inputs is None:
        return {b: make_inputs(specs_in, b, config.dims, config.seed) for b in config.batches}
    given, wanted = set(source.inputs), {s.name for s in specs_in}
    if given != wanted:
        raise ConfigError(f"inputs give {sorted(given)}, the model takes {sorted(wanted)}")
    ordered = {s.name: source.inputs[s.name] for s in specs_in}  # torch takes them positionally
    return {b: take_batch(ordered, b) for b in config.batches}


def _available(
    config: BenchConfig, has_module: bool, progress: Progress
) -> tuple[list[EngineSpec], list[dict[str, str]]]:
    """The rows to run, and the peers skipped because their library is missing (one line each)."""
    specs: list[EngineSpec] = []
    skipped: list[dict[str, str]] = []
    for spec in engine_specs(list(config.peers), config.precision, has_module):
        if spec.peer == "ember" or peer_available(spec.peer):
            specs.append(spec)
        elif not any(s["peer"] == spec.peer for s in skipped):
            line = f"skipping {spec.title}: not installed ({INSTALL[spec.peer]})"
            progress.note(line)
            skipped.append(
                {"peer": spec.peer, "reason": "not installed", "install": INSTALL[spec.peer],
                 "message": line}
            )  # fmt: skip
    return specs, skipped


def _engine_entry(spec: EngineSpec) -> dict[str, Any]:
    """An engines[] entry of the report (ember.bench.schema.ENGINE); filled in as the run goes."""
    return {
        "name": spec.name,
        "label": spec.label,
        "peer": spec.peer,
        "library": spec.library,
        "version": library_version(spec.library),
        "precision": spec.precision,
        "precision_ran": None,
        "quantized": spec.quantized,
        "notes": list(spec.notes),
        "isolation": None,
        "status": "ok",
        "error": None,
        "settings": {},
    }


def _start_all(
    specs: list[EngineSpec],
    engines: dict[str, dict[str, Any]],
    runners: dict[str, Any],
    paths: dict[bool, Path],
    torch_module: Any,
    config: BenchConfig,
    progress: Progress,
    model_name: str,
    ember_path: Path | None = None,
) -> None:
    """Start and load every engine, one after the other (so that load times do not overlap);
    ember loads `ember_path` instead when given."""
    module_bytes: bytes | None = None
    if torch_module is not None:
        try:
            module_bytes = pickle.dumps(torch_module)
        except Exception:  # noqa: BLE001 (not picklable: it runs in this process instead)
            module_bytes = None
    for spec in specs:
        entry = engines[spec.name]
        progress.advance()
        if entry["status"] != "ok":
            continue
        progress.update(f"{model_name}: loading {spec.label}")
        path = ember_path if spec.peer == "ember" and ember_path else paths[spec.quantized]
        if path is ember_path:
            entry["notes"].append(f"ran {ember_path.name}, not the model the peers ran")
        runner, reply = _start(spec, config, path, torch_module, module_bytes)
        entry["isolation"] = runner.isolation
        if runner.isolation == "in-process":
            entry["notes"].append(
                "ran in the benchmark's process (the module cannot be pickled into a worker): "
                "peak memory not measured"
            )
        if reply["ok"]:
            runners[spec.name] = (runner, reply)
        else:
            runner.close()
            entry.update(status="error", error=reply["error"])
            progress.note(f"{spec.label}: failed to load: {reply['error']}")


def _precision_ran(eng: dict[str, Any]) -> str:
    """What an engine ran: OpenVINO reads its inference precision back; the others run what they
    were asked (ember: fp32, or bf16 when asked)."""
    ran = eng["settings"].get("inference_precision") or eng["precision"]
    if eng["quantized"]:
        return "int8 QDQ" if eng["peer"] in ("ort", "ember") else f"int8 QDQ, {ran} elsewhere"
    return str(ran)


def _spec_json(s: Any) -> dict[str, Any]:
    return {
        "name": s.name,
        "dtype": None if s.dtype is None else str(s.dtype),
        "shape": None if s.shape is None else list(s.shape),
    }


def _start(
    spec: EngineSpec, config: BenchConfig, path: Path, module: Any, module_bytes: bytes | None
) -> tuple[Any, dict[str, Any]]:
    msg = {
        "op": "init",
        "spec": spec,
        "threads": config.threads,
        "path": str(path),
        "measure_memory": config.measure_memory,
    }
    if spec.peer == "torch":
        if module_bytes is None:
            local = LocalRunner()
            return local, local.request({**msg, "module": module})
        msg["module"] = module_bytes
    runner = ProcessRunner()
    reply = runner.request(msg)
    if not reply["ok"] and reply.get("unpicklable"):
        runner.close()  # the module's class cannot be imported in a fresh process
        local = LocalRunner()
        return local, local.request({**msg, "module": module})
    return runner, reply


def _rotations(names: list[str], rounds: int) -> Iterator[list[str]]:
    for r in range(rounds):
        k = r % len(names) if names else 0
        yield names[k:] + names[:k]


def _bench_batch(
    batch: int,
    feeds: dict[str, np.ndarray],
    specs: list[EngineSpec],
    runners: dict[str, Any],
    engines: dict[str, dict[str, Any]],
    ref_out: list[np.ndarray],
    task: str,
    config: BenchConfig,
    progress: Progress,
    model_name: str,
) -> list[dict[str, Any]]:
    rounds = config.rounds_effective
    pids = [os.getpid(), *(r.pid for r, _ in runners.values())]
    rows: dict[str, dict[str, Any]] = {}
    times: dict[str, list[int]] = {}
    live: list[str] = []
    for spec in specs:
        row: dict[str, Any] = {
            "engine": spec.name,
            "batch": batch,
            "status": "error",
            "error": engines[spec.name]["error"],
        }
        rows[spec.name] = row
        if spec.name not in runners:
            progress.advance(rounds + 1)
            continue
        runner, init = runners[spec.name]
        progress.update(f"{model_name} batch {batch}: warming up {spec.label}")
        quiesce(pids)
        reply = runner.request(
            {
                "op": "prepare",
                "feeds": feeds,
                "warmup": config.warmup,
                "warmup_time": config.min_time / 10,
                "warmup_max": config.warmup + config.max_iters // 10,
            }
        )
        progress.advance()
        if not reply["ok"]:
            row["error"] = reply["error"]
            progress.note(f"{spec.label} batch {batch}: {reply['error']}")
            progress.advance(rounds)
            continue
        try:
            agree = stats.agreement(reply["outputs"], ref_out, task)
        except ValueError as e:
            agree = None
            row["agreement_error"] = str(e)
        row.update(
            status="ok",
            error=None,
            load_s=reply["load_s"],
            first_call_s=reply["first_call_s"],
            warmup_calls=reply["warmup_calls"],
            samples_per_call=reply["samples_per_call"],
            agreement=agree,
            settings=reply["settings"],
            baseline_rss_bytes=init.get("baseline_rss_bytes"),
        )
        times[spec.name] = []
        live.append(spec.name)

    slice_s = config.min_time / rounds
    per_round = max(1, math.ceil(config.max_iters / rounds))
    for r, order in enumerate(_rotations(list(live), rounds)):
        for engine in order:
            if engine not in times or len(times[engine]) >= config.max_iters:
                progress.advance()
                continue
            progress.update(
                f"{model_name} batch {batch}: round {r + 1}/{rounds}, {engines[engine]['label']}"
            )
            cap = min(per_round, config.max_iters - len(times[engine]))
            quiesce(pids)
            reply = runners[engine][0].request(
                {"op": "slice", "seconds": slice_s, "max_calls": cap}
            )
            if reply["ok"]:
                times[engine].extend(reply["times_ns"])
            else:
                rows[engine].update(status="error", error=reply["error"])
                progress.note(f"{engines[engine]['label']} batch {batch}: {reply['error']}")
                del times[engine]
            progress.advance()

    for engine in live:
        row = rows[engine]
        runner = runners[engine][0]
        end = runner.request({"op": "finish"})
        if row["status"] != "ok":
            continue
        t_s = [t / 1e9 for t in times[engine]]
        row["latency"] = stats.latency_summary(t_s, row["samples_per_call"])
        row["samples_ms"] = [round(t * 1e3, 4) for t in t_s]
        peak = end.get("peak_rss_bytes") if end.get("ok") else None
        base = row.pop("baseline_rss_bytes")
        row["memory"] = {
            "peak_rss_bytes": peak,
            "baseline_rss_bytes": base,
            "peak_delta_bytes": None if peak is None or base is None else peak - base,
            "scope": end.get("peak_scope", "unmeasured") if peak is not None else "unmeasured",
        }
    for row in rows.values():
        row.setdefault("memory", None)
        row.setdefault("latency", None)
        row.setdefault("agreement", None)
        row.pop("baseline_rss_bytes", None)
    return list(rows.values())


def _ratios(doc: dict[str, Any]) -> list[dict[str, Any]]:
    by_key = {(r["engine"], r["batch"]): r for r in doc["results"] if r["status"] == "ok"}
    out = []
    for eng in doc["engines"]:
        if eng["peer"] == "ember":
            continue
        for batch in doc["config"]["batches"]:
            e, p = by_key.get(("ember", batch)), by_key.get((eng["name"], batch))
            if e is None or p is None:
                continue
            r = stats.speed_ratio(
                [t / 1e3 for t in e["samples_ms"]],
                e["samples_per_call"],
                [t / 1e3 for t in p["samples_ms"]],
                p["samples_per_call"],
            )
            out.append(
                {
                    "peer": eng["name"],
                    "batch": batch,
                    "value": r.value,
                    "low": r.low,
                    "high": r.high,
                }
            )
    return out
