"""Ray Serve on a local cluster this test starts (2 CPUs, no dashboard) and shuts down."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from serve_helpers import KEY, digits, infer_body, request

from ember.serve import ModelConfig, ServerConfig

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ember[ray]')")
serve = pytest.importorskip(
    "ray.serve", reason="Ray Serve is not installed (pip install 'ember[ray]')"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_server():
    from ember.serve.ray_serve import deploy

    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ServerConfig(
            models=(
                ModelConfig(name="cnn", path="digits_cnn", replicas=1, max_batch=8, max_delay_ms=5),
            ),
            port=port,
            grpc_port=None,
            api_keys=frozenset({KEY}),
            max_request_bytes=64 * 1024,
        )
        handles = deploy(config, num_cpus=0.5)
        yield f"http://127.0.0.1:{port}", handles
    finally:
        serve.shutdown()
        ray.shutdown()


def test_ray_serve_speaks_kserve_v2(ray_server, cnn_reference):
    url, _ = ray_server
    assert request(url, "GET", "/v2/health/ready", key=None).status == 200
    assert request(url, "GET", "/v2", key=None).status == 401
    assert request(url, "GET", "/v2").json()["name"] == "ember"
    meta = request(url, "GET", "/v2/models/cnn").json()
    assert meta["inputs"][0]["shape"] == [-1, 1, 8, 8]
    assert request(url, "GET", "/v2/models/cnn/config").json()["max_batch_size"] == 8
    x = digits(3, seed=11)
    r = request(url, "POST", "/v2/models/cnn/infer", infer_body(x))
    assert r.status == 200, r.body
    y = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(3, 10)
    np.testing.assert_allclose(y, cnn_reference.run({"input": x})["logits"], rtol=1e-6)
    bad = request(
        url, "POST", "/v2/models/cnn/infer", infer_body(np.zeros((1, 1, 8, 7), np.float32))
    )
    assert bad.status == 400 and "axis 3 must be 8" in bad.json()["error"]
    assert request(url, "POST", "/v2/models/cnn/infer", b"{nope").status == 400
    assert request(url, "POST", "/v2/models/cnn/infer", infer_body(digits(100))).status == 413
    assert request(url, "GET", "/v2/models/cnn/versions/2").status == 404


def test_ray_serve_batches_concurrent_requests(ray_server, cnn_reference):
    import concurrent.futures

    url, _ = ray_server
    xs = [digits(1, seed=200 + i) for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(lambda x: request(url, "POST", "/v2/models/cnn/infer", infer_body(x)), xs)
        )
    for x, r in zip(xs, replies, strict=True):
        assert r.status == 200, r.body
        y = np.array(json.loads(r.body)["outputs"][0]["data"], np.float32).reshape(1, 10)
        np.testing.assert_allclose(
            y, cnn_reference.run({"input": x})["logits"], rtol=1e-5, atol=1e-6
        )
