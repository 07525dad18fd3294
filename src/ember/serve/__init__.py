"""Serving: ember models behind the KServe v2 protocol (HTTP and gRPC), with dynamic batching,
replica processes, a response cache, Prometheus metrics and API keys; Ray Serve past one machine.

    >>> from ember.serve import ModelConfig, ServerConfig
    >>> ServerConfig(models=(ModelConfig(name="cnn", path="digits_cnn"),), port=0).host
    '127.0.0.1'

Run it with `ember serve MODEL ...`, `serve(config)` (blocking) or `start_in_thread(config)`.
Needs the `serve` extra (uvicorn, prometheus-client, grpcio, grpcio-tools).
"""

from ember.serve.config import ModelConfig, ServerConfig

__all__ = ["ModelConfig", "ServerConfig", "serve", "start_in_thread"]


def __getattr__(name: str):  # the server pulls in uvicorn and prometheus: only when used
    if name in ("serve", "start_in_thread", "EmberServer", "RunningServer"):
        from ember.serve import server

        return getattr(server, name)
    raise AttributeError(name)
