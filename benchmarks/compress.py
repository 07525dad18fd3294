"""Compression benchmark (issue #6): structured pruning + distillation + static int8, then ember on
the compressed model against ONNX Runtime and OpenVINO on their own int8 of the original.

    python benchmarks/compress.py                          # digits_cnn, mnist_mlp, digits_resnet
    python benchmarks/compress.py --models digits_resnet --min-time 1
    python benchmarks/compress.py --quick                  # short timings (a smoke run)

Models: the zoo digits CNN and MNIST MLP, on exactly the zoo's train / held-out split
(scripts/build_zoo.py's RECIPES and normalize), and digits_resnet, a residual CNN of ~460k
parameters defined here and trained on the same sklearn digits upscaled to 32x32 (seeded, one torch
thread, about a minute; cached in --cache). Per model: ember.prune (structured, L1 channel
importance) -> ember.distill from the original on the train set with its labels -> ember.quantize
(static int8, calibrated on train samples). Printed: the before/after table, the held-out accuracy
of every stage and of ONNX Runtime's quantize_static int8 of the original, then `ember.bench` with
ember on the compressed file while the peers run their int8 of the original (2 threads,
interleaved), and the ratio table: ember speed / peer speed (>1: ember is faster).
The issue's targets: final accuracy within 1 point of fp32; >= 2x the best int8 peer at batch 1, 32.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "scripts"))

DEFAULT_CACHE = Path.home() / ".cache" / "ember" / "bench"
SEED = 0
TARGET_ACCURACY_DROP = 0.01  # 1 point
TARGET_SPEEDUP = 2.0
INT8_PEERS = {"ort": "ORT int8", "openvino-int8": "OpenVINO int8"}


@dataclasses.dataclass(frozen=True)
class Data:
    """Normalized float32 inputs in the model's layout, int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray


@dataclasses.dataclass(frozen=True)
class Case:
    """One model and the pipeline settings that keep its accuracy (found by trying; see notes)."""

    name: str
    prepare: Callable[[Path], tuple[Path, Data]]  # cache dir -> (fp32 ONNX file, data)
    sparsity: float  # structured: fraction of each layer's channels removed
    epochs: int
    lr: float
    calibration: int = 256  # train samples the int8 ranges are calibrated on


# -- data and models -------------------------------------------------------------------------------


def zoo_data(name: str) -> Data:
    """The zoo's own split (build_zoo trains on x_train; zoo/*_eval.npz holds x_eval)."""
    from build_zoo import RECIPES, normalize

    split = RECIPES[name].load()
    return Data(
        normalize(name, split.x_train), split.y_train, normalize(name, split.x_eval), split.y_eval
    )


def zoo_case(name: str) -> Callable[[Path], tuple[Path, Data]]:
    def prepare(cache: Path) -> tuple[Path, Data]:
        from ember import zoo

        return zoo.model_path(name), zoo_data(name)

    return prepare


# Digits are upscaled from 8x8 so that the convolutions, not call overhead, dominate.
RESNET_SIZE = 32
RESNET_EPOCHS = 6
RESNET_LR = 3e-3


def upscale(x: np.ndarray) -> np.ndarray:
    """(N, 1, 8, 8) -> (N, 1, 32, 32), bilinear."""
    import torch

    t = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=(RESNET_SIZE, RESNET_SIZE), mode="bilinear", align_corners=False
    )
    return np.ascontiguousarray(t.numpy(), dtype=np.float32)


def build_resnet() -> Any:
    """A small ResNet: stem 32 ch at 32x32, stages of 64 (16x16) and 128 (8x8) channels with one
    residual block each, global average pool, linear. ~460k parameters, ~48M MACs a sample."""
    from torch import nn

    def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out)
        )

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.a, self.b = conv_bn(c, c), conv_bn(c, c)

        def forward(self, x: Any) -> Any:
            return nn.functional.relu(x + self.b(nn.functional.relu(self.a(x))))

    class DigitsResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                conv_bn(1, 32), nn.ReLU(),  # (B, 32, 32, 32)
                conv_bn(32, 64, stride=2), nn.ReLU(),  # (B, 64, 16, 16)
                Block(64),
                conv_bn(64, 128, stride=2), nn.ReLU(),  # (B, 128, 8, 8)
                Block(128),
                nn.AdaptiveAvgPool2d(1),  # (B, 128, 1, 1)
            )  # fmt: skip
            self.head = nn.Linear(128, 10)

        def forward(self, x: Any) -> Any:
            return self.head(self.features(x).flatten(1))  # (B, 10)

    return DigitsResNet()


