"""`ember serve`: parse flags and a config file into a ServerConfig, then serve. No logic here.

    ember serve digits_cnn model.onnx bert=minilm.onnx --replicas 2 --max-batch 32 --cache-size 1000
    ember serve --config serve.toml
    ember serve model.onnx --ray --max-replicas 4

Per-model settings in the config file win over flags, which win over the defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ember.errors import ConfigError

_MODEL_FLAGS = {  # flag dest -> ModelConfig field
    "replicas": "replicas",
    "threads": "threads",
    "max_batch": "max_batch",
    "max_delay_ms": "max_delay_ms",
    "queue_limit": "queue_limit",
    "cache_size": "cache_size",
    "balance": "balance",
    "exact": "exact",
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `serve` subcommand to the `ember` command's subparsers."""
    p = subparsers.add_parser(
        "serve",
        help="serve models over KServe v2 HTTP/gRPC with batching, replicas, cache, metrics",
        description="Serve ONNX models over the Open Inference Protocol (KServe v2), "
        "HTTP and gRPC. "
        "MODEL is a path, a bundled zoo model name, or NAME=PATH.",
    )
    p.add_argument(
        "models", nargs="*", metavar="MODEL", help="model.onnx, digits_cnn, or NAME=PATH"
    )
    p.add_argument("--config", help="a .toml/.yaml file with [server] and [models.NAME] settings")
    p.add_argument(
        "--host", default=None, help="address to bind (default 127.0.0.1: loopback only)"
    )
    p.add_argument(
        "--port", type=int, default=None, help="HTTP port (default 8000; 0 picks a free one)"
    )
    p.add_argument(
        "--grpc-port", type=int, default=None, help="gRPC port (default 8001; -1 turns gRPC off)"
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="worker processes per model (default 1; 0 runs in the server process)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="threads per model with --replicas 0 (default 1)"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="rows per dynamic batch (default 32; 1 turns batching off)",
    )
    p.add_argument(
        "--max-delay-ms", type=float, default=None, help="longest wait to fill a batch (default 2)"
    )
    p.add_argument(
        "--queue-limit", type=int, default=None, help="queued requests before 503 (default 256)"
    )
    p.add_argument(
        "--cache-size",
        type=int,
        default=None,
        help="response cache entries per model (default 0: off)",
    )
    p.add_argument(
        "--balance",
        choices=("least", "p2c"),
        default=None,
        help="replica choice: least outstanding or power of two choices (default least)",
    )
    p.add_argument(
        "--exact", action="store_true", default=None, help="float64 accumulation (the oracle)"
    )
    p.add_argument(
        "--api-key-file",
        default=None,
        help="file with API keys, one a line; then only health answers without a key",
    )
    p.add_argument(
        "--max-request-mb", type=float, default=None, help="request body cap in MiB (default 64)"
    )
    p.add_argument(
        "--ray", action="store_true", help="deploy on Ray Serve instead (past one machine)"
    )
    p.add_argument(
        "--ray-address", default=None, help="Ray cluster to join (default: start a local one)"
    )
    p.add_argument(
        "--min-replicas", type=int, default=None, help="Ray autoscaling floor (default --replicas)"
    )
    p.add_argument(
        "--max-replicas",
        type=int,
        default=None,
        help="Ray autoscaling ceiling (default --replicas)",
    )
    p.set_defaults(func=cmd_serve)
    return p


def build_config(args: argparse.Namespace) -> Any:
    """The ServerConfig that `args` (and its --config file) describe."""
    from ember.serve.config import (
        ModelConfig,
        ServerConfig,
        models_from_config,
        read_api_keys,
        read_config_file,
        server_settings,
    )

    doc: dict[str, Any] = read_config_file(args.config) if args.config else {}
    server = server_settings(doc)
    flags = {
        field: getattr(args, dest)
        for dest, field in _MODEL_FLAGS.items()
        if getattr(args, dest) is not None
    }
    base = Path(args.config).parent if args.config else Path.cwd()
    models = models_from_config(doc, flags, base)
    for item in args.models:
        name, sep, path = item.partition("=")
        if not sep:
            path = item
            name = Path(item).stem if item.endswith(".onnx") else item
        models.append(ModelConfig(name=name, path=path, **flags))
    host = args.host or server.get("host", "127.0.0.1")
    port = args.port if args.port is not None else server.get("port", 8000)
    grpc_port = args.grpc_port if args.grpc_port is not None else server.get("grpc_port", 8001)
    key_file = args.api_key_file or server.get("api_key_file")
    mb = (
        args.max_request_mb if args.max_request_mb is not None else server.get("max_request_mb", 64)
    )
    if mb <= 0:
        raise ConfigError(f"--max-request-mb must be positive, got {mb}")
    return ServerConfig(
        models=tuple(models),
        host=host,
        port=port,
        grpc_port=None if grpc_port is not None and grpc_port < 0 else grpc_port,
        api_keys=read_api_keys(key_file) if key_file else frozenset(),
        max_request_bytes=int(mb * 2**20),
        drain_timeout_s=float(server.get("drain_timeout_s", 30.0)),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    config = build_config(args)
    if args.ray:
        from ember.serve.ray_serve import run_ray

        run_ray(
            config,
            address=args.ray_address,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
        )
        return 0
    from ember.serve.server import serve

    def announce(server: Any, port: int) -> None:
        names = ", ".join(server.endpoints)
        grpc = f", gRPC on {config.host}:{server.grpc_port}" if server.grpc_port else ""
        auth = " (API key required)" if config.api_keys else ""
        print(
            f"ember serve: {names} on http://{config.host}:{port}{grpc}{auth}",
            file=sys.stderr,
            flush=True,
        )

    serve(config, on_ready=announce)
    return 0
