"""Triton's own clients (tritonclient http and grpc) against ember: health, metadata, infer."""

from __future__ import annotations

import numpy as np
import pytest
from serve_helpers import KEY, digits

from ember.serve import ModelConfig, ServerConfig, start_in_thread

pytest.importorskip("grpc", reason="the serve extra is not installed (grpcio)")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

# NOTE: tritonclient.http's __del__ calls close() again from whatever thread collects it, and gevent
# refuses that (InvalidThreadUseError); the client is already closed by then, so it is harmless.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def auth():
    # NOTE: a fresh dict per call: tritonclient.http writes Inference-Header-Content-Length into it.
    return {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server():
    config = ServerConfig(
        models=(
            ModelConfig(name="cnn", path="digits_cnn", replicas=0, max_batch=16),
            ModelConfig(name="mlp", path="mnist_mlp", replicas=0),
        ),
        port=0,
        grpc_port=0,
        api_keys=frozenset({KEY}),
    )
    s = start_in_thread(config)
    yield s
    s.stop()


def test_http_client(server, cnn_reference):
    c = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready("cnn", headers=auth()) and c.is_model_ready(
            "cnn", "1", headers=auth()
        )
        assert not c.is_model_ready("nope", headers=auth())
        assert c.get_server_metadata(headers=auth())["name"] == "ember"
        meta = c.get_model_metadata("cnn", headers=auth())
        assert meta["inputs"][0]["shape"] == [-1, 1, 8, 8]
        assert c.get_model_config("cnn", headers=auth())["max_batch_size"] == 16
        x = digits(4, seed=5)
        for binary in (True, False):
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = httpclient.InferRequestedOutput("logits", binary_data=binary)
            result = c.infer("cnn", [inp], outputs=[out], headers=auth(), request_id="r1")
            np.testing.assert_allclose(
                result.as_numpy("logits"), cnn_reference.run({"input": x})["logits"], rtol=1e-6
            )
        for algorithm in ("gzip", "deflate"):
            result = c.infer("cnn", [inp], headers=auth(), request_compression_algorithm=algorithm)
            assert result.as_numpy("logits").shape == (4, 10)
        with pytest.raises(InferenceServerException, match="expected dtype float32"):
            inp = httpclient.InferInput("input", list(x.shape), "FP64")
            inp.set_data_from_numpy(x.astype(np.float64))
            c.infer("cnn", [inp], headers=auth())
        with pytest.raises(InferenceServerException, match="API key"):
            c.get_model_metadata("cnn")
    finally:
        c.close()


def test_grpc_client(server, cnn_reference):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert c.is_server_live() and c.is_server_ready()  # health needs no key
        assert c.is_model_ready("cnn", headers=auth())
        assert c.get_server_metadata(headers=auth()).name == "ember"
        meta = c.get_model_metadata("mlp", headers=auth(), as_json=True)
        assert meta["inputs"][0]["datatype"] == "FP32" and meta["inputs"][0]["shape"] == [
            "-1",
            "784",
        ]
        x = digits(3, seed=6)
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = c.infer(
            "cnn", [inp], outputs=[grpcclient.InferRequestedOutput("logits")], headers=auth()
        )
        np.testing.assert_allclose(
            result.as_numpy("logits"), cnn_reference.run({"input": x})["logits"], rtol=1e-6
        )
        with pytest.raises(InferenceServerException, match="axis 3 must be 8") as e:
            bad = grpcclient.InferInput("input", [1, 1, 8, 9], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 1, 8, 9), np.float32))
            c.infer("cnn", [bad], headers=auth())
        assert "INVALID_ARGUMENT" in e.value.status()
        with pytest.raises(InferenceServerException) as e:
            c.get_model_metadata("nope", headers=auth())
        assert "NOT_FOUND" in e.value.status()
        with pytest.raises(InferenceServerException) as e:
            c.infer("cnn", [inp])
        assert "UNAUTHENTICATED" in e.value.status()
    finally:
        c.close()
