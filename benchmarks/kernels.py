"""ember's native kernels against ONNX Runtime running the same op (or the subgraph it replaces).

    python benchmarks/kernels.py              # 2 threads, every case
    python benchmarks/kernels.py --threads 1 --rounds 5

Each case is timed in two worker processes, one per engine, so their thread pools never compete;
the workers take turns for --rounds rounds and each reports the median of its calls. ORT runs a
one-op model (or, for attention, the decomposed MatMul/Mul/Add/Softmax/MatMul graph with its
Reshapes and Transposes, which ember fuses into one kernel) with all graph optimizations on.
Prints one row per case: median microseconds and ORT time / ember time (>1: ember is faster).
ORT's times include InferenceSession.run's own per-call cost (a few microseconds) and ember's its
Python wrapper's (one to two): on the smallest cases that weighs on both sides.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from typing import Any

import numpy as np

# name -> (ONNX op or "attention", shape parameters)
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("attention B=1 S=128 H=12 D=32", "attention", {"B": 1, "S": 128, "H": 12, "D": 32}),
    ("attention B=8 S=128 H=12 D=32", "attention", {"B": 8, "S": 128, "H": 12, "D": 32}),
    ("softmax 12x128x128", "Softmax", {"shape": (12, 128, 128)}),
    ("layernorm 128x384", "LayerNormalization", {"shape": (128, 384)}),
    ("gelu 128x1536", "Gelu", {"shape": (128, 1536)}),
    ("matmul 128x384 @ 384x1536", "MatMul", {"M": 128, "K": 384, "N": 1536}),
    ("conv 3x3 64ch 56x56", "Conv", {"C": 64, "H": 56, "k": 3, "group": 1}),
    ("conv depthwise 3x3 144ch 56x56", "Conv", {"C": 144, "H": 56, "k": 3, "group": 144}),
]


def _inputs(kind: str, p: dict[str, Any]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    f32 = np.float32
    if kind == "attention":
        B, S, H, D = p["B"], p["S"], p["H"], p["D"]
        qkv = {n: rng.standard_normal((B, S, H * D)).astype(f32) for n in "qkv"}
        return {**qkv, "mask": np.zeros((B, 1, 1, S), f32)}
    if kind == "MatMul":
        return {"a": rng.standard_normal((p["M"], p["K"])).astype(f32)}
    if kind == "Conv":
        return {"x": rng.standard_normal((1, p["C"], p["H"], p["H"])).astype(f32)}
    return {"x": rng.standard_normal(p["shape"]).astype(f32)}


def _weights(kind: str, p: dict[str, Any]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    f32 = np.float32
    if kind == "MatMul":
        return {"w": rng.standard_normal((p["K"], p["N"])).astype(f32)}
    if kind == "Conv":
        c, g, k = p["C"], p["group"], p["k"]
        return {"w": rng.standard_normal((c, c // g, k, k)).astype(f32) * 0.1}
    if kind == "LayerNormalization":
        n = p["shape"][-1]
        return {"scale": rng.random(n).astype(f32), "bias": rng.random(n).astype(f32)}
    return {}


def _ort_model(kind: str, p: dict[str, Any]) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    inputs = _inputs(kind, p)
    inits = [numpy_helper.from_array(v, k) for k, v in _weights(kind, p).items()]
    if kind == "attention":
        B, S, H, D = p["B"], p["S"], p["H"], p["D"]
        nodes = [
            helper.make_node("Reshape", ["q", "shp"], ["q4"]),
            helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", ["k", "shp"], ["k4"]),
            helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", ["v", "shp"], ["v4"]),
            helper.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
            helper.make_node("MatMul", ["qt", "kt"], ["s"]),
            helper.make_node("Mul", ["s", "scale"], ["ss"]),
            helper.make_node("Add", ["ss", "mask"], ["sm"]),
            helper.make_node("Softmax", ["sm"], ["pr"], axis=-1),
            helper.make_node("MatMul", ["pr", "vt"], ["o4"]),
            helper.make_node("Transpose", ["o4"], ["ot"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", ["ot", "shp3"], ["y"]),
        ]
        inits += [
            helper.make_tensor("shp", TensorProto.INT64, [4], [B, S, H, D]),
            helper.make_tensor("shp3", TensorProto.INT64, [3], [B, S, H * D]),
            helper.make_tensor("scale", f, [], [1 / np.sqrt(D)]),
        ]
    elif kind == "MatMul":
        nodes = [helper.make_node("MatMul", ["a", "w"], ["y"])]
    elif kind == "Conv":
        pad = p["k"] // 2
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[pad] * 4, group=p["group"])]
    elif kind == "LayerNormalization":
        nodes = [helper.make_node(kind, ["x", "scale", "bias"], ["y"], axis=-1)]
    else:
        nodes = [helper.make_node(kind, ["x"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "case",
        [helper.make_tensor_value_info(k, f, list(v.shape)) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", f, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    return model.SerializeToString()


def _ember_call(kind: str, p: dict[str, Any], threads: int) -> Any:
    from ember.kernels.cpu import dnnl, nn

    dnnl.set_num_threads(threads)
    x = _inputs(kind, p)
    w = _weights(kind, p)
    if kind == "attention":
        out = np.empty_like(x["q"])
        return lambda: nn.attention(x["q"], x["k"], x["v"], x["mask"], num_heads=p["H"], out=out)
    if kind == "Softmax":
        return lambda: nn.softmax(x["x"])
    if kind == "LayerNormalization":
        return lambda: nn.layer_norm(x["x"], w["scale"], w["bias"], epsilon=1e-5)
    if kind == "Gelu":
        return lambda: nn.gelu(x["x"])
    if kind == "MatMul":
        matmul = dnnl.MatMul(w["w"])
        return lambda: matmul(x["a"])
    if kind == "Conv":
        pad = p["k"] // 2
        conv = dnnl.Conv(w["w"], pads=[pad] * 4, group=p["group"], channels_last=True)
        x_nhwc = np.ascontiguousarray(x["x"].transpose(0, 2, 3, 1))  # ember's layout pass does this
        return lambda: conv(x_nhwc)
    raise ValueError(kind)


def _ort_call(kind: str, p: dict[str, Any], threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(_ort_model(kind, p), so, providers=["CPUExecutionProvider"])
    feeds = _inputs(kind, p)
    return lambda: session.run(None, feeds)


def _worker(conn: Any, engine: str, threads: int) -> None:
    calls: dict[int, Any] = {}
    while True:
        msg = conn.recv()
        if msg is None:
            return
        index, seconds = msg
        if index not in calls:
            _, kind, p = CASES[index]
            make = _ember_call if engine == "ember" else _ort_call
            calls[index] = make(kind, p, threads)
            for _ in range(5):
                calls[index]()
        fn = calls[index]
        times = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 5:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        conn.send(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=0.3, help="per engine, case and round")
    args = p.parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    workers = {}
    for engine in ("ember", "ort"):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, engine, args.threads), daemon=True)
        proc.start()
        workers[engine] = (parent, proc)
    print(f"{args.threads} threads; median microseconds per call; ratio = ORT time / ember time")
    print(f"{'case':<34} {'ember us':>10} {'ORT us':>10} {'ratio':>7}")
    for index, (name, _, _) in enumerate(CASES):
        times: dict[str, list[float]] = {"ember": [], "ort": []}
        for r in range(args.rounds):
            order = ("ember", "ort") if r % 2 == 0 else ("ort", "ember")
            for engine in order:
                conn, _ = workers[engine]
                conn.send((index, args.seconds))
                times[engine].extend(conn.recv())
        e, o = (statistics.median(times[k]) * 1e6 for k in ("ember", "ort"))
        print(f"{name:<34} {e:>10.1f} {o:>10.1f} {o / e:>6.2f}x", flush=True)
    for conn, proc in workers.values():
        conn.send(None)
        proc.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
