"""`ember prune`, `ember lowrank` and `ember distill`, with the parser built the way cli.py builds
it (add_parsers on the `ember` subparsers, dispatch through args.func, EmberError -> exit 2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

import ember
from ember import zoo
from ember.compress.commands import add_parsers
from ember.errors import EmberError
from ember.ir import load_model


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ember")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parsers(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except EmberError as e:  # as cli.main does
        print(f"ember {args.command}: error: {e}", file=sys.stderr)
        return 2


@pytest.fixture(scope="module")
def digits_eval(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ev = zoo.load_eval("digits_cnn")
    path = tmp_path_factory.mktemp("data") / "digits_eval.npz"
    np.savez(path, input=ev.x, labels=ev.y)
    return path


def test_prune_structured_prints_both_tables_and_writes_a_smaller_model(
    tmp_path: Path, digits_eval: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "small.onnx"
    rc = main(
        [
            "prune", str(zoo.model_path("digits_cnn")), "-o", str(out), "--kind", "structured",
            "--sparsity", "0.5", "--eval", str(digits_eval), "--runs", "2",
        ]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    assert "/features/features.3/Conv" in text and "32x16x3x3" in text and "16x8x3x3" in text
    for row in ("params", "file size", "FLOPs", "latency b=1", "latency b=32", "accuracy"):
        assert row in text
    assert f"written to {out}" in text
    pruned = load_model(out)
    assert pruned.graph.initializers["features.3.weight"].const_value.shape == (16, 8, 3, 3)  # type: ignore[union-attr]
    ev = zoo.load_eval("digits_cnn")
    assert ember.load(out).run({"input": ev.x[:4]})["logits"].shape == (4, 10)
    assert out.stat().st_size < zoo.model_path("digits_cnn").stat().st_size / 2


def test_prune_unstructured_layer_scope(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sparse.onnx"
    argv = ["prune", str(zoo.model_path("mnist_mlp")), "-o", str(out), "--sparsity", "0.8"]
    assert main([*argv, "--scope", "layer", "--runs", "1"]) == 0
    w = load_model(out).graph.initializers["3.weight"].const_value.numpy()  # type: ignore[union-attr]
    assert int((w == 0).sum()) == round(0.8 * w.size)
    assert "80.0%" in capsys.readouterr().out


def test_lowrank_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lr.onnx"
    rc = main(
        ["lowrank", str(zoo.model_path("mnist_mlp")), "-o", str(out), "--rank", "16", "--runs", "1"]
    )
    text = capsys.readouterr().out
    assert rc == 0
    assert "784x256" in text and "left whole: smaller than min_size" in text
    assert [n.op_type for n in load_model(out).graph].count("MatMul") == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sparsity", "1.0"], "sparsity must be in [0, 1), got 1.0"),
        (["--sparsity", "-0.2"], "sparsity must be in [0, 1), got -0.2"),
        (["--kind", "structured", "--importance", "taylor"], "needs data"),
        (["--kind", "structured", "--sparsity", "0.999"], "would keep 0 of its"),
    ],
)
def test_prune_errors_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    out = tmp_path / "never.onnx"
    rc = main(["prune", str(zoo.model_path("digits_cnn")), "-o", str(out), *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("ember prune: error: ") and message in err
    assert err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.iterdir())


def test_output_may_not_overwrite_the_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(zoo.model_path("mnist_mlp").read_bytes())
    assert main(["lowrank", str(model), "-o", str(model), "--energy", "0.9"]) == 2
    assert "would overwrite the input model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["prune", "m.onnx", "-o", "o.onnx", "--kind", "channels"],
        ["prune", "m.onnx", "-o", "o.onnx", "--importance", "l3"],
        ["lowrank", "m.onnx", "-o", "o.onnx"],  # neither --energy nor --rank
        ["lowrank", "m.onnx", "-o", "o.onnx", "--energy", "0.9", "--rank", "4"],
        ["distill", "t.onnx", "s.onnx", "-o", "o.onnx"],  # --data is required
    ],
)
def test_bad_flags_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage: ember" in capsys.readouterr().err


def test_distill_command_trains_a_pruned_student(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    from ember.compress.prune import PruneConfig, prune
    from ember.ir import save_model

    student = tmp_path / "student.onnx"
    save_model(
        prune(zoo.model_path("mnist_mlp"), PruneConfig(kind="structured", sparsity=0.5)), student
    )
    ev = zoo.load_eval("mnist_mlp")
    data, held_out = tmp_path / "train.npz", tmp_path / "eval.npz"
    np.savez(data, input=ev.x[:600])
    np.savez(held_out, input=ev.x[600:], labels=ev.y[600:])
    out = tmp_path / "trained.onnx"
    rc = main(
        [
            "distill", str(zoo.model_path("mnist_mlp")), str(student), "-o", str(out),
            "--data", str(data), "--epochs", "2", "--eval", str(held_out), "--runs", "1", "-q",
        ]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0 and out.exists()
    assert "distill (teacher -> student)" in text and "accuracy" in text
    trained = load_model(out)
    assert trained.graph.initializers["0.weight"].const_value.shape == (128, 784)  # type: ignore[union-attr]
