"""Typed serving settings: one ModelConfig per served model and one ServerConfig for the process.

Built from command-line flags or a TOML/YAML file (`[server]` plus `[models.NAME]` tables). Frozen
dataclasses that validate in `__post_init__`; they know nothing about HTTP or processes.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ember.errors import ConfigError

BALANCERS = ("least", "p2c")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """How one model is served.

    `replicas=0` runs the model in this process on `threads` threads; N > 0 starts N worker
    processes.
    `max_batch=1` turns dynamic batching off. `cache_size=0` turns the response cache off.

    >>> ModelConfig(name="cnn", path="cnn.onnx", max_batch=8).max_delay_ms
    2.0
    """

    name: str
    path: str
    version: str = "1"
    replicas: int = 1
    threads: int = 1
    max_batch: int = 32
    max_delay_ms: float = 2.0
    queue_limit: int = 256
    cache_size: int = 0
    balance: str = "least"
    exact: bool = False

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"model name {self.name!r}: must be non-empty and contain no '/'")
        if not self.version or "/" in self.version:
            raise ConfigError(
                f"model {self.name!r}: version {self.version!r} must be non-empty, no '/'"
            )
        for field, low in (
            ("replicas", 0),
            ("threads", 1),
            ("max_batch", 1),
            ("queue_limit", 1),
            ("cache_size", 0),
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(
                    f"model {self.name!r}: {field} must be an integer >= {low}, got {value!r}"
                )
        if not isinstance(self.max_delay_ms, int | float) or self.max_delay_ms < 0:
            raise ConfigError(
                f"model {self.name!r}: max_delay_ms must be >= 0, got {self.max_delay_ms!r}"
            )
        if self.balance not in BALANCERS:
            raise ConfigError(
                f"model {self.name!r}: balance must be one of {', '.join(BALANCERS)}, "
                f"got {self.balance!r}"
            )


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """The server process: where it listens, who may call it, how big a request may be.

    `grpc_port=None` serves HTTP only; `port=0` / `grpc_port=0` pick a free port.
    """

    models: tuple[ModelConfig, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = 8001
    api_keys: frozenset[str] = frozenset()  # empty: no authentication
    max_request_bytes: int = 64 * 2**20
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("serve needs at least one model")
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(
                f"model name(s) given twice: {', '.join(dupes)}; name them with NAME=PATH"
            )
        for field in ("port", "grpc_port"):
            value = getattr(self, field)
            if value is not None and not (0 <= value <= 65535):
                raise ConfigError(f"{field} must be in 0..65535, got {value}")
        if self.max_request_bytes < 1:
            raise ConfigError(f"max_request_bytes must be positive, got {self.max_request_bytes}")


def read_api_keys(path: str | Path) -> frozenset[str]:
    """The API keys in a file, one a line (blank lines and `#` comments skipped)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"--api-key-file {path}: cannot read it ({e.strerror})") from None
    keys = frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    if not keys:
        raise ConfigError(f"--api-key-file {path}: no key in it (one key a line)")
    return keys


_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)} - {"name"}
_SERVER_FIELDS = {"host", "port", "grpc_port", "api_key_file", "max_request_mb", "drain_timeout_s"}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw settings in a `.toml`, `.yaml` or `.yml` file (YAML only with PyYAML installed)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read it ({e.strerror})") from None
    if path.suffix == ".toml":
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config {path}: {e}") from None
    elif path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(
                f"config {path}: YAML needs PyYAML (pip install pyyaml), or use TOML"
            ) from None
        try:
            doc = yaml.safe_load(text)  # safe_load: no tags that construct objects
        except yaml.YAMLError as e:
            raise ConfigError(f"config {path}: {e}") from None
    else:
        raise ConfigError(f"config {path}: expected a .toml, .yaml or .yml file")
    if not isinstance(doc, dict):
        raise ConfigError(f"config {path}: expected a table with [server] and [models.NAME]")
    return doc


def models_from_config(
    doc: Mapping[str, Any], defaults: Mapping[str, Any], base: Path
) -> list[ModelConfig]:
    """ModelConfigs from the `models` table of a config file; `defaults` fill what a model omits."""
    models = doc.get("models") or {}
    if not isinstance(models, dict):
        raise ConfigError("config: 'models' must be a table of NAME -> settings")
    out = []
    for name, settings in models.items():
        if not isinstance(settings, dict) or "path" not in settings:
            raise ConfigError(f"config: model {name!r} needs a 'path'")
        unknown = set(settings) - _MODEL_FIELDS
        if unknown:
            raise ConfigError(
                f"config: model {name!r}: unknown setting(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(_MODEL_FIELDS))}"
            )
        merged = {**defaults, **settings}
        path = Path(str(merged["path"]))
        if not path.is_absolute() and (base / path).exists():
            path = base / path
        merged["path"] = str(path)
        out.append(ModelConfig(name=str(name), **merged))
    return out


def server_settings(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The `server` table of a config file, checked for unknown keys."""
    server = doc.get("server") or {}
    if not isinstance(server, dict):
        raise ConfigError("config: 'server' must be a table")
    unknown = set(server) - _SERVER_FIELDS
    if unknown:
        raise ConfigError(
            f"config: unknown [server] setting(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_SERVER_FIELDS))}"
        )
    return dict(server)
