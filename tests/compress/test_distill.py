"""distill / gradual_prune / DistillConfig: a damaged student recovers its accuracy by learning from
the original on unlabeled data; embeddings are matched by MSE; results are deterministic; wrong
data, mismatched students and a missing torch fail with errors that say what to do."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.errors import ConfigError, InputError, ModelError
from ember.ir import load_model
from ember.zoo import load_eval, model_path

pytest.importorskip("torch", reason="distillation needs the torch extra")

from ember.compress.distill import DistillConfig, distill, gradual_prune


@pytest.fixture(autouse=True)
def one_torch_thread() -> Any:
    """These models are tiny: one torch thread trains them fastest, and on a loaded machine a
    second thread that loses its core stalls every op at the barrier (measured 8x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    logits = ember.load(model).run({"input": x})["logits"]
    return float((logits.argmax(1) == y).mean())


def damaged(name: str, weight: str, *, zero: float, noise: float, seed: int = 0) -> ir.Model:
    """The zoo model with `zero` of one weight's entries set to 0 and Gaussian noise (in units of
    the weight's std) added to the rest."""
    model = load_model(model_path(name))
    rng = np.random.default_rng(seed)
    init = model.graph.initializers[weight]
    w = init.const_value.numpy().copy()
    w[rng.random(w.shape) < zero] = 0
    w[w != 0] += noise * w.std() * rng.standard_normal(int((w != 0).sum())).astype(np.float32)
    init.const_value = ir.Tensor(w, name=weight)
    return model


def weight(model: ir.Model, name: str) -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy()


# --- distillation improves a damaged student ------------------------------------------------------

#: (zoo model, damaged weight, samples used for training; the rest of the eval set is held out)
CASES = [
    ("digits_cnn", "features.3.weight", 240),  # 32x16x3x3 conv: 60% zeroed, the rest noisy
    ("mnist_mlp", "6.weight", 600),  # the 10x128 head
]


@pytest.mark.parametrize(("name", "damaged_weight", "n_train"), CASES, ids=[c[0] for c in CASES])
def test_distillation_recovers_a_damaged_student(
    name: str, damaged_weight: str, n_train: int
) -> None:
    data = load_eval(name)
    train = {"input": data.x[:n_train]}  # unlabeled
    held_x, held_y = data.x[n_train:], data.y[n_train:]
    teacher = model_path(name)
    student = damaged(name, damaged_weight, zero=0.6, noise=1.0)
    zeros = weight(student, damaged_weight) == 0

    acc_teacher = accuracy(teacher, held_x, held_y)
    acc_damaged = accuracy(student, held_x, held_y)
    out = distill(teacher, student, train, DistillConfig(epochs=10), progress=False)
    acc_distilled = accuracy(out, held_x, held_y)
    print(
        f"{name}: teacher {acc_teacher:.3f} damaged {acc_damaged:.3f} distilled {acc_distilled:.3f}"
    )

    assert acc_damaged < acc_teacher - 0.1  # the damage is real
    assert acc_distilled > acc_damaged + 0.1
    assert acc_distilled >= acc_teacher - 0.03
    # keep_zeros: the zeroed weights stayed zero while the rest trained.
    assert (weight(out, damaged_weight)[zeros] == 0).all()
    assert not np.array_equal(weight(out, damaged_weight), weight(student, damaged_weight))
    # The student given is untouched and the result is the same graph.
    assert (weight(student, damaged_weight) == 0).sum() == zeros.sum()
    assert [n.op_type for n in out.graph] == [n.op_type for n in load_model(teacher).graph]


def test_labels_from_an_npz_file_are_used(tmp_path: Path) -> None:
    data = load_eval("mnist_mlp")
    path = tmp_path / "train.npz"
    np.savez(path, input=data.x[:600], labels=data.y[:600])
    student = damaged("mnist_mlp", "6.weight", zero=0.6, noise=1.0)
    held_x, held_y = data.x[600:], data.y[600:]
    before = accuracy(student, held_x, held_y)
    out = distill(
        model_path("mnist_mlp"), student, path, DistillConfig(epochs=5, alpha=0.5), progress=False
    )
    assert accuracy(out, held_x, held_y) > before + 0.1
    # A labeled run differs from an unlabeled one (cross-entropy contributes).
    unlabeled = distill(
        model_path("mnist_mlp"),
        student,
        {"input": data.x[:600]},
        DistillConfig(epochs=5, alpha=0.5),
        progress=False,
    )
    assert not np.array_equal(weight(out, "6.weight"), weight(unlabeled, "6.weight"))


def test_same_seed_same_student_other_seed_other_student() -> None:
    x = load_eval("digits_cnn").x[:96]
    student = damaged("digits_cnn", "head.weight", zero=0.5, noise=0.5)
    teacher = model_path("digits_cnn")
    config = DistillConfig(epochs=2, batch_size=16)
    runs = [distill(teacher, student, {"input": x}, config, progress=False) for _ in range(2)]
    other = distill(
        teacher,
        student,
        {"input": x},
        DistillConfig(epochs=2, batch_size=16, seed=1),
        progress=False,
    )
    for name in runs[0].graph.initializers:
        np.testing.assert_array_equal(weight(runs[0], name), weight(runs[1], name))
    assert not np.array_equal(weight(runs[0], "head.weight"), weight(other, "head.weight"))


def embedding_model(w: np.ndarray) -> onnx.ModelProto:
    """(B, T, 8) -> (B, T, 6) token embeddings: y = tanh(x @ w)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "embed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 6])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_embeddings_are_matched_by_mse_and_cosine() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 6)).astype(np.float32) * 0.5
    teacher = load_model(embedding_model(w))
    student = load_model(embedding_model(w + rng.standard_normal(w.shape).astype(np.float32)))
    x = rng.standard_normal((128, 5, 8)).astype(np.float32)

    def error(model: ir.Model) -> float:
        want = ember.load(teacher).run({"x": x})["y"]
        return float(np.mean((ember.load(model).run({"x": x})["y"] - want) ** 2))

    config = DistillConfig(epochs=30, lr=0.05, cosine_weight=0.5)  # rank 3: "auto" picks MSE
    out = distill(teacher, student, {"x": x}, config, progress=False)
    assert error(out) < error(student) / 50


def test_gradual_prune_prunes_in_steps_and_recovers() -> None:
    data = load_eval("mnist_mlp")
    fractions: list[float] = []

    def magnitude_prune(model: ir.Model, fraction: float) -> ir.Model:
        """Zero the smallest 80% * fraction of every 2-D weight."""
        fractions.append(fraction)
        out = load_model(ir.to_proto(model))
        for name, init in out.graph.initializers.items():
            w = init.const_value.numpy().copy()
            if w.ndim == 2:
                w[np.abs(w) < np.quantile(np.abs(w), 0.8 * fraction)] = 0
                init.const_value = ir.Tensor(w, name=name)
        return out

    train, held_x, held_y = {"input": data.x[:600]}, data.x[600:], data.y[600:]
    one_shot = magnitude_prune(load_model(model_path("mnist_mlp")), 1.0)
    fractions.clear()
    out = gradual_prune(
        model_path("mnist_mlp"),
        magnitude_prune,
        train,
        2,
        DistillConfig(epochs=5),
        progress=False,
    )
    assert fractions == [0.5, 1.0]
    sparsity = (weight(out, "0.weight") == 0).mean()
    assert 0.79 < sparsity < 0.81  # the last step's zeros survived its recovery
    acc_teacher = accuracy(model_path("mnist_mlp"), held_x, held_y)
    acc_one_shot, acc_gradual = accuracy(one_shot, held_x, held_y), accuracy(out, held_x, held_y)
    print(
        f"80% sparse: teacher {acc_teacher:.3f} one-shot {acc_one_shot:.3f} "
        f"gradual {acc_gradual:.3f}"
    )
    assert acc_gradual > acc_one_shot + 0.1
    assert acc_gradual >= acc_teacher - 0.03


def test_progress_bar_draws_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    x = load_eval("mnist_mlp").x[:64]
    distill(model_path("mnist_mlp"), model_path("mnist_mlp"), {"input": x}, DistillConfig(epochs=1))
    assert "distill epoch 1/1" in capsys.readouterr().err


# --- bad inputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("temperature", 0.0, "> 0"),
        ("temperature", float("nan"), "finite"),
        ("alpha", 1.5, r"in \[0, 1\]"),
        ("epochs", 0, "an int >= 1"),
        ("epochs", 2.0, "an int >= 1"),
        ("lr", -1e-3, "> 0"),
        ("batch_size", 0, "an int >= 1"),
        ("seed", -1, "an int >= 0"),
        ("loss", "l1", "one of 'auto', 'kl', 'mse'"),
        ("cosine_weight", -1.0, ">= 0"),
        ("shuffle", 1, "True or False"),
        ("lr", "fast", "a number"),
    ],
)
def test_bad_config_names_the_field(field: str, value: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=f"DistillConfig.{field} must be {words}, got"):
        DistillConfig(**{field: value})


def test_data_of_the_wrong_shape_or_dtype_is_an_input_error(tmp_path: Path) -> None:
    mlp = model_path("mnist_mlp")
    with pytest.raises(InputError, match=r"distillation data.*'input' has shape \[8, 783\].*784"):
        distill(mlp, mlp, {"input": np.zeros((8, 783), np.float32)}, progress=False)
    with pytest.raises(InputError, match="'input' is float64"):
        distill(mlp, mlp, {"input": np.zeros((8, 784))}, progress=False)
    with pytest.raises(InputError, match="missing input 'input'"):
        distill(mlp, mlp, {"image": np.zeros((8, 784), np.float32)}, progress=False)
    with pytest.raises(InputError, match="no such file"):
        distill(mlp, mlp, tmp_path / "missing.npz", progress=False)
    with pytest.raises(InputError, match=r"labels must be a 1-D integer array.*\(8\)"):
        x = {"input": np.zeros((8, 784), np.float32)}
        distill(mlp, mlp, x, labels=np.zeros(7, np.int64), progress=False)


def mlp_with(*, classes: int = 10, output: str = "logits", input_name: str = "input") -> ir.Model:
    """A 784 -> `classes` linear model with the given names."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gemm", [input_name, "w", "b"], [output], transB=1)],
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 784])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", classes])],
        [
            numpy_helper.from_array(rng.standard_normal((classes, 784)).astype(np.float32), "w"),
            numpy_helper.from_array(np.zeros(classes, np.float32), "b"),
        ],
    )
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_student_whose_outputs_differ_is_a_model_error() -> None:
    x = {"input": load_eval("mnist_mlp").x[:16]}
    teacher = model_path("mnist_mlp")
    distill(
        teacher, mlp_with(), x, DistillConfig(epochs=1), progress=False
    )  # a different net: fine
    with pytest.raises(
        ModelError, match=r"student's output 'logits' has shape \[16, 5\].*\[16, 10\]"
    ):
        distill(teacher, mlp_with(classes=5), x, progress=False)
    with pytest.raises(ModelError, match=r"student's outputs \['scores'\] differ.*\['logits'\]"):
        distill(teacher, mlp_with(output="scores"), x, progress=False)
    with pytest.raises(ModelError, match=r"student's inputs \['pixels'\] differ.*\['input'\]"):
        distill(teacher, mlp_with(input_name="pixels"), x, progress=False)


def test_labels_without_a_class_score_output_are_a_config_error() -> None:
    x = load_eval("mnist_mlp")
    with pytest.raises(ConfigError, match="labels need exactly one class-score output"):
        distill(
            model_path("mnist_mlp"),
            model_path("mnist_mlp"),
            {"input": x.x[:16]},
            DistillConfig(loss="mse"),
            labels=x.y[:16],
            progress=False,
        )


def test_bad_gradual_prune_arguments() -> None:
    x = {"input": load_eval("mnist_mlp").x[:16]}
    mlp = model_path("mnist_mlp")
    with pytest.raises(ConfigError, match="steps must be an int >= 1, got 0"):
        gradual_prune(mlp, lambda m, f: m, x, 0, progress=False)
    with pytest.raises(ConfigError, match="prune_fn returned NoneType at step 1"):
        gradual_prune(mlp, lambda m, f: None, x, 2, progress=False)  # type: ignore[arg-type,return-value]


def test_torch_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    mlp = model_path("mnist_mlp")
    with pytest.raises(
        ConfigError, match=r"ember.distill needs the torch extra: pip install 'ember\[torch\]'"
    ):
        distill(mlp, mlp, {"input": np.zeros((4, 784), np.float32)}, progress=False)
