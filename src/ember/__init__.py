"""ember: a Python inference engine that runs ONNX models fast, small and exactly.

>>> import ember
>>> model = ember.load("model.onnx")          # doctest: +SKIP
>>> model.run({"input": x})                    # doctest: +SKIP
"""

from ember import ops as _ops  # noqa: F401  (registers every op)
from ember.compress import (
    DistillConfig,
    LowRankConfig,
    PruneConfig,
    QuantConfig,
    distill,
    lowrank,
    prune,
)
from ember.compress.api import quantize
from ember.errors import (
    ConfigError,
    EmberError,
    ExecutionError,
    InputError,
    ModelError,
    UnsupportedError,
)
from ember.runtime import Model, TensorSpec, load

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # `ember.bench(...)` without importing the (heavier) benchmark package up front.
    if name == "bench":
        import importlib

        return importlib.import_module("ember.bench")
    raise AttributeError(f"module 'ember' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "DistillConfig",
    "EmberError",
    "ExecutionError",
    "InputError",
    "LowRankConfig",
    "Model",
    "ModelError",
    "PruneConfig",
    "QuantConfig",
    "TensorSpec",
    "UnsupportedError",
    "__version__",
    "distill",
    "load",
    "lowrank",
    "prune",
    "quantize",
]
