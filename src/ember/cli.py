"""The `ember` command: parses arguments, calls the library, prints. No logic of its own.

ember inspect model.onnx
ember run model.onnx --random --batch 8
ember optimize model.onnx -o model.opt.onnx --level 3
ember profile model.onnx --batch 1
ember bench model.onnx --batch 1,8,32 --peers ort,openvino --json out.json --html out.html
ember quantize model.onnx -o model.int8.onnx --mode static --calib calib.npz --max-drop 0.01
ember prune model.onnx -o model.pruned.onnx --kind structured --sparsity 0.5 --eval eval.npz
ember distill teacher.onnx student.onnx -o student.distilled.onnx --data train.npz --eval eval.npz
ember lowrank model.onnx -o model.lowrank.onnx --energy 0.95
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ember.errors import ConfigError, EmberError


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _parse_dims(items: Sequence[str]) -> dict[str, int]:
    dims = {}
    for item in items:
        name, sep, size = item.partition("=")
        if not sep or not size.isdigit() or int(size) < 1:
            raise ConfigError(
                f"--dim {item!r}: expected NAME=SIZE with a positive size, e.g. seq=128"
            )
        dims[name] = int(size)
    return dims


def cmd_inspect(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from ember.ir import load_model
    from ember.ir.analysis import format_bytes, format_count, model_stats
    from ember.runtime.model import tensor_spec
    from ember.runtime.plan import compile_graph

    console = _console()
    model = load_model(args.model)
    dims = _parse_dims(args.dim)
    if args.batch is not None:
        dims.setdefault("batch", args.batch)
    stats = model_stats(model, dims)
    unsupported: list[str] = []
    fallback: list[str] = []
    try:
        plan = compile_graph(model.graph, dict(model.opset_imports), allow_fallback=True)
        fallback = sorted({f"{n.op_type} ({n.name or 'unnamed'})" for n in plan.fallback_nodes})
    except EmberError as e:
        unsupported.append(str(e))
    console.print(f"[bold]{escape(str(args.model))}[/bold]")
    opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(model.opset_imports.items()))
    console.print(
        f"opsets: {opsets}    producer: {model.producer_name or '?'} {model.producer_version or ''}"
    )
    for title, values in (("inputs", model.graph.inputs), ("outputs", model.graph.outputs)):
        table = Table(title=title, title_justify="left")
        for col in ("name", "dtype", "shape"):
            table.add_column(col)
        if title == "inputs":
            values = [v for v in values if v.name not in model.graph.initializers]
        for v in values:
            s = tensor_spec(v)
            shape = (
                "?"
                if s.shape is None
                else "[" + ", ".join("?" if d is None else str(d) for d in s.shape) + "]"
            )
            dtype = str(s.dtype) if s.dtype is not None else str(v.type or "?")
            table.add_row(escape(s.name), escape(dtype), escape(shape))
        console.print(table)
    console.print(
        f"parameters: {format_count(stats.n_params)} ({format_bytes(stats.size_params)})    "
        f"nodes: {sum(stats.op_counts.values())}"
    )
    if stats.flops is not None:
        bound = ", ".join(f"{k}={v}" for k, v in stats.dims.items()) or "static shapes"
        console.print(f"FLOPs (estimate, {bound}): {format_count(stats.flops)}")
    else:
        console.print("FLOPs: could not be estimated (shape inference failed)")
    hist = Table(title="ops", title_justify="left")
    hist.add_column("op")
    hist.add_column("count", justify="right")
    for name, count in stats.op_counts.items():
        hist.add_row(escape(name), str(count))
    console.print(hist)
    if fallback:
        console.print(
            "runs through the onnx.reference fallback (slow, not an ember kernel): "
            + escape(", ".join(fallback))
        )
    if unsupported:
        console.print("[red]unsupported:[/red] " + escape("; ".join(unsupported)))
        return 1
    console.print("unsupported ops: none")
    return 0


def _random_inputs(
    model: Any, batch: int, dims: dict[str, int], seed: int
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in model.inputs:
        if spec.dtype is None or spec.shape is None:
            raise ConfigError(
                f"--random cannot make input {spec.name!r} ({spec}): give it with --input"
            )
        shape = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int):
                shape.append(d)
            elif d is not None and d in dims:
                shape.append(dims[d])
            else:
                shape.append(batch if axis == 0 else 1)
        kind = spec.dtype.kind
        if kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif kind in "iu":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
        elif kind == "b":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise ConfigError(
                f"--random cannot make {spec.dtype} input {spec.name!r}: give it with --input"
            )
    return feeds


def _load_inputs(items: Sequence[str]) -> dict[str, np.ndarray]:
    feeds = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise ConfigError(f"--input {item!r}: expected NAME=FILE.npy")
        path = Path(file)
        if not path.exists():
            raise ConfigError(f"--input {name}: no such file {file!r}")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ConfigError(f"--input {name}: {file!r} is not a .npy array ({e})") from None
    return feeds


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to `path` atomically: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy stubs mistype **kwds
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cmd_run(args: argparse.Namespace) -> int:
    import time

    import ember

    console = _console()
    model = ember.load(
        args.model,
        exact=args.exact,
        level=args.level,
        threads=args.threads,
        precision=args.precision,
    )
    feeds = _feeds(model, args)
    start = time.perf_counter()
    outputs = model.run(feeds)
    elapsed = time.perf_counter() - start
    for name, value in feeds.items():
        console.print(f"input  {name}: {value.dtype}{list(value.shape)}", markup=False)
    for name, value in outputs.items():
        arr = np.asarray(value)
        line = f"output {name}: {arr.dtype}{list(arr.shape)}"
        if arr.size and arr.dtype.kind in "fiub":
            a = arr.astype(np.float64)
            line += f"  min {a.min():.4g}  max {a.max():.4g}  mean {a.mean():.4g}"
            if arr.dtype.kind == "f" and arr.ndim == 2 and arr.shape[1] > 1:
                line += f"  argmax[:8] {arr.argmax(axis=1)[:8].tolist()}"
        console.print(line, markup=False)
    out = Path(args.output) if args.output else Path(Path(args.model).stem + ".outputs.npz")
    save_npz(out, {k: np.asarray(v) for k, v in outputs.items()})
    console.print(f"ran in {elapsed * 1e3:.2f} ms; outputs saved to {out}")
    return 0


def _feeds(model: Any, args: argparse.Namespace) -> dict[str, np.ndarray]:
    if bool(args.input) == bool(args.random):
        raise ConfigError("give either --input NAME=FILE.npy (once per input) or --random")
    if args.random:
        return _random_inputs(model, args.batch, _parse_dims(args.dim), args.seed)
    return _load_inputs(args.input)


def cmd_optimize(args: argparse.Namespace) -> int:
    from collections import Counter

    from ember.ir import load_model, save_model
    from ember.passes import optimize

    model = load_model(args.model)
    before = Counter(_op_name(n) for n in model.graph)
    optimize(model, args.level)
    after = Counter(_op_name(n) for n in model.graph)
    out = Path(args.output) if args.output else Path(args.model).with_suffix(".opt.onnx")
    if out.resolve() == Path(args.model).resolve():
        raise ConfigError(f"-o {out}: would overwrite the input model; name another file")
    save_model(model, out)
    print(f"level {args.level}: {sum(before.values())} nodes -> {sum(after.values())}")
    for op in sorted(set(before) | set(after), key=lambda o: (-after[o], o)):
        if before[op] != after[op]:
            print(f"  {op:<34} {before[op]:>5} -> {after[op]:<5}")
    fused = Counter(
        f"{n.metadata_props['ember.fused']} -> {_op_name(n)}"
        for n in model.graph
        if "ember.fused" in n.metadata_props
    )
    for pattern, count in fused.most_common():
        print(f"  fused {count:>4} x {pattern}")
    print(f"written to {out} (ember runs its ai.ember ops; other runtimes do not know them)")
    return 0


def _op_name(node: Any) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain else node.op_type


def cmd_profile(args: argparse.Namespace) -> int:
    import ember

    model = ember.load(args.model, level=args.level, threads=args.threads, precision=args.precision)
    feeds = (
        _load_inputs(args.input)
        if args.input
        else _random_inputs(model, args.batch, _parse_dims(args.dim), args.seed)
    )
    profile = model.profile(feeds, repeat=args.repeat)
    print(profile.format(top=args.top))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ember.bench import bench, parse_batches, parse_peers

    bench(
        args.model,
        batches=parse_batches(args.batch),
        peers=parse_peers(args.peers),
        threads=args.threads,
        precision=args.precision,
        min_time=args.min_time,
        max_iters=args.max_iters,
        rounds=args.rounds,
        task=args.task,
        dims=_parse_dims(args.dim),
        seed=args.seed,
        ember_model=args.ember_model,
        json=args.json,
        html=args.html,
        progress=not args.quiet,
        show=True,
    )
    for flag, path in (("json", args.json), ("html", args.html)):
        if path:
            print(f"{flag} report written to {path}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from ember.compress.api import quantize
    from ember.compress.config import QuantConfig

    out = Path(args.output)
    if out.resolve() == Path(args.model).resolve():
        raise ConfigError(f"-o {out}: would overwrite the input model; name another file")
    options: dict[str, Any] = {"mode": args.mode, "bits": args.bits, "method": args.method}
    for field in ("per_channel", "group_size", "max_drop", "calibration_samples"):
        if getattr(args, field) is not None:
            options[field] = getattr(args, field)
    config = QuantConfig(**options)
    result = quantize(args.model, config, args.calib, eval_data=args.eval, progress=not args.quiet)
    result.save(out)  # atomic; only reached when quantize succeeded (BudgetError writes nothing)
    for note in result.notes:
        print(f"note: {note}")
    if result.fidelity is not None:
        print(result.fidelity.format())
    else:
        print("fidelity not measured: give --eval data.npz (or --calib) to measure it")
    if result.kept_fp32:
        print(f"kept in fp32 ({len(result.kept_fp32)}): {', '.join(result.kept_fp32)}")
    print(f"written to {out}")
    return 0


def _input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    p.add_argument(
        "--batch", type=int, default=1, help="size of a symbolic first axis of random inputs"
    )
    p.add_argument(
        "--dim", action="append", default=[], metavar="NAME=SIZE", help="bind a symbolic dim"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random inputs")


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--level",
        type=int,
        choices=range(4),
        default=None,
        help="graph optimization level 0-3 (default 3; 0 with --exact)",
    )
    p.add_argument("--threads", type=int, default=None, help="threads (default: one per core)")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: convolutions and matmuls in bfloat16 (opt-in)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ember", description="Run ONNX models fast, small and exactly."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ins = sub.add_parser("inspect", help="inputs, outputs, opsets, op histogram, params, FLOPs")
    ins.add_argument("model")
    ins.add_argument(
        "--batch", type=int, default=None, help="bind the symbolic dim `batch` (FLOPs)"
    )
    ins.add_argument(
        "--dim", action="append", default=[], metavar="NAME=SIZE", help="bind a symbolic dim"
    )
    ins.set_defaults(func=cmd_inspect)

    run = sub.add_parser("run", help="run a model once on given or random inputs, save outputs")
    run.add_argument("model")
    run.add_argument("--random", action="store_true", help="random inputs of the model's signature")
    _input_options(run)
    run.add_argument("--exact", action="store_true", help="float64 accumulation (the oracle mode)")
    _engine_options(run)
    run.add_argument("-o", "--output", help="where to save outputs (default: MODEL.outputs.npz)")
    run.set_defaults(func=cmd_run)

    opt = sub.add_parser("optimize", help="save the graph optimized at a level (0-3)")
    opt.add_argument("model")
    opt.add_argument("-o", "--output", help="where to save it (default: MODEL.opt.onnx)")
    opt.add_argument("--level", type=int, choices=range(4), default=3)
    opt.set_defaults(func=cmd_optimize)

    prof = sub.add_parser(
        "profile", help="per-node time, the top ops, what was fused, and activation memory"
    )
    prof.add_argument("model")
    _input_options(prof)  # random inputs unless --input is given
    prof.add_argument("--repeat", type=int, default=20, help="profiled runs (median per step)")
    prof.add_argument("--top", type=int, default=15, help="rows per table")
    _engine_options(prof)
    prof.set_defaults(func=cmd_profile)

    b = sub.add_parser("bench", help="time ember against ONNX Runtime and OpenVINO, side by side")
    arg = b.add_argument
    arg("model", help="an .onnx file, or a bundled zoo model's name (digits_cnn, mnist_mlp)")
    arg("--batch", default="1", metavar="1,8,32", help="batch sizes (default 1)")
    arg(
        "--peers",
        default="ort,openvino",
        metavar="ort,openvino",
        help="peers to compare with, or 'none' (default ort,openvino)",
    )
    arg(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="threads for every engine (default: the CPUs this process may use)",
    )
    arg(
        "--precision",
        choices=["fp32", "bf16", "int8"],
        default="fp32",
        help="what every engine is asked to run (int8: ONNX Runtime's QDQ model of it, for all)",
    )
    arg(
        "--ember-model",
        metavar="FILE.onnx",
        help="ember runs this compressed version of MODEL (pruned, distilled, quantized); the "
        "peers run MODEL (with --precision int8, their int8 of it)",
    )
    arg(
        "--min-time",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds of timed calls per engine and batch (default 2)",
    )
    arg(
        "--max-iters",
        type=int,
        default=1000,
        metavar="N",
        help="timed calls per engine and batch, at most (default 1000)",
    )
    arg(
        "--rounds",
        type=int,
        default=10,
        metavar="N",
        help="interleaved rounds per batch; every engine runs once a round at least (default 10)",
    )
    arg(
        "--task",
        choices=["auto", "classify", "embed"],
        default="auto",
        help="agreement as top-1 (classify) or cosine (embed); auto: classify for (batch, C)",
    )
    arg("--dim", action="append", default=[], metavar="NAME=SIZE", help="bind a symbolic dim")
    arg("--seed", type=int, default=0, help="seed of the random inputs")
    arg("--json", metavar="OUT.json", help="write the JSON report (python -m ember.bench.schema)")
    arg("--html", metavar="OUT.html", help="write a self-contained HTML report with plots")
    arg("-q", "--quiet", action="store_true", help="no progress bar or notes, tables only")
    b.set_defaults(func=cmd_bench)

    q = sub.add_parser(
        "quantize", help="int8/int4/fp16/bf16 model, its fidelity against fp32, within a budget"
    )
    arg = q.add_argument
    arg("model")
    arg("-o", "--output", required=True, help="where to write the quantized model")
    arg(
        "--mode",
        choices=["static", "dynamic", "weight-only", "fp16", "bf16"],
        default="static",
        help="static int8 (needs --calib), dynamic int8, weight-only int8/int4, fp16, bf16",
    )
    arg("--bits", type=int, choices=[8, 4], default=8, help="4 only with --mode weight-only")
    arg(
        "--calib",
        metavar="DATA.npz",
        help="calibration samples: one array per model input, named after it (+ optional labels)",
    )
    arg(
        "--method",
        choices=["minmax", "percentile", "entropy", "mse"],
        default="minmax",
        help="how calibration turns activation ranges into clip ranges (default minmax)",
    )
    arg(
        "--per-channel",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="per-channel weight scales (default on)",
    )
    arg("--group-size", type=int, default=None, metavar="N", help="weight-only: 32, 64 or 128")
    arg(
        "--calib-samples",
        dest="calibration_samples",
        type=int,
        default=None,
        metavar="N",
        help="calibrate on at most N samples",
    )
    arg(
        "--max-drop",
        type=float,
        default=None,
        metavar="0.01",
        help="accuracy budget (0.01 = 1 point): keep the most sensitive layers in fp32 to meet it",
    )
    arg(
        "--eval",
        metavar="DATA.npz",
        help="held-out samples for the fidelity report (with `labels`: the accuracy drop)",
    )
    arg("-q", "--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_quantize)

    from ember.compress.commands import add_parsers as add_compress_parsers
    from ember.serve.cli import add_parser as add_serve_parser

    add_compress_parsers(sub)  # prune, lowrank, distill
    add_serve_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except EmberError as e:
        print(f"ember {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
