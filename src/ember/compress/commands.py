"""`ember prune`, `ember lowrank` and `ember distill`: parse flags, call the library, print the
per-layer table and the before/after table, write the model atomically. No logic of its own.

    ember prune model.onnx -o small.onnx --kind structured --sparsity 0.5 --eval eval.npz
    ember lowrank model.onnx -o lr.onnx --energy 0.95
    ember distill teacher.onnx student.onnx -o trained.onnx --data train.npz --epochs 5
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ember.errors import ConfigError


def add_parsers(subparsers: Any) -> None:
    """Add the `prune`, `lowrank` and `distill` subcommands to the `ember` command."""
    p = subparsers.add_parser(
        "prune",
        help="zero small weights (unstructured) or remove channels/neurons/heads (structured)",
        description="Prune a model: unstructured magnitude pruning keeps the shapes (the sparse "
        "kernels run it faster); structured pruning removes whole channels, neurons and "
        "attention heads, so the saved model is smaller.",
    )
    arg = p.add_argument
    arg("model")
    arg("-o", "--output", required=True, help="where to write the pruned model")
    arg("--kind", choices=["unstructured", "structured"], default="unstructured")
    arg("--sparsity", type=float, default=0.5, help="fraction removed, in [0, 1) (default 0.5)")
    arg(
        "--scope",
        choices=["global", "layer"],
        default="global",
        help="unstructured: one magnitude threshold over all layers, or each layer to --sparsity",
    )
    arg(
        "--importance",
        choices=["l1", "l2", "taylor"],
        default="l1",
        help="structured: channel score (taylor needs --data and torch)",
    )
    arg(
        "--granularity",
        choices=["channel", "head"],
        default="channel",
        help="structured: 'head' also removes whole attention heads",
    )
    arg("--exclude", action="append", default=[], metavar="NODE", help="a node left whole")
    arg("--data", metavar="DATA.npz", help="samples for --importance taylor (+ optional labels)")
    _report_options(p)
    p.set_defaults(func=cmd_prune)

    lr = subparsers.add_parser(
        "lowrank",
        help="factorize large Gemm/MatMul weights by truncated SVD where it saves FLOPs",
    )
    arg = lr.add_argument
    arg("model")
    arg("-o", "--output", required=True, help="where to write the factorized model")
    how = lr.add_mutually_exclusive_group(required=True)
    how.add_argument("--energy", type=float, help="fraction of squared singular values kept")
    how.add_argument("--rank", type=int, help="singular values kept per layer")
    arg("--min-size", type=int, default=64 * 64, help="skip weights smaller than this")
    _report_options(lr)
    lr.set_defaults(func=cmd_lowrank)

    d = subparsers.add_parser(
        "distill", help="train a student model on a teacher's outputs (needs torch)"
    )
    arg = d.add_argument
    arg("teacher")
    arg("student")
    arg("-o", "--output", required=True, help="where to write the trained student")
    arg("--data", required=True, metavar="DATA.npz", help="training samples (+ optional labels)")
    arg("--epochs", type=int, default=3)
    arg("--lr", type=float, default=1e-3)
    arg("--temperature", type=float, default=4.0)
    arg("--alpha", type=float, default=0.7, help="weight of the teacher's soft loss")
    arg("--batch-size", type=int, default=32)
    _report_options(d)
    d.set_defaults(func=cmd_distill)


def _report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--eval",
        metavar="DATA.npz",
        help="held-out samples for fidelity (with `labels`: accuracy before and after)",
    )
    p.add_argument(
        "--runs", type=int, default=20, help="timed runs per batch size for latency (default 20)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="threads for latency (default: one per core)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no training progress bar")


def _output(args: argparse.Namespace, *sources: str) -> Path:
    out = Path(args.output)
    for src in sources:
        if out.resolve() == Path(src).resolve():
            raise ConfigError(f"-o {out}: would overwrite the input model {src}; name another file")
    return out


def _finish(args: argparse.Namespace, before: Any, after: Any, title: str, out: Path) -> None:
    from ember.compress.report import compare
    from ember.ir import save_model

    report = compare(
        before, after, title=title, eval_data=args.eval, runs=args.runs, threads=args.threads
    )
    save_model(after, out)  # atomic: a failure above writes nothing
    print(report.format())
    print(f"written to {out}")


def cmd_prune(args: argparse.Namespace) -> int:
    from ember.compress.prune import PruneConfig, prune_model
    from ember.ir import load_model

    out = _output(args, args.model)
    config = PruneConfig(
        kind=args.kind,
        sparsity=args.sparsity,
        scope=args.scope,
        importance=args.importance,
        granularity=args.granularity,
        exclude=tuple(args.exclude),
    )
    original = load_model(args.model)
    result = prune_model(original, config, args.data)
    print(result.format())
    _finish(args, original, result.model, f"prune {args.kind}", out)
    return 0


def cmd_lowrank(args: argparse.Namespace) -> int:
    from ember.compress.lowrank import LowRankConfig, lowrank
    from ember.ir import load_model

    out = _output(args, args.model)
    if args.rank is not None:
        config = LowRankConfig(energy=None, rank=args.rank, min_size=args.min_size)
    else:
        config = LowRankConfig(energy=args.energy, min_size=args.min_size)
    original = load_model(args.model)
    model, layers = lowrank(original, config)
    print(f"{'layer':<40} {'K x N':>12} {'rank':>6} {'rel. error':>10} {'FLOPs/row':>20}")
    for layer in layers:
        shape = f"{layer.shape[0]}x{layer.shape[1]}"
        if layer.replaced:
            flops = f"{layer.flops_before} -> {layer.flops_after}"
            error = f"{layer.error:.4f}"
            print(f"{layer.name[:40]:<40} {shape:>12} {layer.rank:>6} {error:>10} {flops:>20}")
        else:
            print(f"{layer.name[:40]:<40} {shape:>12}  left whole: {layer.reason}")
    _finish(args, original, model, "lowrank", out)
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from ember.compress.distill import DistillConfig, distill
    from ember.ir import load_model

    out = _output(args, args.teacher, args.student)
    config = DistillConfig(
        temperature=args.temperature,
        alpha=args.alpha,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
    )
    teacher = load_model(args.teacher)
    trained = distill(teacher, args.student, args.data, config, progress=not args.quiet)
    _finish(args, teacher, trained, "distill (teacher -> student)", out)
    return 0