def train_resnet(data: Data) -> Any:
    import torch

    torch.manual_seed(SEED)
    model = build_resnet()
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    opt = torch.optim.AdamW(model.parameters(), lr=RESNET_LR, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, RESNET_LR, total_steps=RESNET_EPOCHS * -(-len(x) // 32)
    )
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(RESNET_EPOCHS):
        for idx in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def export(module: Any, example: np.ndarray, path: Path) -> None:
    """As scripts/build_zoo.py exports: TorchScript exporter, opset 17, BatchNorm kept."""
    import torch

    warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
    warnings.filterwarnings("ignore", "It is recommended that constant folding", UserWarning)
    torch.onnx.export(
        module,
        (torch.from_numpy(example),),
        path,
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        training=torch.onnx.TrainingMode.PRESERVE,
    )


def resnet_case(cache: Path) -> tuple[Path, Data]:
    """Train and export digits_resnet once; the file and its data split are cached."""
    import torch

    digits = zoo_data("digits_cnn")
    data = Data(upscale(digits.x_train), digits.y_train, upscale(digits.x_eval), digits.y_eval)
    path = cache / f"digits_resnet-torch{torch.__version__.split('+')[0]}.onnx"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"  training digits_resnet ({RESNET_EPOCHS} epochs, 1 thread) -> {path}", flush=True)
        start = time.perf_counter()
        module = train_resnet(data)
        tmp = path.with_suffix(".tmp.onnx")
        export(module, data.x_eval[:2], tmp)
        tmp.replace(path)
        print(f"  trained in {time.perf_counter() - start:.0f} s", flush=True)
    np.savez(path.with_name(path.stem + "_eval.npz"), x=data.x_eval, y=data.y_eval)
    return path, data


CASES = [
    Case("digits_cnn", zoo_case("digits_cnn"), sparsity=0.5, epochs=30, lr=3e-3),
    Case("mnist_mlp", zoo_case("mnist_mlp"), sparsity=0.5, epochs=20, lr=1e-3),
    # 0.75 leaves 8/16/32 channels (multiples of 8) and runs 2.2x faster than 0.5 at batch 32;
    # 8 epochs at lr 1e-3 left it 0.8 points short, 16 at 2e-3 recover all of it.
    Case("digits_resnet", resnet_case, sparsity=0.75, epochs=16, lr=2e-3),
]


# -- the pipeline ----------------------------------------------------------------------------------


def accuracy(model: Any, data: Data) -> float:
    """Held-out top-1 accuracy of an ONNX path or onnx_ir.Model run by ember."""
    import ember

    (logits,) = ember.load(model).run({"input": data.x_eval}).values()
    return float((np.asarray(logits).argmax(1) == data.y_eval).mean())


def ort_accuracy(path: Path, data: Data) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": data.x_eval})
    return float((logits.argmax(1) == data.y_eval).mean())


@dataclasses.dataclass(frozen=True)
class Compressed:
    path: Path
    accuracies: dict[str, float]  # stage -> held-out accuracy
    table: str  # the before/after table


def compress(case: Case, original: Path, data: Data, out_dir: Path, *, quick: bool) -> Compressed:
    import ember
    from ember.bench.harness import quantize_int8
    from ember.compress import DistillConfig, PruneConfig, QuantConfig
    from ember.compress.prune import prune_model
    from ember.compress.report import compare
    from ember.ir import load_model, save_model

    acc: dict[str, float] = {"fp32 original": accuracy(original, data)}
    start = time.perf_counter()
    pruned = prune_model(original, PruneConfig(kind="structured", sparsity=case.sparsity))
    print(pruned.format())
    acc[f"pruned {case.sparsity:.0%} (structured)"] = accuracy(pruned.model, data)
    distilled = ember.distill(
        original,
        pruned.model,
        {"input": data.x_train},
        DistillConfig(epochs=case.epochs, lr=case.lr, seed=SEED),
        labels=data.y_train,
    )
    acc[f"+ distilled ({case.epochs} epochs)"] = accuracy(distilled, data)
    calibration = {"input": data.x_train[: case.calibration]}
    quantized = ember.quantize(distilled, QuantConfig(mode="static"), calibration, progress=False)
    path = out_dir / f"{case.name}-compressed-int8.onnx"
    quantized.save(path)
    acc["+ static int8 (final, ember)"] = accuracy(path, data)
    acc["final, run by onnxruntime"] = ort_accuracy(path, data)
    print(f"  compressed in {time.perf_counter() - start:.1f} s: {acc}", flush=True)

    samples = [{"input": data.x_train[i : i + 1]} for i in range(case.calibration)]
    ort_int8 = quantize_int8(original, out_dir / f"{case.name}-ort-int8.onnx", samples)
    acc["ORT quantize_static int8 of the original"] = ort_accuracy(ort_int8, data)

    # NOTE: the before/after latencies are timed in this process on ONE thread: here (torch
    # loaded, the teacher run) ember's 2-thread pool stalled in whole scheduler ticks (4-80 ms a
    # run on a busy 2-core machine); the bench below times `threads` in clean worker processes.
    report = compare(
        load_model(original),
        load_model(path),
        title=f"{case.name} (latency: 1 thread)",
        eval_data={"input": data.x_eval, "labels": data.y_eval},
        runs=10 if quick else 50,
        threads=1,
    )
    save_model(distilled, out_dir / f"{case.name}-compressed-fp32.onnx")
    return Compressed(path, acc, report.format())


