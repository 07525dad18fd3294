"""The bundled zoo models: they load, reach their held-out accuracy, and agree with onnxruntime."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import ember
from ember import zoo

# Held-out accuracy measured by scripts/build_zoo.py (torch and onnxruntime agree), minus a margin
# of a few images so a benign change in float rounding cannot fail the test but a broken op does.
ACCURACY_FLOOR = {
    "digits_cnn": 0.985,  # measured 0.9944 (358 / 360)
    "mnist_mlp": 0.95,  # measured 0.9570 (957 / 1000)
}
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module", params=[False, True], ids=["fast", "exact"])
def exact(request: pytest.FixtureRequest) -> bool:
    return request.param


@pytest.fixture(scope="module", params=zoo.names())
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(name: str, exact: bool) -> ember.Model:
    return ember.load(zoo.model_path(name), exact=exact)


def test_names_and_descriptions() -> None:
    assert zoo.names() == sorted(ACCURACY_FLOOR)
    for n in zoo.names():
        text = zoo.describe(n)
        assert text and "\n" not in text
        assert zoo.model_path(n).is_file()


def test_eval_set_matches_model_signature(name: str) -> None:
    data = zoo.load_eval(name)
    spec = ember.load(zoo.model_path(name)).inputs[0]
    assert spec.name == "input"
    assert spec.shape == ("batch", *zoo.info(name).input_shape)
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
    assert data.x.shape == (len(data), *zoo.info(name).input_shape)
    assert data.x.min() >= 0.0 and data.x.max() <= 1.0  # normalized, not raw pixels
    assert set(np.unique(data.y)) == set(range(10))
    # The split is stratified and the classes are balanced: each is ~10% of the eval set.
    assert np.bincount(data.y).min() >= 0.9 * len(data) / 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.x = data.x  # type: ignore[misc]


def test_accuracy(name: str, model: ember.Model) -> None:
    data = zoo.load_eval(name)
    logits = model.run({"input": data.x})["logits"]
    assert logits.shape == (len(data), 10) and logits.dtype == np.float32
    acc = float((logits.argmax(1) == data.y).mean())
    assert acc >= ACCURACY_FLOOR[name], f"{name}: held-out accuracy {acc:.4f}"


@pytest.mark.parametrize("batch", [1, 7, None], ids=["b1", "b7", "all"])
def test_matches_onnxruntime(name: str, model: ember.Model, batch: int | None) -> None:
    ort = pytest.importorskip("onnxruntime")
    x = zoo.load_eval(name).x[:batch]
    sess = ort.InferenceSession(str(zoo.model_path(name)), providers=["CPUExecutionProvider"])
    (want,) = sess.run(["logits"], {"input": x})
    got = model.run({"input": x})["logits"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_unknown_name_lists_the_zoo() -> None:
    for fn in (zoo.model_path, zoo.load_eval, zoo.describe, zoo.info):
        with pytest.raises(
            ember.ConfigError,
            match="unknown zoo model 'resnet50'; available: digits_cnn, mnist_mlp",
        ):
            fn("resnet50")
