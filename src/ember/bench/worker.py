"""One engine in its own process, driven over a pipe by the harness: load, warm up, time slices.

Each engine gets a fresh process so that its peak memory is its own (VmHWM of that process, reset
between batches through /proc/self/clear_refs), its libraries and thread pools do not live in the
other engines' address space, and a crash in one engine costs one row, not the run. The parent sends
pickled requests on stdin; replies go back on a duplicate of the original stdout, and fd 1 is
pointed at stderr so that nothing a library prints can corrupt the protocol.

    python -m ember.bench.worker      (started by ember.bench.harness, never by hand)
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any

_HEADER = struct.Struct("<Q")


def send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def recv(stream: IO[bytes]) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError("the worker process ended")
    (size,) = _HEADER.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the worker process ended mid-reply")
    return pickle.loads(data)


# -- memory ----------------------------------------------------------------------------------------
# NOTE: VmHWM is the process's peak resident set. Writing "5" to clear_refs resets it to the current
# RSS (Linux >= 4.0), which gives a per-batch peak; where that fails the peak covers the process's
# whole life so far, and the report says so ("scope": "process").


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int | None:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# -- the engine's side of the protocol ------------------------------------------------------------


class WorkerState:
    """What one worker holds: the engine adapter and the timing loop. Also used in-process."""

    def __init__(self, measure_memory: bool = True) -> None:
        self.measure_memory = measure_memory
        self.peak_scope = "batch"

    def init(self, msg: dict[str, Any]) -> dict[str, Any]:
        import importlib

        from ember.bench.engines import library_module, open_engine

        spec = msg["spec"]
        t0 = time.perf_counter()
        importlib.import_module(library_module(spec.peer))
        import_s = time.perf_counter() - t0
        # The baseline is taken once the library is imported and before anything of the model
        # exists (a torch module's weights arrive pickled: unpickling them is part of its load).
        baseline = rss_bytes() if self.measure_memory else None
        if self.measure_memory and not reset_peak():
            self.peak_scope = "process"
        t0 = time.perf_counter()
        module = msg.get("module")
        if isinstance(module, bytes):
            try:
                module = pickle.loads(module)
            except Exception as e:  # noqa: BLE001 (any unpickling failure means: run it in-process)
                return {"ok": False, "unpicklable": True, "error": f"{type(e).__name__}: {e}"}
        self.engine = open_engine(spec, msg["threads"], module)
        self.engine.load(msg["path"])
        self.load_s = time.perf_counter() - t0
        return {"ok": True, "import_s": import_s, "baseline_rss_bytes": baseline}

    def prepare(self, msg: dict[str, Any]) -> dict[str, Any]:
        engine = self.engine
        feeds = msg["feeds"]
        batch = next(iter(feeds.values())).shape[0]
        t0 = time.perf_counter()
        engine.bind(feeds)
        bind_s = time.perf_counter() - t0
        load_s = self.load_s + bind_s if engine.load_per_batch else self.load_s
        t0 = time.perf_counter()
        result = engine.run()
        first_call_s = time.perf_counter() - t0
        # Warm-up: at least `warmup` calls in all (the first included), and more while they take
        # less than `warmup_time` in all; never timed.
        n, start = 1, time.perf_counter()
        while n < msg["warmup"] or (
            time.perf_counter() - start < msg["warmup_time"] and n < msg["warmup_max"]
        ):
            result = engine.run()
            n += 1
        return {
            "ok": True,
            "load_s": load_s,
            "first_call_s": first_call_s,
            "warmup_calls": n,
            "samples_per_call": batch * engine.requests_per_call,
            "outputs": engine.outputs(result),
            "settings": dict(engine.settings),
        }

    def slice(self, msg: dict[str, Any]) -> dict[str, Any]:
        run = self.engine.run
        clock = time.perf_counter_ns
        times: list[int] = []
        deadline = clock() + int(msg["seconds"] * 1e9)
        max_calls = msg["max_calls"]
        while True:
            t0 = clock()
            run()
            t1 = clock()
            times.append(t1 - t0)
            if len(times) >= max_calls or t1 >= deadline:
                break
        return {"ok": True, "times_ns": times}

    def finish(self, msg: dict[str, Any]) -> dict[str, Any]:
        peak = peak_rss_bytes() if self.measure_memory else None
        self.engine.release()
        if self.measure_memory and not reset_peak():
            self.peak_scope = "process"
        return {"ok": True, "peak_rss_bytes": peak, "peak_scope": self.peak_scope}

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        try:
            return getattr(self, msg["op"])(msg)
        except Exception as e:  # noqa: BLE001 (any engine failure becomes that row's error)
            return {
                "ok": False,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
            }


def main() -> int:
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a library printing to stdout now writes to stderr, not into the protocol
    sys.stdout = sys.stderr
    state: WorkerState | None = None
    while True:
        try:
            msg = recv(requests)
        except EOFError:
            return 0
        if msg["op"] == "exit":
            return 0
        if msg["op"] == "init":
            state = WorkerState(msg.get("measure_memory", True))
        assert state is not None, "the first request must be init"
        send(replies, state.handle(msg))


if __name__ == "__main__":
    raise SystemExit(main())
