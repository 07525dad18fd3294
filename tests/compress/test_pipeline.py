"""The whole compression pipeline on the zoo digits CNN, end to end: structured pruning removes half
of every conv's channels, distillation from the original buys the accuracy back, static int8 keeps
it; the result is smaller, runs on ember's int8 kernels and in onnxruntime with the same answers.

Trains on exactly the zoo's train split (scripts/build_zoo.py), so the held-out set is unseen.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ember
from ember import flags, zoo
from ember.ir import load_model
from ember.ir.analysis import model_stats

pytest.importorskip("torch", reason="distillation needs the torch extra")
pytest.importorskip("sklearn", reason="the zoo's train split is sklearn's digits")
ort = pytest.importorskip("onnxruntime")

from ember.compress import DistillConfig, PruneConfig, QuantConfig  # noqa: E402
from ember.compress.prune import prune_model  # noqa: E402

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch thread, and one ember thread for the teacher distill runs: the model is tiny, and
    on a loaded machine a second thread that loses its core stalls every op at the barrier."""
    import torch

    monkeypatch.setattr(flags, "EMBER_THREADS", 1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> Any:
    """build_zoo's split of sklearn digits, normalized as the zoo model expects."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        import build_zoo
    finally:
        sys.path.remove(str(SCRIPTS))
    split = build_zoo.RECIPES["digits_cnn"].load()
    return (
        build_zoo.normalize("digits_cnn", split.x_train),
        split.y_train,
        build_zoo.normalize("digits_cnn", split.x_eval),
        split.y_eval,
    )


def logits(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(ember.load(model).run({"input": x})["logits"])


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float((logits(model, x).argmax(1) == y).mean())


def test_split_is_the_zoos_held_out_set(digits: Any) -> None:
    _, _, x_eval, y_eval = digits
    bundled = zoo.load_eval("digits_cnn")
    np.testing.assert_array_equal(x_eval, bundled.x)
    np.testing.assert_array_equal(y_eval, bundled.y)


def test_prune_distill_int8_keeps_accuracy_and_runs_in_onnxruntime(
    digits: Any, tmp_path: Path
) -> None:
    x_train, y_train, x_eval, y_eval = digits
    original = zoo.model_path("digits_cnn")
    acc_original = accuracy(original, x_eval, y_eval)
    assert acc_original > 0.97

    pruned = prune_model(original, PruneConfig(kind="structured", sparsity=0.5))
    shapes = {layer.name: layer.shape_after for layer in pruned.layers}
    assert shapes == {
        "/features/features.0/Conv": (8, 1, 3, 3),
        "/features/features.3/Conv": (16, 8, 3, 3),
    }
    acc_pruned = accuracy(pruned.model, x_eval, y_eval)

    distilled = ember.distill(
        original,
        pruned.model,
        {"input": x_train},
        DistillConfig(epochs=10, lr=3e-3),
        labels=y_train,
        progress=False,
    )
    acc_distilled = accuracy(distilled, x_eval, y_eval)
    assert acc_distilled > acc_pruned + 0.1  # pruning alone loses ~40 points here

    quantized = ember.quantize(
        distilled, QuantConfig(mode="static"), {"input": x_train[:128]}, progress=False
    )
    path = tmp_path / "digits_cnn-compressed.onnx"
    quantized.save(path)

    ours = logits(path, x_eval)
    acc_final = float((ours.argmax(1) == y_eval).mean())
    assert acc_final >= acc_original - 0.02, (acc_original, acc_pruned, acc_distilled, acc_final)

    def n_params(p: Path) -> int:
        return model_stats(load_model(p), {"batch": 1}).n_params

    assert n_params(path) < 0.8 * n_params(original)
    assert path.stat().st_size < original.stat().st_size
    ops = {n.op_type for n in ember.load(path).ir.graph}
    assert "QConv" in ops and "Conv" not in ops  # both convolutions run on the int8 kernels

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (theirs,) = session.run(None, {"input": x_eval})
    assert float((theirs.argmax(1) == ours.argmax(1)).mean()) >= 0.98
