"""Calibration memory: peak RSS of static int8 calibration on 1,000 samples against the peak RSS
of running the model itself, each in a fresh process.

    python benchmarks/calibration_memory.py                 # the zoo digits CNN and ResNet-18
    python benchmarks/calibration_memory.py --models digits_cnn --samples 1000

Both peaks are VmHWM minus the process's RSS once ember is imported, the way `ember bench`
measures engines. The model's own peak is one batch-1 run (load included); calibration streams the
samples in batches of 32 from a generator, so the data itself never sits in memory whole.
Issue #5 asks for calibration under 2x the model's own peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path.home() / ".cache" / "ember" / "bench"


def model_file(name: str) -> Path:
    """A zoo model, or a vision model of the suite (exported once and cached, as suite.py does)."""
    if name in ("digits_cnn", "mnist_mlp"):
        from ember.zoo import model_path

        return Path(model_path(name))
    sys.path.insert(0, str(HERE))
    import suite  # benchmarks/ is not a package: found through sys.path

    return Path(suite.vision_case(name)(CACHE)["model"])


CHILD = r"""
import json, sys
import numpy as np

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

import ember
from ember.compress import QuantConfig, quantize_graph
from ember.ir import load_model

path, what, samples, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
open("/proc/self/clear_refs", "w").write("5")  # VmHWM from here on
base = status("VmRSS")
model = load_model(path)
spec = model.graph.inputs[0]
dims = [d if isinstance(d, int) else 1 for d in spec.shape]

def batches():
    rng = np.random.default_rng(0)
    left = samples
    while left > 0:
        n = min(batch, left)
        left -= n
        yield {spec.name: rng.standard_normal([n, *dims[1:]]).astype(np.float32)}

if what == "inference":
    m = ember.load(path)
    m.run({spec.name: np.random.default_rng(0).standard_normal(dims).astype(np.float32)})
else:
    quantize_graph(model, QuantConfig(mode="static"), batches())
print(json.dumps({"peak": status("VmHWM") - base}))
"""


def peak(path: Path, what: str, samples: int, batch: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), what, str(samples), str(batch)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(json.loads(out.strip().splitlines()[-1])["peak"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="digits_cnn,resnet18")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32, help="calibration batch size")
    args = p.parse_args()
    print("| model | inference peak MiB (batch 1) | calibration peak MiB | ratio |")
    print("|---|---|---|---|")
    for name in args.models.split(","):
        path = model_file(name)
        run = peak(path, "inference", 0, 1)
        cal = peak(path, "calibration", args.samples, args.batch)
        print(f"| {name} | {run / 2**20:.1f} | {cal / 2**20:.1f} | {cal / run:.2f}x |")


if __name__ == "__main__":
    main()
