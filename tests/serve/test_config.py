"""`ember serve` flags and config files become a ServerConfig; bad settings say what is wrong."""

from __future__ import annotations

import argparse

import pytest

from ember.errors import ConfigError
from ember.serve.cli import add_parser, build_config
from ember.serve.config import ModelConfig, ServerConfig


def _args(*argv):
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="command"))
    return p.parse_args(["serve", *argv])


def test_flags_apply_to_every_model(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# keys\nalpha\n\nbeta\n")
    c = build_config(
        _args(
            "digits_cnn",
            "mlp=mnist_mlp",
            "--replicas",
            "0",
            "--max-batch",
            "4",
            "--cache-size",
            "10",
            "--api-key-file",
            str(keys),
            "--grpc-port",
            "-1",
            "--max-request-mb",
            "0.5",
        )
    )
    assert [m.name for m in c.models] == ["digits_cnn", "mlp"]
    assert all(m.replicas == 0 and m.max_batch == 4 and m.cache_size == 10 for m in c.models)
    assert c.host == "127.0.0.1" and c.port == 8000 and c.grpc_port is None
    assert c.api_keys == {"alpha", "beta"} and c.max_request_bytes == 2**19


def test_toml_config_with_per_model_settings(tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text(
        "[server]\nport = 9000\ngrpc_port = 9001\n\n"
        '[models.cnn]\npath = "digits_cnn"\nreplicas = 3\ncache_size = 50\nbalance = "p2c"\n\n'
        '[models.mlp]\npath = "mnist_mlp"\n'
    )
    c = build_config(_args("--config", str(cfg), "--max-batch", "16"))
    cnn, mlp = c.models
    assert (cnn.name, cnn.replicas, cnn.cache_size, cnn.balance, cnn.max_batch) == (
        "cnn",
        3,
        50,
        "p2c",
        16,
    )
    assert (mlp.replicas, mlp.max_batch) == (1, 16)
    assert (c.port, c.grpc_port) == (9000, 9001)


def test_yaml_config(tmp_path):
    pytest.importorskip("yaml", reason="PyYAML is not installed")
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(
        "server:\n  host: 127.0.0.1\nmodels:\n  cnn:\n    path: digits_cnn\n    max_delay_ms: 5\n"
    )
    (cnn,) = build_config(_args("--config", str(cfg))).models
    assert cnn.max_delay_ms == 5


@pytest.mark.parametrize(
    "text, words",
    [
        ("[models.cnn]\nreplicas = 2\n", "needs a 'path'"),
        ('[models.cnn]\npath = "digits_cnn"\nreplica = 2\n', "unknown setting(s) replica"),
        ("[server]\nprot = 1\n", "unknown [server] setting(s) prot"),
        ('[models.cnn]\npath = "digits_cnn"\nmax_batch = 0\n', "max_batch must be an integer >= 1"),
        (
            '[models.cnn]\npath = "digits_cnn"\nbalance = "random"\n',
            "balance must be one of least, p2c",
        ),
        ("[models.cnn\n", "config"),
    ],
)
def test_bad_config_files(tmp_path, text, words):
    cfg = tmp_path / "serve.toml"
    cfg.write_text(text)
    with pytest.raises(
        ConfigError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        build_config(_args("--config", str(cfg)))


def test_bad_flags_and_files(tmp_path):
    with pytest.raises(ConfigError, match="no key in it"):
        (tmp_path / "empty").write_text("\n")
        build_config(_args("digits_cnn", "--api-key-file", str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="cannot read"):
        build_config(_args("digits_cnn", "--api-key-file", str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="given twice"):
        build_config(_args("digits_cnn", "digits_cnn"))
    with pytest.raises(ConfigError, match="at least one model"):
        build_config(_args())
    (tmp_path / "x.ini").write_text("")
    with pytest.raises(ConfigError, match=r"expected a \.toml"):
        build_config(_args("--config", str(tmp_path / "x.ini")))


def test_unknown_model_path_fails_at_load():
    from ember.serve.endpoint import resolve_model_path

    with pytest.raises(ConfigError, match="not a bundled zoo model"):
        resolve_model_path("no_such_model")
    with pytest.raises(ConfigError, match="must be non-empty"):
        ServerConfig(models=(ModelConfig(name="a/b", path="x"),))


def test_cmd_serve_runs_until_interrupted():
    import re
    import signal
    import subprocess
    import sys

    from serve_helpers import request

    # `ember serve` as the CLI runs it (the subcommand is wired into ember.cli by add_parser).
    code = (
        "import argparse, sys\n"
        "from ember.serve.cli import add_parser\n"
        "p = argparse.ArgumentParser(); add_parser(p.add_subparsers(dest='command'))\n"
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
    )
    argv = ["serve", "digits_cnn", "--port", "0", "--grpc-port", "-1", "--replicas", "0"]
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"digits_cnn on http://127\.0\.0\.1:(\d+)", line)
        assert m, line
        url = f"http://127.0.0.1:{m.group(1)}"
        assert request(url, "GET", "/v2/health/ready", key=None).status == 200
        assert request(url, "GET", "/v2/models/digits_cnn", key=None).json()["name"] == "digits_cnn"
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    assert rc == 0, proc.stderr.read()
