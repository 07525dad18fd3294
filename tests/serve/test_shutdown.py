"""Graceful shutdown: requests already queued or running when the server is told to stop still
get their answers; then the server goes away."""

from __future__ import annotations

import threading
import time

from serve_helpers import digits, hold_batches, infer_body, request

from ember.serve import ModelConfig, ServerConfig, start_in_thread


def test_stop_drains_queued_and_running_requests():
    config = ServerConfig(
        models=(ModelConfig(name="cnn", path="digits_cnn", replicas=0, max_batch=1),),
        port=0,
        grpc_port=None,
    )
    s = start_in_thread(config)
    batcher = s.server.endpoints["cnn"].batcher
    gate = hold_batches(batcher)
    results = {}

    def send(tag):
        body = infer_body(digits(1))
        results[tag] = request(s.url, "POST", "/v2/models/cnn/infer", body, key=None)

    clients = [threading.Thread(target=send, args=(tag,)) for tag in ("running", "queued")]
    clients[0].start()
    for _ in range(1000):
        if batcher.in_flight == 1:
            break
        time.sleep(0.01)
    clients[1].start()
    for _ in range(1000):
        if batcher.depth == 1:
            break
        time.sleep(0.01)
    stopper = threading.Thread(target=s.stop)
    stopper.start()
    time.sleep(0.2)  # let the stop begin while both requests are still held (not a timing assert)
    gate.set()
    for t in (*clients, stopper):
        t.join(60)
    assert results["running"].status == results["queued"].status == 200
    assert not s.thread.is_alive()
    assert s.server.draining
