"""ember: a Python inference engine that runs ONNX models fast, small and exactly.

>>> import ember
>>> model = ember.load("model.onnx")          # doctest: +SKIP
>>> model.run({"input": x})                    # doctest: +SKIP
"""

from ember import ops as _ops  # noqa: F401  (registers every op)
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

__all__ = [
    "ConfigError",
    "EmberError",
    "ExecutionError",
    "InputError",
    "Model",
    "ModelError",
    "TensorSpec",
    "UnsupportedError",
    "__version__",
    "load",
]
