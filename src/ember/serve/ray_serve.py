"""`ember serve --ray`: the same models as Ray Serve deployments, for serving past one machine.

One Ray Serve application per model at `/v2/models/NAME` (KServe v2 over HTTP: metadata, ready,
config, infer; JSON and binary tensors), batched with `@serve.batch`, with replicas or an
autoscaling range; plus one small application at `/v2` for server metadata and health. API keys
and the size cap apply as in the single-machine server. gRPC is not offered here (Ray Serve's gRPC
proxy wants its own service definitions).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Mapping
from typing import Any, cast

import numpy as np

from ember.errors import ConfigError, ExecutionError, InputError
from ember.serve.batcher import batch_key
from ember.serve.config import ModelConfig, ServerConfig
from ember.serve.protocol import ProtocolError, decode_request, encode_response

Feeds = dict[str, np.ndarray]


def _ray() -> tuple[Any, Any]:
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ConfigError("--ray needs Ray Serve: pip install 'ember[ray]'") from None
    return ray, serve


def _authorized(keys: frozenset[str], headers: Mapping[str, str]) -> bool:
    if not keys:
        return True
    auth = headers.get("authorization")
    token = None
    if auth is not None:
        scheme, _, value = auth.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
    else:
        token = headers.get("x-api-key")
    ok = False
    for key in keys:
        ok |= token is not None and hmac.compare_digest(token.encode(), key.encode())
    return ok


def _response(
    status: int, body: bytes | dict[str, Any] | list[Any], headers: dict[str, str] | None = None
) -> Any:
    from starlette.responses import Response

    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    headers = dict(headers or {})
    media = headers.pop("content-type", "application/json")
    return Response(body, status_code=status, headers=headers, media_type=media)


class EmberModelDeployment:
    """The body of a Ray Serve deployment: one ember model, batched with @serve.batch."""

    def __init__(self, mc: ModelConfig, api_keys: frozenset[str], max_request_bytes: int) -> None:
        import ember
        from ember.serve.endpoint import ModelEndpoint, is_batchable, resolve_model_path

        self.mc = mc
        self.api_keys = api_keys
        self.max_request_bytes = max_request_bytes
        self.model = ember.load(resolve_model_path(mc.path), exact=mc.exact)
        self.batchable = is_batchable(self.model)
        # Metadata comes from the same code as the single-machine server (no executor is started).
        self._meta = ModelEndpoint.metadata(self)  # type: ignore[arg-type]
        self._config = ModelEndpoint.triton_config(_ConfigView(self))  # type: ignore[arg-type]
        # NOTE: `deploy` wraps _run_batch in serve.batch under its own name (Ray finds `self` so).
        self._batched: Any = cast(Any, self._run_batch)
        if not self.batchable:
            self._batched.set_max_batch_size(1)  # no batch axis: one request per run

    @property
    def name(self) -> str:
        return self.mc.name

    @property
    def version(self) -> str:
        return self.mc.version

    async def _run_batch(self, requests: list[Feeds]) -> list[Any]:
        """One Ray batch: group requests whose non-batch shapes agree, concatenate, split back."""
        results: list[Any] = [None] * len(requests)
        groups: dict[Any, list[int]] = {}
        for i, feeds in enumerate(requests):
            groups.setdefault(batch_key(feeds), []).append(i)
        for members in groups.values():
            if len(members) == 1:
                feeds = requests[members[0]]
            else:
                feeds = {
                    k: np.concatenate([requests[i][k] for i in members])
                    for k in requests[members[0]]
                }
            try:
                out = await asyncio.to_thread(self.model.run, feeds)
            except Exception as e:  # noqa: BLE001 - each request of the group gets the error
                for i in members:
                    results[i] = e
                continue
            start = 0
            for i in members:
                rows = next(iter(requests[i].values())).shape[0] if len(members) > 1 else 0
                results[i] = (
                    out
                    if len(members) == 1
                    else {k: v[start : start + rows] for k, v in out.items()}
                )
                start += rows
        return results

    async def infer(self, feeds: Feeds, outputs: list[str] | None) -> Feeds:
        feeds = self.model.check_inputs(feeds)
        names = [o.name for o in self.model.outputs]
        for o in outputs or ():
            if o not in names:
                raise InputError(
                    f"unknown output {o!r}; model {self.name!r} has outputs {', '.join(names)}"
                )
        result = await self._batched(feeds)
        if isinstance(result, Exception):
            raise result
        return {o: result[o] for o in outputs} if outputs else result

    async def __call__(self, request: Any) -> Any:
        headers = {k.lower(): v for k, v in request.headers.items()}
        if not _authorized(self.api_keys, headers):
            return _response(
                401, {"error": "missing or wrong API key; send 'Authorization: Bearer KEY'"}
            )
        prefix = f"/v2/models/{self.name}"
        rest = request.url.path.split(prefix, 1)[-1]
        if rest.startswith("/versions/"):
            version, _, rest = rest.removeprefix("/versions/").partition("/")
            rest = "/" + rest if rest else ""
            if version != self.version:
                return _response(404, {"error": f"model {self.name!r} has no version {version!r}"})
        rest = rest.rstrip("/")
        if rest == "" and request.method == "GET":
            return _response(200, self._meta)
        if rest == "/ready" and request.method == "GET":
            return _response(200, b"")
        if rest == "/config" and request.method == "GET":
            return _response(200, self._config)
        if rest != "/infer":
            return _response(
                404, {"error": f"no such endpoint: {request.method} {request.url.path}"}
            )
        if request.method != "POST":
            return _response(405, {"error": "use POST"})
        body = await request.body()
        if len(body) > self.max_request_bytes:
            return _response(
                413, {"error": f"request body over the {self.max_request_bytes} byte limit"}
            )
        try:
            hl = headers.get("inference-header-content-length")
            decoded = decode_request(body, int(hl) if hl is not None else None)
            outputs = await self.infer(decoded.inputs, decoded.outputs)
        except (ProtocolError, InputError, ExecutionError, ValueError) as e:
            return _response(400, {"error": str(e)})
        encoded = encode_response(self.name, self.version, decoded, outputs)
        extra = {}
        if encoded.header_length is not None:
            extra = {
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(encoded.header_length),
            }
        return _response(200, encoded.body, extra)


class _ConfigView:
    """What ModelEndpoint.triton_config reads, for a Ray deployment."""

    def __init__(self, d: EmberModelDeployment) -> None:
        self.name, self.version, self.model, self.batchable = (
            d.name,
            d.version,
            d.model,
            d.batchable,
        )
        self.config = d.mc
        self.cache = None


class EmberIngress:
    """`/v2`: server metadata and health for the Ray deployment."""

    def __init__(self, api_keys: frozenset[str], models: list[str]) -> None:
        self.api_keys = api_keys
        self.models = models

    async def __call__(self, request: Any) -> Any:
        from ember import __version__
        from ember.serve.server import EXTENSIONS, SERVER_NAME

        path = request.url.path.rstrip("/")
        if path in ("/v2/health/live", "/v2/health/ready"):
            return _response(200, b"")
        if not _authorized(self.api_keys, {k.lower(): v for k, v in request.headers.items()}):
            return _response(
                401, {"error": "missing or wrong API key; send 'Authorization: Bearer KEY'"}
            )
        if path == "/v2":
            return _response(
                200, {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}
            )
        if path == "/v2/repository/index":
            return _response(200, [{"name": m, "state": "READY"} for m in self.models])
        if path.startswith("/v2/models/"):
            return _response(404, {"error": f"unknown model {path.split('/')[3]!r}"})
        return _response(404, {"error": f"no such endpoint: {request.method} {request.url.path}"})


def deploy(
    config: ServerConfig,
    *,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    num_cpus: float = 1.0,
) -> dict[str, Any]:
    """Deploy every model of `config` on the connected Ray cluster; returns app name -> handle.

    Each model gets `replicas` Ray replicas (at least 1), or an autoscaling range when
    `min_replicas`/`max_replicas` differ. Call `ray.init(...)` and `serve.start(...)` first.
    """
    _, serve = _ray()
    handles = {}
    for mc in config.models:
        options: dict[str, Any] = {
            "name": f"ember-{mc.name}",
            "ray_actor_options": {"num_cpus": num_cpus},
            "max_ongoing_requests": max(mc.queue_limit, mc.max_batch),
        }
        low = min_replicas if min_replicas is not None else max(mc.replicas, 1)
        high = max_replicas if max_replicas is not None else max(mc.replicas, 1)
        if high < low:
            raise ConfigError(f"--max-replicas {high} is below --min-replicas {low}")
        if low == high:
            options["num_replicas"] = low
        else:
            options["autoscaling_config"] = {
                "min_replicas": low,
                "max_replicas": high,
                "target_ongoing_requests": max(mc.max_batch, 2),
            }
        cls: Any = type(f"Ember_{mc.name}", (EmberModelDeployment,), {})
        cls._run_batch = serve.batch(
            max_batch_size=max(mc.max_batch, 1), batch_wait_timeout_s=mc.max_delay_ms / 1000
        )(EmberModelDeployment._run_batch)
        app = serve.deployment(cls, **options).bind(mc, config.api_keys, config.max_request_bytes)
        handles[mc.name] = serve.run(
            app, name=f"ember-{mc.name}", route_prefix=f"/v2/models/{mc.name}"
        )
    ingress = serve.deployment(EmberIngress, name="ember-v2", ray_actor_options={"num_cpus": 0})
    handles["/v2"] = serve.run(
        ingress.bind(config.api_keys, [m.name for m in config.models]),
        name="ember-v2",
        route_prefix="/v2",
    )
    return handles


def run_ray(
    config: ServerConfig,
    *,
    address: str | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
) -> None:
    """`ember serve --ray`: join (or start) a Ray cluster, deploy, serve until Ctrl-C."""
    import signal
    import threading

    ray, serve = _ray()
    ray.init(address=address, include_dashboard=False)
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        deploy(config, min_replicas=min_replicas, max_replicas=max_replicas)
        print(
            f"ember serve --ray: {', '.join(m.name for m in config.models)} on "
            f"http://{config.host}:{config.port}",
            flush=True,
        )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        serve.shutdown()
        ray.shutdown()
