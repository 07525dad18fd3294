"""Where batches run: in this process on a thread pool, or in N worker processes behind a router.

A worker process (spawned, never forked) loads the model itself and talks to the router over a pipe:
a small JSON header plus raw tensor bytes, never pickles. The router sends each batch to the
least-outstanding replica (or the better of two random ones), notices a death by the pipe's EOF,
retries that replica's in-flight batches once on another replica and starts a replacement.
It knows nothing about HTTP or batching.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import multiprocessing
import os
import queue
import random
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ember.errors import EmberError, ExecutionError, InputError
from ember.serve.protocol import tensor_from_bytes, tensor_to_bytes

Feeds = dict[str, np.ndarray]


class UnavailableError(EmberError):
    """No replica could run the request (all dead, or shutting down): answered 503."""


# ---- wire format between router and replica: u32 header length, JSON header, tensor bytes ----


def pack_message(header: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> bytes:
    blobs = [tensor_to_bytes(a) for a in tensors.values()]
    header = {
        **header,
        "tensors": [
            [name, "BYTES" if a.dtype.kind in "OUS" else a.dtype.str, list(a.shape), len(b)]
            for (name, a), b in zip(tensors.items(), blobs, strict=True)
        ],
    }
    head = json.dumps(header).encode()
    return b"".join([struct.pack("<I", len(head)), head, *blobs])


def unpack_message(buf: bytes) -> tuple[dict[str, Any], Feeds]:
    (n,) = struct.unpack_from("<I", buf, 0)
    header = json.loads(buf[4 : 4 + n])
    view = memoryview(buf)
    pos = 4 + n
    tensors = {}
    for name, dtype, shape, size in header.pop("tensors"):
        dt = np.dtype(object) if dtype == "BYTES" else np.dtype(dtype)
        tensors[name] = tensor_from_bytes(view[pos : pos + size], dt, shape, name)
        pos += size
    return header, tensors


def intra_op_threads(concurrent: int) -> int:
    """Native-kernel threads for each of `concurrent` runs at once (replicas or executor threads):
    the CPUs this process may use, shared out, so N runs never ask for more threads than cores.

    >>> intra_op_threads(10**6)
    1
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, concurrent))


def replica_main(conn: Any, path: str, exact: bool, threads: int | None = None) -> None:
    """The worker process: load the model, say ready, then run each request it is sent."""
    import ember

    try:
        model = ember.load(path, exact=exact, threads=threads)
    except Exception as e:  # noqa: BLE001 - reported to the router, which fails loudly
        conn.send_bytes(pack_message({"id": -1, "error": f"{type(e).__name__}: {e}"}, {}))
        return
    conn.send_bytes(pack_message({"id": 0, "ready": True}, {}))
    while True:
        try:
            buf = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the router went away
        header, feeds = unpack_message(buf)
        if header.get("stop"):
            return
        try:
            outputs = model.run(feeds)
            reply = pack_message({"id": header["id"]}, outputs)
        except InputError as e:
            reply = pack_message({"id": header["id"], "error": str(e), "kind": "input"}, {})
        except Exception as e:  # noqa: BLE001 - one bad batch must not kill the replica
            reply = pack_message({"id": header["id"], "error": f"{type(e).__name__}: {e}"}, {})
        conn.send_bytes(reply)


class InProcessExecutor:
    """Runs batches on `threads` threads of this process (Model.run is thread-safe)."""

    def __init__(self, model: Any, threads: int) -> None:
        self.model = model
        self.slots = threads
        self._pool = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="ember-serve"
        )

    async def start(self) -> None:
        pass

    def ready(self) -> bool:
        return True

    async def run(self, feeds: Feeds) -> Feeds:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.model.run, feeds)

    async def stop(self) -> None:
        self._pool.shutdown(wait=True)


