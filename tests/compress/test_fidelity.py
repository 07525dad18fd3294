"""measure_fidelity on perturbations whose effect is known in closed form: a scaled weight (cosine
exactly 1, error proportional), a shifted output (argmax unchanged, error = the shift), a negated
weight (every argmax flips), and accuracy against labels computed here with NumPy."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ember
from ember.compress.data import load_samples
from ember.compress.fidelity import Fidelity, measure_fidelity
from ember.errors import InputError, ModelError

RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 5)).astype(np.float32)  # (K, N): 5 classes
X = RNG.standard_normal((50, 8)).astype(np.float32)  # (B, K)


def linear(w: np.ndarray, shift: float = 0.0, *, output: str = "logits") -> ember.Model:
    """logits = x @ w + shift: x float32[batch, 8]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", w.shape[1]])
    inits = [
        onnx.numpy_helper.from_array(w.astype(np.float32), "w"),
        onnx.numpy_helper.from_array(np.float32(shift), "shift"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "shift"], [output]),
    ]
    graph = helper.make_graph(nodes, "linear", [x], [y], inits)
    return ember.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def embedder(w: np.ndarray) -> ember.Model:
    """hidden = x @ w with x float32[batch, 3, 8]: a (B, T, C) output, not class scores."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8])
    y = helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", 3, w.shape[1]])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["hidden"])],
        "embed",
        [x],
        [y],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    return ember.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_identical_models_agree_perfectly() -> None:
    m = linear(W)
    f = measure_fidelity(m, m, load_samples({"x": X}, m, batch_size=7, what="eval"))
    assert f.samples == 50
    assert f.top1_agreement == 1.0 and f.max_abs_error == 0.0
    assert f.cosine == pytest.approx(1.0, abs=1e-12) and f.cosine_min == pytest.approx(1.0)
    assert f.accuracy is None and f.accuracy_drop is None
    assert f.drop_measure == "top-1 disagreement" and f.drop == 0.0


def test_scaled_weight_keeps_direction_and_argmax() -> None:
    ref, cand = linear(W), linear(W * 1.1)
    f = measure_fidelity(ref, cand, load_samples({"x": X}, ref, batch_size=16))
    logits = X.astype(np.float64) @ W.astype(np.float64)
    assert f.top1_agreement == 1.0
    assert f.cosine == pytest.approx(1.0, abs=1e-6) and f.cosine_min == pytest.approx(1.0, abs=1e-6)
    assert f.max_abs_error == pytest.approx(0.1 * np.abs(logits).max(), rel=1e-4)


def test_shifted_output_error_is_the_shift_and_cosine_matches_numpy() -> None:
    ref, cand = linear(W), linear(W, shift=0.5)
    f = measure_fidelity(ref, cand, load_samples({"x": X}, ref, batch_size=9))
    assert f.top1_agreement == 1.0  # argmax ignores a constant shift
    assert f.max_abs_error == pytest.approx(0.5, abs=1e-5)
    r = X.astype(np.float64) @ W
    g = r + 0.5
    cos = (r * g).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1))
    assert f.cosine == pytest.approx(cos.mean(), abs=1e-5)
    assert f.cosine_min == pytest.approx(cos.min(), abs=1e-5)
    assert f.drop == 0.0


def test_negated_weight_flips_every_prediction() -> None:
    ref, cand = linear(W), linear(-W)
    f = measure_fidelity(ref, cand, load_samples({"x": X}, ref))
    r = X @ W
    expected = float(np.mean(r.argmax(1) == r.argmin(1)))  # 0 unless a row is constant
    assert f.top1_agreement == expected == 0.0
    assert f.cosine == pytest.approx(-1.0, abs=1e-6)
    assert f.drop == 1.0


def test_accuracy_against_labels() -> None:
    ref = linear(W)
    r = X @ W
    labels = r.argmax(1).copy()
    labels[:10] = (labels[:10] + 1) % 5  # the reference gets 40 of 50 right
    perturbed = W.copy()
    perturbed[:, 0] += 0.8  # pushes some predictions to class 0
    cand = linear(perturbed)
    f = measure_fidelity(ref, cand, load_samples({"x": X, "labels": labels}, ref, batch_size=8))
    g = X @ perturbed
    assert f.reference_accuracy == pytest.approx(0.8)
    assert f.accuracy == pytest.approx(float(np.mean(g.argmax(1) == labels)))
    assert f.top1_agreement == pytest.approx(float(np.mean(g.argmax(1) == r.argmax(1))))
    assert f.accuracy_drop == pytest.approx(f.reference_accuracy - f.accuracy)
    assert f.drop_measure == "accuracy drop" and f.drop == f.accuracy_drop
    assert 0 < f.top1_agreement < 1  # the perturbation really changed something
    text = f.format()
    assert "on 50 held-out samples" in text and "fp32 80.00%" in text


def test_batch_size_does_not_change_the_numbers() -> None:
    ref, cand = linear(W), linear(W * 0.9, shift=0.1)
    one = measure_fidelity(ref, cand, load_samples({"x": X}, ref, batch_size=50))
    many = measure_fidelity(ref, cand, load_samples({"x": X}, ref, batch_size=3))
    assert one.top1_agreement == many.top1_agreement
    assert one.max_abs_error == pytest.approx(many.max_abs_error)
    assert one.cosine == pytest.approx(many.cosine, abs=1e-12)


def test_embedding_outputs_use_cosine() -> None:
    w = RNG.standard_normal((8, 6)).astype(np.float32)
    noise = (0.05 * RNG.standard_normal(w.shape)).astype(np.float32)
    ref, cand = embedder(w), embedder(w + noise)
    x = RNG.standard_normal((20, 3, 8)).astype(np.float32)
    f = measure_fidelity(ref, cand, load_samples({"x": x}, ref, batch_size=6))
    r = (x @ w).reshape(20, -1).astype(np.float64)
    g = (x @ (w + noise)).reshape(20, -1).astype(np.float64)
    cos = (r * g).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1))
    assert f.top1_agreement is None and f.drop_measure == "1 - cosine"
    assert f.cosine == pytest.approx(cos.mean(), abs=1e-6) and f.cosine < 1.0
    assert f.drop == pytest.approx(1.0 - cos.mean(), abs=1e-6)
    assert f.max_abs_error == pytest.approx(np.abs(g - r).max(), rel=1e-4)
    assert "top-1" not in f.format()


def test_labels_on_a_non_classifier_are_refused() -> None:
    m = embedder(np.ones((8, 6), np.float32))
    data = load_samples({"x": np.ones((4, 3, 8), np.float32), "labels": np.zeros(4, int)}, m)
    with pytest.raises(InputError, match=r"has labels, but .* 'hidden' is \[4, 3, 6\]"):
        measure_fidelity(m, m, data)


def test_different_outputs_are_a_model_error() -> None:
    ref, cand = linear(W), linear(W, output="scores")
    with pytest.raises(ModelError, match=r"candidate's outputs \['scores'\].*\['logits'\]"):
        measure_fidelity(ref, cand, load_samples({"x": X}, ref))
    wide = linear(np.ones((8, 4), np.float32))
    with pytest.raises(ModelError, match=r"output 'logits'.*\[50, 4\].*\[50, 5\]"):
        measure_fidelity(ref, wide, load_samples({"x": X}, ref, batch_size=50))


def test_drop_prefers_accuracy_then_top1_then_cosine() -> None:
    base = {"samples": 1, "max_abs_error": 0.0, "cosine": 0.98}
    assert Fidelity(**base, top1_agreement=0.9, accuracy=0.5, reference_accuracy=0.6).drop == (
        pytest.approx(0.1)
    )
    assert Fidelity(**base, top1_agreement=0.9, accuracy=None, reference_accuracy=None).drop == (
        pytest.approx(0.1)
    )
    f = Fidelity(**base, top1_agreement=None, accuracy=None, reference_accuracy=None)
    assert f.drop == pytest.approx(0.02) and math.isnan(f.cosine_min)


def masked_embedder(pad_value: float) -> ember.Model:
    """hidden = x @ w, except `pad_value` wherever attention_mask is 0: (B, T, C) with padding."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    y = helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", 6])
    inits = [
        onnx.numpy_helper.from_array(np.ones((8, 6), np.float32), "w"),
        onnx.numpy_helper.from_array(np.array([-1], np.int64), "last"),
        onnx.numpy_helper.from_array(np.float32(pad_value), "pad"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["m", "last"], ["m3"]),
        helper.make_node("Where", ["m3", "xw", "pad"], ["hidden"]),
    ]
    graph = helper.make_graph(nodes, "masked", [x, mask], [y], inits)
    return ember.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_padding_is_left_out_of_the_comparison() -> None:
    # Two models that differ only at padded positions agree perfectly.
    ref, cand = masked_embedder(0.0), masked_embedder(100.0)
    x = RNG.standard_normal((6, 5, 8)).astype(np.float32)
    mask = np.ones((6, 5), np.int64)
    mask[::2, 3:] = 0  # every other sample is padded after 3 tokens
    f = measure_fidelity(ref, cand, load_samples({"x": x, "attention_mask": mask}, ref))
    assert f.max_abs_error == 0.0 and f.cosine == pytest.approx(1.0)
    # ... although their raw outputs differ by 100 at the padding.
    feeds = {"x": x, "attention_mask": mask}
    raw = np.abs(ref.run(feeds)["hidden"] - cand.run(feeds)["hidden"])
    assert raw.max() == 100.0 and raw[mask == 1].max() == 0.0
