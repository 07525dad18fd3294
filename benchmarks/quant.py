"""int8 benchmark: ember against ONNX Runtime and OpenVINO on ONNX Runtime's own quantization.

    python benchmarks/quant.py                      # resnet18, mobilenet_v2, minilm_l6; batch 1, 32
    python benchmarks/quant.py --models resnet18 --batches 1 --min-time 0.5

Each model's fp32 export (benchmarks/suite.py builds and caches it) is quantized by ONNX Runtime:
quantize_static (QDQ, per-channel int8 weights, uint8 activations, calibrated on 16 random-but-
plausible images) for the CNNs, quantize_dynamic (per-channel) for MiniLM. Every engine then runs
that same int8 file through `ember.bench` (interleaved, one process per engine, 2 threads), and
the table shows ember speed / peer speed (>1: ember is faster).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import suite  # noqa: E402  (benchmarks/ is not a package)

MODELS = ("resnet18", "mobilenet_v2", "minilm_l6")


def calibration_images(n: int = 16) -> list[dict[str, np.ndarray]]:
    """ImageNet-normalized noise with some spatial structure: what a camera frame looks like to
    the first conv after normalization (values mostly within +-2.5)."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        coarse = rng.standard_normal((1, 3, 28, 28)).astype(np.float32)
        image = np.kron(coarse, np.ones((1, 1, 8, 8), np.float32))
        image += 0.3 * rng.standard_normal(image.shape).astype(np.float32)
        out.append({"input": np.clip(image, -2.5, 2.5)})
    return out


def quantized(name: str, fp32: Path, cache: Path) -> Path:
    """ONNX Runtime's int8 version of `fp32`, cached next to it."""
    from onnxruntime import quantization as q

    path = cache / f"{fp32.stem}-ort-int8.onnx"
    if path.exists():
        return path
    print(f"  quantizing {fp32.name} with ONNX Runtime -> {path.name}", flush=True)
    tmp = path.with_suffix(".tmp.onnx")
    if name == "minilm_l6":
        q.quantize_dynamic(str(fp32), str(tmp), per_channel=True, weight_type=q.QuantType.QInt8)
    else:

        class Reader(q.CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(calibration_images())

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._it, None)

        q.quantize_static(
            str(fp32),
            str(tmp),
            Reader(),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
        )
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    import ember.bench

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"subset of {', '.join(MODELS)}")
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds per engine and batch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cache", type=Path, default=suite.DEFAULT_CACHE)
    args = p.parse_args(argv)
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(wanted) - set(MODELS))
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    batches = tuple(int(b) for b in args.batches.split(","))
    reports = args.cache / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    cases = {c.name: c for c in suite.CASES}
    docs: list[dict[str, Any]] = []
    for name in wanted:
        case = cases[name]
        lacking = suite.missing(case)
        if lacking:
            print(f"skipping {name}: needs {', '.join(lacking)}")
            continue
        print(f"== {name} int8", flush=True)
        kwargs = case.prepare(args.cache)
        kwargs.pop("torch_module", None)  # the peers run the int8 file, not the torch module
        model = quantized(name, Path(kwargs.pop("model")), args.cache)
        report = ember.bench(
            str(model),
            **kwargs,
            name=f"{name}-int8",
            batches=batches,
            peers=("ort", "openvino"),
            threads=args.threads,
            task=case.task,
            min_time=args.min_time,
            rounds=args.rounds,
            max_iters=300,
            json=reports / f"{name}-int8.json",
        )
        docs.append(report.data)
    if not docs:
        print("nothing ran")
        return 1
    print("\n" + suite.ratio_table(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