# -- tables ----------------------------------------------------------------------------------------


def _ratio(doc: dict[str, Any], peer: str, batch: int) -> dict[str, Any] | None:
    return next((r for r in doc["ratios"] if r["peer"] == peer and r["batch"] == batch), None)


def ratio_table(docs: list[dict[str, Any]]) -> str:
    """Markdown: ember's median latency on the compressed model, ember/peer speed against each
    peer's int8 of the original (and OpenVINO f32), and whether the 2x target is met."""
    heads = ["model", "batch", "ember ms", "ORT int8", "OpenVINO int8", "OpenVINO f32"]
    heads += ["vs best int8 peer", f">= {TARGET_SPEEDUP:g}x"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(["---"] * len(heads)) + "|"]
    for doc in docs:
        for batch in doc["config"]["batches"]:
            row = next(r for r in doc["results"] if r["engine"] == "ember" and r["batch"] == batch)
            ms = f"{row['latency']['median_ms']:.3g}" if row["status"] == "ok" else "failed"
            cells = [doc["model"]["name"], str(batch), ms]
            for peer in ("ort", "openvino-int8", "openvino-f32"):
                r = _ratio(doc, peer, batch)
                cells.append(f"{r['value']:.2f}x ({r['low']:.2f}-{r['high']:.2f})" if r else "n/a")
            int8 = [r["value"] for p in INT8_PEERS if (r := _ratio(doc, p, batch))]
            worst = min(int8) if int8 else None
            cells.append(f"{worst:.2f}x" if worst is not None else "n/a")
            cells.append("n/a" if worst is None else ("yes" if worst >= TARGET_SPEEDUP else "no"))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def accuracy_table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| model | stage | held-out accuracy | vs fp32 |", "|---|---|---|---|"]
    for name, accs in results.items():
        base = accs["fp32 original"]
        for stage, value in accs.items():
            lines.append(f"| {name} | {stage} | {value:.2%} | {100 * (value - base):+.2f} pt |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    names = [c.name for c in CASES]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(names), help=f"subset of {', '.join(names)}")
    p.add_argument("--min-time", type=float, default=2.0, help="seconds per engine and batch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="threads of every engine in the bench")
    p.add_argument("--quick", action="store_true", help="short timings: --min-time 0.2, 2 rounds")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, help="where the compressed models go (default: a temp dir)")
    args = p.parse_args(argv)
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    min_time, rounds = (0.2, 2) if args.quick else (args.min_time, args.rounds)
    # NOTE: the machine is shared, and the thread count changes training: one torch thread. The
    # teacher that distill runs in ember takes EMBER_THREADS (read when ember is imported): one
    # thread too, as a pool of 2 on 2 busy cores stalls at every barrier (minutes instead of
    # seconds). The bench passes its own thread count to every engine.
    os.environ.setdefault("EMBER_THREADS", "1")
    import torch

    from ember.bench import bench

    torch.set_num_threads(1)
    reports = args.cache / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    cases = {c.name: c for c in CASES}
    docs: list[dict[str, Any]] = []
    accuracies: dict[str, dict[str, float]] = {}
    tables: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ember-compress-") as tmp:
        out_dir = args.out or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in wanted:
            case = cases[name]
            print(f"== {name}", flush=True)
            original, data = case.prepare(args.cache)
            result = compress(case, original, data, out_dir, quick=args.quick)
            tables.append(result.table)
            accuracies[name] = result.accuracies
            report = bench(
                str(original),
                ember_model=result.path,
                precision="int8",
                peers=("ort", "openvino"),
                batches=(1, 32),
                inputs={"input": data.x_eval},
                threads=args.threads,
                task="classify",
                min_time=min_time,
                rounds=rounds,
                max_iters=2000,
                name=f"{name}-compressed",
                json=reports / f"{name}-compressed.json",
                progress=False,
                show=False,
            )
            docs.append(report.data)
    print("\n" + "\n\n".join(tables))
    print("\n" + accuracy_table(accuracies))
    print("\n" + ratio_table(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
