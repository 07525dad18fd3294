"""One served model: its signature and metadata, validation, cache, batcher and executor.

Shared by the HTTP and gRPC front ends; it knows nothing about either wire format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import ember
from ember.errors import ConfigError, InputError
from ember.serve.batcher import Batcher
from ember.serve.cache import ResponseCache, cache_key
from ember.serve.config import ModelConfig
from ember.serve.metrics import Metrics
from ember.serve.protocol import datatype_of
from ember.serve.replicas import InProcessExecutor, ReplicaPool, intra_op_threads

Feeds = dict[str, np.ndarray]


def resolve_model_path(path: str) -> str:
    """A file path, or the name of a bundled zoo model (`digits_cnn`)."""
    if Path(path).exists():
        return str(Path(path).resolve())
    from ember import zoo

    try:
        return str(zoo.model_path(path))
    except Exception:  # noqa: BLE001 - any zoo miss becomes the one clear message below
        raise ConfigError(f"model {path!r}: no such file, and not a bundled zoo model") from None


def _leading_dim(spec: Any) -> Any:
    return spec.shape[0] if spec.shape else 0


def is_batchable(model: Any) -> bool:
    """True when every input and output has the same symbolic leading (batch) dim."""
    if not model.inputs:
        return False
    names = {_leading_dim(s) for s in model.inputs}
    if len(names) != 1:
        return False
    (name,) = names
    if not isinstance(name, str):
        return False
    return all(s.shape is None or _leading_dim(s) in (name, None) for s in model.outputs)


class ModelEndpoint:
    """A model as the server sees it: `await infer(feeds, outputs)` validates, caches, batches."""

    def __init__(self, config: ModelConfig, metrics: Metrics) -> None:
        self.config = config
        self.name = config.name
        self.version = config.version
        self.metrics = metrics
        self.path = resolve_model_path(config.path)
        # NOTE: the router loads the model too, to validate inputs before they join a batch; a
        # signature-only load would save its memory for large models.
        # In process (replicas=0), `threads` runs share the CPUs; replicas get theirs in the pool.
        self.model = ember.load(
            self.path,
            exact=config.exact,
            threads=intra_op_threads(config.threads) if config.replicas == 0 else None,
        )
        self.batchable = is_batchable(self.model)
        self.cache = ResponseCache(config.cache_size) if config.cache_size > 0 else None
        self.output_names = [o.name for o in self.model.outputs]
        if config.replicas == 0:
            self.executor: Any = InProcessExecutor(self.model, config.threads)
        else:
            self.executor = ReplicaPool(
                self.path,
                config.replicas,
                exact=config.exact,
                balance=config.balance,
                on_health=lambda i, up: metrics.replica_up.labels(self.name, str(i)).set(
                    1 if up else 0
                ),
                on_restart=metrics.replica_restarts.labels(self.name).inc,
                on_retry=metrics.retries.labels(self.name).inc,
            )
        self.batcher: Batcher | None = None

    async def start(self) -> None:
        await self.executor.start()
        m = self.metrics
        self.batcher = Batcher(
            self.executor.run,
            slots=self.executor.slots,
            max_batch=self.config.max_batch,
            max_delay_s=self.config.max_delay_ms / 1000,
            queue_limit=self.config.queue_limit,
            batchable=self.batchable,
            on_batch=m.batch_size.labels(self.name).observe,
            on_queue_time=m.queue_time.labels(self.name).observe,
            on_depth=m.queue_depth.labels(self.name).set,
        )
        self.batcher.start()

    def ready(self) -> bool:
        return self.batcher is not None and self.executor.ready()

    async def infer(self, feeds: Feeds, outputs: list[str] | None) -> Feeds:
        """Outputs for one request; InputError (400) and QueueFullError (503) pass through."""
        assert self.batcher is not None
        if outputs is not None:
            unknown = [o for o in outputs if o not in self.output_names]
            if unknown:
                raise InputError(
                    f"unknown output {unknown[0]!r}; model {self.name!r} has outputs "
                    f"{', '.join(self.output_names)}"
                )
        feeds = self.model.check_inputs(feeds)
        if self.batchable and any(a.ndim == 0 or a.shape[0] == 0 for a in feeds.values()):
            raise InputError(
                f"model {self.name!r}: every input needs a batch axis of at least one row"
            )
        key = None
        if self.cache is not None:
            key = cache_key(self.name, self.version, feeds, outputs)
            hit = self.cache.get(key)
            if hit is not None:
                self.metrics.cache_hits.labels(self.name).inc()
                return hit
            self.metrics.cache_misses.labels(self.name).inc()
        result = await self.batcher.submit(feeds)
        if outputs is not None:
            result = {o: result[o] for o in outputs}
        if self.cache is not None and key is not None:
            self.cache.put(key, result)
        return result

    # ---- metadata ----
    def metadata(self) -> dict[str, Any]:
        """KServe v2 model metadata: dims -1 where symbolic or unknown."""

        def tensor(s: Any) -> dict[str, Any]:
            shape = (
                [d if isinstance(d, int) else -1 for d in s.shape] if s.shape is not None else [-1]
            )
            return {"name": s.name, "datatype": datatype_of(s.dtype), "shape": shape}

        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "ember_onnx",
            "inputs": [tensor(s) for s in self.model.inputs],
            "outputs": [tensor(s) for s in self.model.outputs],
        }

    def triton_config(self) -> dict[str, Any]:
        """Triton's model configuration, as its clients and perf_analyzer read it."""
        max_batch = self.config.max_batch if self.batchable else 0

        def tensor(s: Any) -> dict[str, Any]:
            shape = list(s.shape) if s.shape is not None else [None]
            if max_batch:
                shape = shape[1:]  # Triton leaves the batch axis out when max_batch_size > 0
            return {
                "name": s.name,
                "data_type": "TYPE_STRING"
                if datatype_of(s.dtype) == "BYTES"
                else "TYPE_" + datatype_of(s.dtype),
                "dims": [d if isinstance(d, int) else -1 for d in shape],
            }

        config: dict[str, Any] = {
            "name": self.name,
            "platform": "onnxruntime_onnx",
            "backend": "ember",
            "version_policy": {
                "specific": {"versions": [int(self.version)] if self.version.isdigit() else []}
            },
            "max_batch_size": max_batch,
            "input": [tensor(s) for s in self.model.inputs],
            "output": [tensor(s) for s in self.model.outputs],
            "instance_group": [
                {
                    "name": self.name,
                    "kind": "KIND_CPU",
                    "count": max(self.config.replicas, self.config.threads),
                }
            ],
            "response_cache": {"enable": self.cache is not None},
        }
        if max_batch:
            config["dynamic_batching"] = {
                "max_queue_delay_microseconds": int(self.config.max_delay_ms * 1000),
                "default_queue_policy": {"max_queue_size": self.config.queue_limit},
            }
        return config

    async def drain(self, timeout_s: float) -> None:
        if self.batcher is not None:
            await self.batcher.drain(timeout_s)

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        await self.executor.stop()
