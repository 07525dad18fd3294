"""Unstructured 90% sparsity on the zoo MNIST MLP: ember's sparse kernel vs its dense one, and ORT.

The MLP's Gemm weights are magnitude-pruned to 90% per layer (NumPy, here), then the same pruned
model runs three ways: ember with sparse kernels off (oneDNN dense matmuls), ember with the
crossover on (runtime/sparse.py picks per layer), and onnxruntime on the pruned file. Times are
the best of interleaved rounds (median of each round's calls), at batch 1 and 32.

    .venv/bin/python benchmarks/sparse.py [--sparsity 0.9] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

import ember
from ember.runtime import sparse as rs
from ember.zoo import model_path


def prune(model: onnx.ModelProto, sparsity: float) -> onnx.ModelProto:
    """Every 2-D initializer with its smallest |w| zeroed, `sparsity` of each layer."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    for init in pruned.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim == 2:
            cut = np.quantile(np.abs(w), sparsity)
            init.CopyFrom(numpy_helper.from_array(np.where(np.abs(w) > cut, w, 0), init.name))
    return pruned


def median_call(fn: Callable[[], Any], calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    import onnxruntime as ort

    model = prune(onnx.load(model_path("mnist_mlp")), args.sparsity)
    data = np.load(str(model_path("mnist_mlp")).replace(".onnx", "_eval.npz"))
    x_all = data["x"].astype(np.float32).reshape(len(data["x"]), -1)

    rs.enabled = False
    dense = ember.load(model.SerializeToString())
    rs.enabled = True
    sparse = ember.load(model.SerializeToString())
    options = ort.SessionOptions()
    options.intra_op_num_threads = ember.kernels.cpu.dnnl.get_num_threads()
    session = ort.InferenceSession(model.SerializeToString(), options)

    print("per layer, kernel calls alone (out= given):")
    from ember.kernels.cpu import dnnl
    from ember.kernels.cpu import sparse as sparse_kernels

    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in gemms:
        w, bias = weights[node.input[1]], weights[node.input[2]]
        kernels_of = {
            "dense": dnnl.MatMul(w, bias, trans_b=True),
            "sparse": sparse_kernels.SparseMatMul(w, bias, trans_b=True),
        }
        for batch in (1, 32):
            a = np.random.default_rng(0).standard_normal((batch, w.shape[1]), dtype=np.float32)
            out = np.empty((batch, w.shape[0]), np.float32)
            best = dict.fromkeys(kernels_of, float("inf"))
            for _ in range(args.rounds):
                for name, k in kernels_of.items():
                    call = lambda k=k, a=a, out=out: k(a, out=out)  # noqa: E731
                    best[name] = min(best[name], median_call(call, 200))
            print(
                f"  {node.name:>8} {w.shape[1]}->{w.shape[0]} M={batch:<3}"
                f" dense {best['dense'] * 1e6:7.2f} us  sparse {best['sparse'] * 1e6:7.2f} us"
                f"  {best['dense'] / best['sparse']:5.2f}x"
            )
    kernels = [s.kernel for s in sparse.profile({"input": x_all[:1]}, repeat=1).steps]
    print(f"pruned to {args.sparsity:.0%} per layer; ember picked: {kernels}")
    header = f"{'batch':>5} {'ember dense':>12} {'ember sparse':>13} {'ORT':>9}"
    print(header + "  sparse/dense  sparse/ORT")
    for batch in (1, 32):
        x = x_all[:batch]
        want = session.run(None, {"input": x})[0]
        for m in (dense, sparse):
            np.testing.assert_allclose(m.run({"input": x})["logits"], want, rtol=1e-4, atol=1e-4)
        engines = {
            "dense": lambda x=x: dense.run({"input": x}),
            "sparse": lambda x=x: sparse.run({"input": x}),
            "ort": lambda x=x: session.run(None, {"input": x}),
        }
        best = dict.fromkeys(engines, float("inf"))
        for _ in range(args.rounds):
            for name, fn in engines.items():
                best[name] = min(best[name], median_call(fn, 200))
        d, s, o = best["dense"], best["sparse"], best["ort"]
        print(
            f"{batch:>5} {d * 1e6:>9.2f} us {s * 1e6:>10.2f} us {o * 1e6:>6.2f} us"
            f"  {d / s:>11.2f}x {o / s:>10.2f}x"
        )


if __name__ == "__main__":
    main()
