"""The ember server: model endpoints behind the KServe v2 HTTP front end (a plain ASGI app on
uvicorn) and, optionally, the gRPC one; plus auth, the request size cap, metrics and draining.

The HTTP app is raw ASGI rather than a framework: the hot path is one regex match and one JSON
parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import re
import socket
import threading
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from ember.errors import ConfigError, ExecutionError, InputError
from ember.serve.batcher import QueueFullError
from ember.serve.config import ServerConfig
from ember.serve.endpoint import ModelEndpoint
from ember.serve.metrics import Metrics
from ember.serve.protocol import ProtocolError, decode_request, encode_response
from ember.serve.replicas import UnavailableError

log = logging.getLogger("ember.serve")

SERVER_NAME = "ember"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "model_repository"]


class ServeError(Exception):
    """An error with its HTTP status; the body is `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_of(exc: BaseException) -> ServeError:
    """The HTTP status and message a client sees for an exception."""
    if isinstance(exc, ServeError):
        return exc
    if isinstance(exc, ProtocolError | InputError | ExecutionError):
        return ServeError(400, str(exc))
    if isinstance(exc, QueueFullError | UnavailableError):
        return ServeError(503, str(exc))
    log.exception("internal error", exc_info=exc)
    return ServeError(500, f"internal error: {type(exc).__name__}")


class EmberServer:
    """Holds the endpoints; `app` is the ASGI application (its lifespan starts and drains them)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.endpoints: dict[str, ModelEndpoint] = {}
        self.draining = False
        self.started = False
        self.grpc: Any = None
        self.grpc_port: int | None = None
        self._keys = [k.encode() for k in config.api_keys]

    # ---- lifecycle ----
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for mc in self.config.models:
            # Loading compiles the model: off the event loop so health probes still answer.
            self.endpoints[mc.name] = await loop.run_in_executor(
                None, ModelEndpoint, mc, self.metrics
            )
        await asyncio.gather(*(e.start() for e in self.endpoints.values()))
        if self.config.grpc_port is not None:
            from ember.serve.grpc_server import start_grpc

            self.grpc, self.grpc_port = await start_grpc(
                self, self.config.host, self.config.grpc_port
            )
        self.started = True

    async def stop(self) -> None:
        """Refuse new requests, let the queues drain, then stop the workers."""
        self.draining = True
        if self.grpc is not None:
            await self.grpc.stop(grace=self.config.drain_timeout_s)
        await asyncio.gather(
            *(e.drain(self.config.drain_timeout_s) for e in self.endpoints.values())
        )
        await asyncio.gather(*(e.stop() for e in self.endpoints.values()))

    def ready(self) -> bool:
        return (
            self.started and not self.draining and all(e.ready() for e in self.endpoints.values())
        )

    def authorized(self, token: bytes | None) -> bool:
        if not self._keys:
            return True
        if token is None:
            return False
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(token, key)  # NOTE: no early exit, so timing says nothing
        return ok

    def endpoint(self, name: str, version: str | None) -> ModelEndpoint:
        e = self.endpoints.get(name)
        if e is None:
            raise ServeError(
                404, f"unknown model {name!r}; this server has {', '.join(self.endpoints)}"
            )
        if version is not None and version != e.version:
            raise ServeError(
                404, f"model {name!r} has no version {version!r}; it has version {e.version!r}"
            )
        return e

    def server_metadata(self) -> dict[str, Any]:
        from ember import __version__

        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    async def infer(
        self, e: ModelEndpoint, protocol: str, call: Callable[[], Awaitable[Any]]
    ) -> Any:
        """Run `call` with the request counters, latency histogram and the draining check."""
        self.metrics.requests.labels(e.name, protocol).inc()
        start = time.perf_counter()
        try:
            if self.draining:
                raise ServeError(503, "the server is shutting down")
            result = await call()
        except Exception as exc:  # noqa: BLE001 - counted, then re-raised as its HTTP status
            err = status_of(exc)
            self.metrics.failures.labels(e.name, str(err.status)).inc()
            raise err from None
        self.metrics.latency.labels(e.name).observe(time.perf_counter() - start)
        return result

    # ---- HTTP (ASGI) ----
    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            status, body, headers = await self._route(scope, receive)
        except Exception as exc:  # noqa: BLE001 - every failure becomes {"error": ...} with a status
            err = status_of(exc)
            status, body, headers = err.status, json.dumps({"error": str(err)}).encode(), []
        headers = [(b"content-length", str(len(body)).encode()), *headers]
        if not any(k == b"content-type" for k, _ in headers):
            headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    log.exception("ember serve failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    _MODEL_PATH = re.compile(
        r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer|/config|/stats)?/?$"
    )

    async def _route(
        self, scope: dict[str, Any], receive: Any
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        path: str = scope["path"]
        method: str = scope["method"]
        if path in ("/v2/health/live", "/v2/health/ready"):
            _expect(method, "GET")
            ok = path.endswith("live") or self.ready()
            return (200 if ok else 503), b"", []
        headers = dict(scope["headers"])
        if not self.authorized(_token(headers)):
            raise ServeError(401, "missing or wrong API key; send 'Authorization: Bearer KEY'")
        if path in ("/v2", "/v2/"):
            _expect(method, "GET")
            return 200, _json(self.server_metadata()), []
        if path == "/metrics":
            _expect(method, "GET")
            return (
                200,
                self.metrics.render(),
                [(b"content-type", self.metrics.content_type.encode())],
            )
        if path == "/v2/repository/index":
            _expect(method, "POST", "GET")
            index = [
                {
                    "name": e.name,
                    "version": e.version,
                    "state": "READY" if e.ready() else "UNAVAILABLE",
                }
                for e in self.endpoints.values()
            ]
            return 200, _json(index), []
        m = self._MODEL_PATH.match(path)
        if m is None:
            raise ServeError(404, f"no such endpoint: {method} {path}")
        name, version, action = m.group(1), m.group(2), m.group(3) or ""
        e = self.endpoint(name, version)
        if action == "":
            _expect(method, "GET")
            return 200, _json(e.metadata()), []
        if action == "/ready":
            _expect(method, "GET")
            return (200 if e.ready() and not self.draining else 503), b"", []
        if action == "/config":
            _expect(method, "GET")
            return 200, _json(e.triton_config()), []
        if action == "/stats":
            _expect(method, "GET")
            return 200, _json({"model_stats": [{"name": e.name, "version": e.version}]}), []
        _expect(method, "POST")
        body = await self._read_body(headers, receive)
        hl = headers.get(b"inference-header-content-length")
        try:
            header_length = int(hl) if hl is not None else None
        except ValueError:
            raise ServeError(
                400, f"Inference-Header-Content-Length {hl!r} is not an integer"
            ) from None
        request = decode_request(body, header_length)
        outputs = await self.infer(e, "http", lambda: e.infer(request.inputs, request.outputs))
        encoded = encode_response(e.name, e.version, request, outputs)
        extra = []
        if encoded.header_length is not None:
            extra = [
                (b"content-type", b"application/octet-stream"),
                (b"inference-header-content-length", str(encoded.header_length).encode()),
            ]
        return 200, encoded.body, extra

    async def _read_body(self, headers: dict[bytes, bytes], receive: Any) -> bytes:
        cap = self.config.max_request_bytes

        def too_big() -> ServeError:
            return ServeError(413, f"request body over the {cap} byte limit (--max-request-mb)")

        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > cap:
            raise too_big()
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ServeError(400, "the client disconnected")
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > cap:
                raise too_big()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        encoding = headers.get(b"content-encoding", b"identity").lower()
        if encoding in (b"gzip", b"deflate"):
            d = zlib.decompressobj(wbits=31 if encoding == b"gzip" else 15)
            try:
                body = d.decompress(body, cap + 1)  # the cap holds after decompression too
            except zlib.error as exc:
                raise ServeError(400, f"body is not valid {encoding.decode()}: {exc}") from None
            if len(body) > cap or d.unconsumed_tail:
                raise too_big()
        elif encoding != b"identity":
            raise ServeError(
                400, f"unsupported Content-Encoding {encoding.decode()!r}; use gzip or deflate"
            )
        return body


def _token(headers: dict[bytes, bytes]) -> bytes | None:
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, value = auth.partition(b" ")
        return value.strip() if scheme.lower() == b"bearer" else None
    return headers.get(b"x-api-key")


def _expect(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise ServeError(405, f"method {method} not allowed here; use {' or '.join(allowed)}")


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# ---- running it ----


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0 picks a free one) whose connections have TCP_NODELAY."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # NOTE: proto must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only so,
    # and without it every response waits ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _CoalescingTransport:
    """A transport whose writes within one event-loop step go out as one `send`.

    uvicorn writes a response's headers and its body in two calls; with TCP_NODELAY that is two
    segments and two syscalls. Buffering until the end of the step sends headers and body together.
    """

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._buffer:
            self._loop.call_soon(self._flush)
        self._buffer.append(bytes(data))

    def _flush(self) -> None:
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _protocol_class() -> Any:
    Base: Any
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class Protocol(Base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            coalescing: Any = _CoalescingTransport(transport, asyncio.get_running_loop())
            super().connection_made(coalescing)

    return Protocol


def _uvicorn_server(server: EmberServer) -> Any:
    try:
        import prometheus_client  # noqa: F401 - checked here so the message names the extra
        import uvicorn
    except ImportError as e:
        raise ConfigError(f"ember serve needs {e.name}: pip install 'ember[serve]'") from None

    config = uvicorn.Config(
        server.app,
        lifespan="on",
        interface="asgi3",
        proxy_headers=False,
        log_level="warning",
        access_log=False,
        http=_protocol_class(),
        loop="asyncio",
        timeout_graceful_shutdown=int(server.config.drain_timeout_s),
        backlog=2048,
    )
    return uvicorn.Server(config)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (cheaper HTTP handling), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve(config: ServerConfig, on_ready: Callable[[EmberServer, int], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then drain and stop. Blocks."""
    server = EmberServer(config)
    sock = bind_socket(config.host, config.port)
    uv = _uvicorn_server(server)

    async def main() -> None:
        task = asyncio.create_task(uv.serve(sockets=[sock]))
        while not (uv.started or task.done()):
            await asyncio.sleep(0.05)
        if uv.started and on_ready is not None:
            on_ready(server, sock.getsockname()[1])
        await task

    # uvicorn re-raises the Ctrl-C it handled once it has drained: not an error here.
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_loop_factory()) as r:
        r.run(main())


@dataclasses.dataclass
class RunningServer:
    """A server running on a background thread (tests, benchmarks). `stop()` drains and joins."""

    server: EmberServer
    port: int
    thread: threading.Thread
    _uv: Any

    @property
    def url(self) -> str:
        return f"http://{self.server.config.host}:{self.port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.server.config.host}:{self.server.grpc_port}"

    def stop(self, timeout_s: float = 60) -> None:
        self._uv.should_exit = True
        self.thread.join(timeout_s)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_in_thread(config: ServerConfig, timeout_s: float = 180) -> RunningServer:
    """Start a server on a daemon thread and wait until it is ready (or raise why it is not)."""
    server = EmberServer(config)
    sock = bind_socket(config.host, config.port)
    uv = _uvicorn_server(server)
    uv.install_signal_handlers = lambda: (
        None
    )  # uvicorn < 0.29 calls this; signals belong to the main thread
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as r:
                r.run(uv.serve(sockets=[sock]))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            failure.append(exc)

    thread = threading.Thread(target=run, name="ember-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not uv.started:
        if not thread.is_alive() or failure:
            raise RuntimeError("ember server failed to start; the log above says why")
        if time.monotonic() > deadline:
            uv.should_exit = True
            raise RuntimeError(f"ember server did not start within {timeout_s} s")
        time.sleep(0.02)
    return RunningServer(server, sock.getsockname()[1], thread, uv)
