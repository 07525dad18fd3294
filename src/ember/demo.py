"""`make demo`: load the bundled digits CNN, run its held-out set, print accuracy and latency, then
bench it against ONNX Runtime (skipped, with one line, when onnxruntime is not installed).

    python -m ember.demo
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import ember
from ember import zoo


def main() -> int:
    name = "digits_cnn"
    path = zoo.model_path(name)
    start = time.perf_counter()
    model = ember.load(path)
    load_ms = (time.perf_counter() - start) * 1e3
    data = zoo.load_eval(name)
    print(f"ember {ember.__version__}: {name} ({path.name}), loaded in {load_ms:.1f} ms")
    print(f"  {model}")

    logits = model.run({"input": data.x})["logits"]
    accuracy = float((logits.argmax(axis=1) == data.y).mean())
    print(f"  held-out accuracy: {accuracy:.2%} on {len(data.y)} real handwritten digits")

    # Batch-1 latency: warm up, then time individual requests.
    sample = data.x[:1]
    for _ in range(10):
        model.run({"input": sample})
    times = []
    for i in range(200):
        x = data.x[i % len(data.x)][None]
        t0 = time.perf_counter()
        model.run({"input": x})
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    p90 = times[int(0.9 * len(times))]
    print(f"  batch-1 latency: median {statistics.median(times):.3f} ms, p90 {p90:.3f} ms")

    t0 = time.perf_counter()
    repeats = 5
    for _ in range(repeats):
        model.run({"input": data.x})
    per_sample = (time.perf_counter() - t0) / (repeats * len(data.x))
    print(f"  batch-{len(data.x)} throughput: {1 / per_sample:,.0f} samples/s")
    agree = np.array_equal(
        ember.load(path, exact=True).run({"input": data.x})["logits"].argmax(axis=1),
        logits.argmax(axis=1),
    )
    print(f"  top-1 agreement with exact (float64) mode: {'100%' if agree else 'NOT 100%'}")
    bench_against_ort(name, data.x)
    return 0


def bench_against_ort(name: str, x: np.ndarray) -> None:
    """A short `ember bench` of the model against ONNX Runtime (interleaved, separate processes)."""
    from ember.bench import bench
    from ember.bench.console import fmt_agreement, fmt_ratio

    batches = [1, 32]
    print(f"\nember bench {name} --batch {','.join(map(str, batches))} --peers ort --min-time 0.5")
    report = bench(
        zoo.model_path(name),
        inputs={"input": x},
        batches=batches,
        peers=["ort"],
        min_time=0.5,
        rounds=5,
        show=False,
    )
    ran_ort = any(r["peer"] == "ort" for r in report.ratios)
    for b in batches:
        row = report.result("ember", b)
        line = f"  batch {b:>2}: ember {row['latency']['median_ms']:.3f} ms"
        if ran_ort:
            ort = report.result("ort", b)
            ratio = next(r for r in report.ratios if r["peer"] == "ort" and r["batch"] == b)
            line += (
                f", ORT {ort['latency']['median_ms']:.3f} ms per call (median): ember/ORT speed "
                f"{fmt_ratio(ratio)}; ORT {fmt_agreement(ort['agreement'])} vs exact mode"
            )
        print(line)
    if ran_ort:
        print(
            "  (>1 means ember is faster; a model this small is one native call per run, so "
            "a call costs its kernels and a few microseconds of Python)"
        )
    print(f"  full report with plots: ember bench {name} --batch 1,8,32 --html report.html")


if __name__ == "__main__":
    raise SystemExit(main())
