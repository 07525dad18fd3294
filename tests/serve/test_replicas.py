"""Replica processes: correct answers through the router, and a replica killed mid-load costs the
clients nothing (its in-flight batches are retried on the other replica; it is restarted)."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from serve_helpers import digits, infer_body, request

from ember.serve import ModelConfig, ServerConfig, start_in_thread


@pytest.fixture(scope="module")
def server():
    config = ServerConfig(
        models=(
            ModelConfig(name="cnn", path="digits_cnn", replicas=2, max_batch=8, max_delay_ms=1),
        ),
        port=0,
        grpc_port=None,
    )
    s = start_in_thread(config)
    yield s
    s.stop()


def _metric(url, name):
    for line in request(url, "GET", "/metrics").body.decode().splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_replicas_answer_like_the_engine(server, cnn_reference):
    x = digits(5, seed=3)
    r = request(server.url, "POST", "/v2/models/cnn/infer", infer_body(x))
    assert r.status == 200, r.body
    y = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(5, 10)
    np.testing.assert_allclose(y, cnn_reference.run({"input": x})["logits"], rtol=1e-6)
    bad = request(
        server.url, "POST", "/v2/models/cnn/infer", infer_body(np.zeros((1, 1, 8, 9), np.float32))
    )
    assert bad.status == 400 and "axis 3 must be 8" in bad.json()["error"]


def test_a_replica_killed_mid_load_fails_no_request(server, cnn_reference):
    pool = server.server.endpoints["cnn"].executor
    victim = pool.pids()[0]
    assert victim is not None
    x = digits(1, seed=9)
    want = cnn_reference.run({"input": x})["logits"]
    statuses: list[int] = []
    wrong: list[str] = []
    done = threading.Event()
    lock = threading.Lock()

    def client():
        deadline = time.monotonic() + 4.0  # bounded in time and in count
        for _ in range(400):
            if time.monotonic() > deadline or done.is_set():
                break
            r = request(server.url, "POST", "/v2/models/cnn/infer", infer_body(x))
            with lock:
                statuses.append(r.status)
            if r.status == 200:
                y = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 10)
                if not np.allclose(y, want, rtol=1e-5, atol=1e-6):
                    wrong.append("wrong output")
            else:
                wrong.append(r.body.decode())

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for _ in range(500):  # kill once the load is under way
        if len(statuses) >= 20:
            break
        time.sleep(0.01)
    os.kill(victim, signal.SIGKILL)
    for t in threads:
        t.join(60)
    done.set()
    assert statuses and wrong == [], wrong[:3]
    assert set(statuses) == {200}
    # The dead replica comes back under a new pid.
    for _ in range(600):
        pids = pool.pids()
        if all(p is not None for p in pids) and victim not in pids:
            break
        time.sleep(0.05)
    assert all(p is not None for p in pool.pids()) and victim not in pool.pids()
    assert _metric(server.url, "ember_replica_restarts_total") >= 1
    r = request(server.url, "POST", "/v2/models/cnn/infer", infer_body(x))
    assert r.status == 200


@pytest.mark.parametrize("balance", ["least", "p2c"])
def test_router_never_picks_the_busiest_replica(balance):
    import asyncio

    from ember.serve.replicas import ReplicaPool

    async def main():
        pool = ReplicaPool("unused.onnx", 3, balance=balance)
        pool._loop, pool._changed = asyncio.get_running_loop(), asyncio.Event()
        for r, busy in zip(pool._replicas, (0, 2, 5), strict=True):
            r.up = True
            r.outstanding = {i: None for i in range(busy)}
        picks = [(await pool._pick()).index for _ in range(200)]
        pool._replicas[0].up = False  # a dead replica is never picked
        picks_without_0 = [(await pool._pick()).index for _ in range(200)]
        return picks, picks_without_0

    picks, picks_without_0 = asyncio.run(main())
    assert 2 not in picks  # p2c: the busiest loses every pairing; least: only the idlest wins
    if balance == "least":
        assert set(picks) == {0} and set(picks_without_0) == {1}
    else:
        assert set(picks) == {0, 1} and 0 not in picks_without_0


@pytest.mark.parametrize(
    ("cpus", "concurrent", "want"), [(2, 1, 2), (2, 2, 1), (2, 3, 1), (16, 4, 4)]
)
def test_concurrent_runs_share_the_cpus(monkeypatch, cpus, concurrent, want) -> None:
    """N replicas (or executor threads) get cpus // N native threads each: never more than cores."""
    from ember.serve import replicas

    monkeypatch.setattr(replicas.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert replicas.intra_op_threads(concurrent) == want