class _Replica:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Any = None
        self.conn: Any = None
        self.up = False
        self.outstanding: dict[
            int, tuple[asyncio.Future[Feeds], Feeds, int]
        ] = {}  # id -> (fut, feeds, tries)
        self.send_queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.generation = 0


class ReplicaPool:
    """N worker processes behind a router; a dead one is replaced and its batches retried once.

    `on_health(index, up)` and `on_restart()` / `on_retry()` feed the metrics.
    """

    def __init__(
        self,
        path: str,
        replicas: int,
        *,
        exact: bool = False,
        balance: str = "least",
        on_health: Callable[[int, bool], None] = lambda i, up: None,
        on_restart: Callable[[], None] = lambda: None,
        on_retry: Callable[[], None] = lambda: None,
        start_timeout_s: float = 120.0,
    ) -> None:
        self.path = path
        self.exact = exact
        self.balance = balance
        self.slots = replicas
        self.start_timeout_s = start_timeout_s
        self._replicas = [_Replica(i) for i in range(replicas)]
        self._ids = itertools.count(1)
        self._ctx = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None  # set whenever a replica comes up
        self._stopping = False
        self._on_health = on_health
        self._on_restart = on_restart
        self._on_retry = on_retry
        self._start_error: str | None = None
        self._tasks: set[asyncio.Future[None]] = set()  # retries in flight (kept referenced)

    # ---- lifecycle ----
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        starters = [self._loop.run_in_executor(None, self._spawn, r) for r in self._replicas]
        await asyncio.gather(*starters)
        try:
            await asyncio.wait_for(self._wait_all_up(), self.start_timeout_s)
        except TimeoutError:
            raise UnavailableError(
                f"replicas of {self.path} did not start within {self.start_timeout_s:.0f} s"
            ) from None
        if self._start_error:
            raise UnavailableError(f"a replica could not load {self.path}: {self._start_error}")

    async def _wait_all_up(self) -> None:
        assert self._changed is not None
        while not all(r.up for r in self._replicas) and self._start_error is None:
            self._changed.clear()
            await self._changed.wait()

    def _spawn(self, r: _Replica) -> None:
        """Start the process for replica `r` (blocking: runs on an executor thread)."""
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=replica_main,
            args=(child, self.path, self.exact, intra_op_threads(self.slots)),
            daemon=True,
            name=f"ember-replica-{r.index}",
        )
        proc.start()
        child.close()  # NOTE: without this the parent never sees EOF when the child dies
        r.generation += 1
        r.process, r.conn = proc, parent
        r.send_queue = queue.SimpleQueue()
        gen = r.generation
        threading.Thread(target=self._reader, args=(r, parent, gen), daemon=True).start()
        threading.Thread(target=self._writer, args=(parent, r.send_queue), daemon=True).start()

    def _writer(self, conn: Any, q: queue.SimpleQueue[bytes | None]) -> None:
        while (buf := q.get()) is not None:
            try:
                conn.send_bytes(buf)
            except (OSError, ValueError):
                return  # the reader sees the death and handles it

    def _reader(self, r: _Replica, conn: Any, gen: int) -> None:
        assert self._loop is not None
        while True:
            try:
                buf = conn.recv_bytes()
            except (EOFError, OSError):
                break
            header, outputs = unpack_message(buf)
            self._loop.call_soon_threadsafe(self._on_message, r, gen, header, outputs)
        self._loop.call_soon_threadsafe(self._on_death, r, gen)

    # ---- event-loop side: all replica state is touched only here ----
    def _on_message(self, r: _Replica, gen: int, header: dict[str, Any], outputs: Feeds) -> None:
        if gen != r.generation:
            return
        rid = header["id"]
        if header.get("ready"):
            r.up = True
            self._on_health(r.index, True)
            assert self._changed is not None
            self._changed.set()
            return
        if rid == -1:
            self._start_error = header["error"]
            assert self._changed is not None
            self._changed.set()
            return
        entry = r.outstanding.pop(rid, None)
        if entry is None or entry[0].done():
            return
        fut = entry[0]
        if "error" in header:
            kind = InputError if header.get("kind") == "input" else ExecutionError
            fut.set_exception(kind(header["error"]))
        else:
            fut.set_result(outputs)

    def _on_death(self, r: _Replica, gen: int) -> None:
        if gen != r.generation:
            return
        was_up = r.up
        r.up = False
        r.send_queue.put(None)
        if was_up:
            self._on_health(r.index, False)
        lost = list(r.outstanding.values())
        r.outstanding.clear()
        for fut, feeds, tries in lost:
            if fut.done():
                continue
            if tries >= 1 or self._stopping:
                fut.set_exception(
                    UnavailableError("the replica running this request died (already retried once)")
                )
            else:
                self._on_retry()
                task = asyncio.ensure_future(self._resubmit(fut, feeds))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if not self._stopping and self._start_error is None:
            assert self._loop is not None
            self._on_restart()
            self._loop.run_in_executor(None, self._respawn, r)

    def _respawn(self, r: _Replica) -> None:
        if r.process is not None:
            r.process.join(timeout=5)
        if not self._stopping:
            self._spawn(r)

    async def _resubmit(self, fut: asyncio.Future[Feeds], feeds: Feeds) -> None:
        try:
            r = await self._pick()
        except UnavailableError as e:
            if not fut.done():
                fut.set_exception(e)
            return
        self._send(r, fut, feeds, tries=1)

    async def _pick(self) -> _Replica:
        """The replica to send to: least outstanding, or the better of two random (p2c)."""
        assert self._changed is not None and self._loop is not None
        deadline = self._loop.time() + self.start_timeout_s
        while True:
            if self._stopping:
                raise UnavailableError("the server is shutting down")
            alive = [r for r in self._replicas if r.up]
            if alive:
                break
            # Every replica is down (the only one crashed): wait for a restart rather than fail.
            self._changed.clear()
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise UnavailableError("no replica is alive")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                raise UnavailableError("no replica is alive") from None
        if self.balance == "p2c" and len(alive) > 2:
            a, b = random.sample(alive, 2)
            return a if len(a.outstanding) <= len(b.outstanding) else b
        least = min(len(r.outstanding) for r in alive)
        return random.choice([r for r in alive if len(r.outstanding) == least])

    def _send(self, r: _Replica, fut: asyncio.Future[Feeds], feeds: Feeds, tries: int) -> None:
        rid = next(self._ids)
        r.outstanding[rid] = (fut, feeds, tries)
        r.send_queue.put(pack_message({"id": rid}, feeds))

    def ready(self) -> bool:
        return any(r.up for r in self._replicas)

    def health(self) -> list[bool]:
        return [r.up for r in self._replicas]

    def pids(self) -> list[int | None]:
        """The worker process ids (for tests and operators)."""
        return [r.process.pid if r.process is not None and r.up else None for r in self._replicas]

    async def run(self, feeds: Feeds) -> Feeds:
        assert self._loop is not None
        r = await self._pick()
        fut: asyncio.Future[Feeds] = self._loop.create_future()
        self._send(r, fut, feeds, tries=0)
        return await fut

    async def stop(self) -> None:
        """Stop the workers; callers drain first, so nothing is in flight here."""
        self._stopping = True
        for r in self._replicas:
            r.up = False
            try:
                r.send_queue.put(pack_message({"id": 0, "stop": True}, {}))
            finally:
                r.send_queue.put(None)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._join_all)
        for r in self._replicas:
            for fut, _, _ in r.outstanding.values():
                if not fut.done():
                    fut.set_exception(UnavailableError("the server is shutting down"))
            r.outstanding.clear()

    def _join_all(self) -> None:
        for r in self._replicas:
            if r.process is None:
                continue
            r.process.join(timeout=5)
            if r.process.is_alive():
                r.process.kill()
                r.process.join(timeout=5)
