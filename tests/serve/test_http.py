"""The HTTP front end: every endpoint, every error code, auth, the size cap, cache and metrics.

One server (in-process executor, API key on, cache on for `cached`) serves the whole module.
"""

from __future__ import annotations

import json
import re
import threading
import time

import numpy as np
import pytest
from serve_helpers import KEY, digits, hold_batches, infer_body, request

from ember.serve import ModelConfig, ServerConfig, start_in_thread

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def server():
    config = ServerConfig(
        models=(
            ModelConfig(name="cnn", path="digits_cnn", replicas=0, max_batch=8, max_delay_ms=1),
            ModelConfig(name="cached", path="digits_cnn", version="3", replicas=0, cache_size=4),
            ModelConfig(name="gated", path="digits_cnn", replicas=0, max_batch=1, queue_limit=1),
        ),
        port=0,
        grpc_port=None,
        api_keys=frozenset({KEY}),
        max_request_bytes=64 * 1024,
    )
    s = start_in_thread(config)
    yield s
    s.stop()


def _metric(url, name, **labels):
    text = request(url, "GET", "/metrics").body.decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + "{") and all(part in line for part in want.split(",")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_health_answers_without_a_key(server):
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert request(server.url, "GET", path, key=None).status == 200


@pytest.mark.parametrize(
    "path", ["/v2", "/v2/models/cnn", "/v2/models/cnn/ready", "/metrics", "/v2/models/cnn/config"]
)
def test_everything_else_needs_the_key(server, path):
    r = request(server.url, "GET", path, key=None)
    assert r.status == 401 and "API key" in r.json()["error"]
    assert request(server.url, "GET", path, key="wrong").status == 401
    assert request(server.url, "GET", path, key=None, headers={"X-API-Key": KEY}).status == 200


def test_infer_needs_the_key(server):
    r = request(server.url, "POST", "/v2/models/cnn/infer", infer_body(digits(1)), key=None)
    assert r.status == 401


def test_server_and_model_metadata(server):
    meta = request(server.url, "GET", "/v2").json()
    assert meta["name"] == "ember" and "binary_tensor_data" in meta["extensions"]
    for path in ("/v2/models/cnn", "/v2/models/cnn/versions/1"):
        m = request(server.url, "GET", path).json()
        assert m["name"] == "cnn" and m["versions"] == ["1"]
        assert m["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        assert m["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert request(server.url, "GET", "/v2/models/cached/versions/3/ready").status == 200
    assert request(server.url, "GET", "/v2/models/cnn/ready").status == 200
    index = request(server.url, "POST", "/v2/repository/index").json()
    assert {m["name"] for m in index} == {"cnn", "cached", "gated"}


def test_triton_model_config(server):
    c = request(server.url, "GET", "/v2/models/cnn/config").json()
    assert c["max_batch_size"] == 8
    assert c["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}]
    assert c["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]
    assert c["dynamic_batching"]["max_queue_delay_microseconds"] == 1000
    assert request(server.url, "GET", "/v2/models/gated/config").json()["max_batch_size"] == 1


def test_json_infer_matches_the_engine(server, cnn_reference):
    x = digits(3)
    r = request(server.url, "POST", "/v2/models/cnn/infer", {**infer_body(x), "id": "abc"})
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["id"] == "abc" and doc["model_name"] == "cnn" and doc["model_version"] == "1"
    (out,) = doc["outputs"]
    assert out["name"] == "logits" and out["datatype"] == "FP32" and out["shape"] == [3, 10]
    np.testing.assert_allclose(
        np.array(out["data"]).reshape(3, 10), cnn_reference.run({"input": x})["logits"], rtol=1e-6
    )


def test_binary_infer_in_and_out(server, cnn_reference):
    x = digits(2, seed=1)
    blob = x.tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 1, 8, 8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    r = request(
        server.url,
        "POST",
        "/v2/models/cnn/versions/1/infer",
        head + blob,
        headers={
            "Inference-Header-Content-Length": str(len(head)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert r.status == 200, r.body
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.body[:n])["outputs"][0]
    assert meta["parameters"]["binary_data_size"] == 2 * 10 * 4
    y = np.frombuffer(r.body[n:], np.float32).reshape(2, 10)
    np.testing.assert_allclose(y, cnn_reference.run({"input": x})["logits"], rtol=1e-6)


def test_gzip_bodies_are_accepted(server):
    import gzip

    body = gzip.compress(json.dumps(infer_body(digits(1))).encode())
    r = request(
        server.url, "POST", "/v2/models/cnn/infer", body, headers={"Content-Encoding": "gzip"}
    )
    assert r.status == 200, r.body


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{oops", 400, "malformed JSON"),
        (
            infer_body(digits(1).astype(np.float64), datatype="FP64"),
            400,
            "expected dtype float32, got float64",
        ),
        (infer_body(np.zeros((1, 1, 8, 7), np.float32)), 400, "axis 3 must be 8, got 7"),
        (infer_body(np.zeros((1, 8, 8), np.float32)), 400, "expected rank 4"),
        (infer_body(digits(1), name="image"), 400, "unknown input 'image'"),
        ({**infer_body(digits(1)), "outputs": [{"name": "probs"}]}, 400, "unknown output 'probs'"),
        (
            {
                "inputs": [
                    {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [1.0] * 63}
                ]
            },
            400,
            "needs 64 elements",
        ),
        (
            {"inputs": [{"name": "input", "shape": [0, 1, 8, 8], "datatype": "FP32", "data": []}]},
            400,
            "at least one row",
        ),
    ],
)
def test_bad_infer_requests_get_400_with_a_clear_message(server, body, status, words):
    r = request(server.url, "POST", "/v2/models/cnn/infer", body)
    assert r.status == status
    assert words in r.json()["error"]


@pytest.mark.parametrize(
    "method, path, status, words",
    [
        ("POST", "/v2/models/nope/infer", 404, "unknown model 'nope'"),
        ("GET", "/v2/models/nope", 404, "unknown model"),
        ("GET", "/v2/models/cnn/versions/9", 404, "no version '9'"),
        ("POST", "/v2/models/cnn/versions/9/infer", 404, "no version '9'"),
        ("GET", "/v2/nothing/here", 404, "no such endpoint"),
        ("GET", "/v2/models/cnn/infer", 405, "use POST"),
        ("DELETE", "/v2", 405, "use GET"),
    ],
)
def test_unknown_things_and_wrong_methods(server, method, path, status, words):
    r = request(server.url, method, path, infer_body(digits(1)) if method == "POST" else None)
    assert r.status == status and words in r.json()["error"]


def test_oversized_bodies_get_413(server):
    big = infer_body(digits(60))  # 3840 floats as JSON text, ~80 KB: over the 64 KiB cap
    r = request(server.url, "POST", "/v2/models/cnn/infer", big)
    assert r.status == 413 and "byte limit" in r.json()["error"]
    # Chunked, so no Content-Length to refuse early: the cap holds while reading.
    chunks = iter([b"{" + b" " * 40_000] * 3)
    r = request(server.url, "POST", "/v2/models/cnn/infer", chunks)  # http.client sends it chunked
    assert r.status == 413
    import gzip  # and after decompression: a small gzip that inflates past the cap

    bomb = gzip.compress(b" " * 200_000)
    r = request(
        server.url, "POST", "/v2/models/cnn/infer", bomb, headers={"Content-Encoding": "gzip"}
    )
    assert r.status == 413


def test_cache_hits_skip_the_model(server):
    x = digits(1, seed=42)
    first = request(server.url, "POST", "/v2/models/cached/infer", infer_body(x))
    hits = _metric(server.url, "ember_cache_hits_total", model="cached")
    second = request(server.url, "POST", "/v2/models/cached/infer", infer_body(x))
    assert first.status == second.status == 200
    assert first.json()["outputs"] == second.json()["outputs"]
    assert _metric(server.url, "ember_cache_hits_total", model="cached") == hits + 1
    other = request(server.url, "POST", "/v2/models/cached/infer", infer_body(digits(1, seed=43)))
    assert other.json()["outputs"] != first.json()["outputs"]
    assert _metric(server.url, "ember_cache_misses_total", model="cached") >= 2
    assert _metric(server.url, "ember_cache_hits_total", model="cnn") == 0  # opt-in per model


def test_full_queue_answers_503_at_once(server):
    endpoint = server.server.endpoints["gated"]
    batcher = endpoint.batcher
    gate = hold_batches(batcher)
    results = {}

    def send(tag):
        results[tag] = request(server.url, "POST", "/v2/models/gated/infer", infer_body(digits(1)))

    try:
        a = threading.Thread(target=send, args=("a",))
        a.start()
        for _ in range(1000):
            if batcher.in_flight == 1:
                break
            time.sleep(0.01)
        b = threading.Thread(target=send, args=("b",))
        b.start()
        for _ in range(1000):
            if batcher.depth == 1:
                break
            time.sleep(0.01)
        assert batcher.in_flight == 1 and batcher.depth == 1
        r = request(server.url, "POST", "/v2/models/gated/infer", infer_body(digits(1)))
        assert r.status == 503 and "queue is full" in r.json()["error"]
    finally:
        gate.set()
        a.join(60)
        b.join(60)
        batcher._run = batcher._unheld_run
    assert results["a"].status == results["b"].status == 200
    assert _metric(server.url, "ember_request_failures_total", model="gated", code="503") == 1


def test_concurrent_requests_are_batched_and_correct(server, cnn_reference):
    xs = [digits(1, seed=100 + i) for i in range(24)]
    results = [None] * len(xs)

    def send(i):
        results[i] = request(server.url, "POST", "/v2/models/cnn/infer", infer_body(xs[i]))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for x, r in zip(xs, results, strict=True):
        assert r.status == 200
        y = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 10)
        np.testing.assert_allclose(
            y, cnn_reference.run({"input": x})["logits"], rtol=1e-5, atol=1e-6
        )


def test_metrics_cover_requests_latency_queue_batches(server):
    request(server.url, "POST", "/v2/models/cnn/infer", infer_body(digits(1)))
    r = request(server.url, "GET", "/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.body.decode()
    for name in (
        "ember_requests_total",
        "ember_request_failures_total",
        "ember_request_latency_seconds_bucket",
        "ember_queue_seconds_bucket",
        "ember_batch_size_bucket",
        "ember_cache_hits_total",
        "ember_cache_misses_total",
        "ember_queue_depth",
    ):
        assert name in text, name
    assert re.search(r'ember_requests_total\{model="cnn",protocol="http"\} [1-9]', text)
    assert re.search(r'ember_request_failures_total\{code="400",model="cnn"\} [1-9]', text)
