"""`ember quantize` end to end: the zoo digits CNN with its held-out set, the max-drop loop, and the
bad inputs a user will type (each exits 2 with one line, and no output file is left behind)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from tests.compress.test_api import outlier_data, outlier_model

import ember
from ember import zoo
from ember.cli import main


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The zoo's eval file holds uint8 pixels as `x`/`y`; the model takes float32 `input`. Split it
    into a calibration file (first half) and a labeled eval file (second half) as a user would."""
    ev = zoo.load_eval("digits_cnn")
    d = tmp_path_factory.mktemp("digits")
    np.savez(d / "calib.npz", input=ev.x[:180])
    np.savez(d / "eval.npz", input=ev.x[180:], labels=ev.y[180:])
    return {"model": zoo.model_path("digits_cnn"), "calib": d / "calib.npz", "eval": d / "eval.npz"}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["quantize", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_static_digits_cnn_end_to_end(
    digits: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "digits.int8.onnx"
    argv = [str(digits["model"]), "-o", str(out), "--mode", "static", "--calib"]
    argv += [str(digits["calib"]), "--method", "percentile", "--eval", str(digits["eval"])]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "fidelity against fp32 on 180 held-out samples" in stdout
    assert "accuracy" in stdout and f"written to {out}" in stdout
    assert err == ""  # no progress bar when stderr is not a terminal
    # The file is the quantized model, and on the held-out half it is within 0.5 points of fp32.
    ev = zoo.load_eval("digits_cnn")
    x, y = ev.x[180:], ev.y[180:]
    q = ember.load(out).run({"input": x})["logits"].argmax(1)
    fp32 = ember.load(digits["model"]).run({"input": x})["logits"].argmax(1)
    assert np.mean(fp32 == y) - np.mean(q == y) <= 0.005
    ops = {n.op_type for n in ir.load(out).graph}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops


def test_console_script(digits: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "dyn.onnx"
    exe = Path(sys.executable).with_name("ember")
    proc = subprocess.run(
        [
            str(exe),
            "quantize",
            str(zoo.model_path("mnist_mlp")),
            "-o",
            str(out),
            "--mode",
            "dynamic",
            "-q",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "fidelity not measured: give --eval data.npz" in proc.stdout and out.exists()


def test_max_drop_keeps_a_layer_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = outlier_model()
    path = tmp_path / "outlier.onnx"
    ir.save(model, path)
    np.savez(tmp_path / "calib.npz", **outlier_data(model, 300, outliers=5, seed=0))
    np.savez(tmp_path / "eval.npz", **outlier_data(model, 300, outliers=0, seed=1))
    out = tmp_path / "q.onnx"
    argv = [str(path), "-o", str(out), "--calib", str(tmp_path / "calib.npz")]
    argv += ["--max-drop", "0.02", "--eval", str(tmp_path / "eval.npz")]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "kept in fp32 (1): layer_a" in stdout and out.exists()
    assert "note: kept 1 of 2 layers in fp32 to stay within max_drop=0.02" in stdout


def _only_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_budget_that_cannot_be_met_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = outlier_model(both_sensitive=True)
    path = tmp_path / "outlier.onnx"
    ir.save(model, path)
    np.savez(tmp_path / "calib.npz", **outlier_data(model, 300, outliers=5, seed=0))
    np.savez(tmp_path / "eval.npz", **outlier_data(model, 200, outliers=0, seed=1))
    out = tmp_path / "out" / "q.onnx"
    argv = [str(path), "-o", str(out), "--calib", str(tmp_path / "calib.npz")]
    argv += ["--max-drop", "0.02", "--eval", str(tmp_path / "eval.npz")]
    before = sorted(tmp_path.rglob("*"))
    code, stdout, err = run(argv, capsys)
    assert code == 2 and stdout == ""
    assert _only_line(err).startswith("ember quantize: error: max_drop=0.02 cannot be met")
    assert sorted(tmp_path.rglob("*")) == before  # no output, no temporary file, no directory


def test_zoo_npz_as_stored_is_refused(
    digits: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = zoo.model_path("digits_cnn").with_name("digits_cnn_eval.npz")  # keys x (uint8), y
    out = tmp_path / "q.onnx"
    code, _, err = run([str(digits["model"]), "-o", str(out), "--calib", str(raw)], capsys)
    assert code == 2 and not out.exists()
    line = _only_line(err)
    assert f"calibration data '{raw}': array 'x' is not an input of the model" in line
    assert "rename it to the missing input 'input'" in line


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda x: {"input": x.astype(np.float64)}, "array 'input' is float64, but"),
        (lambda x: {"input": x[:, 0]}, "has rank 3 (shape [180, 8, 8])"),
        (lambda x: {"input": x[:0]}, "no samples (an empty calibration set)"),
    ],
    ids=["dtype", "shape", "empty"],
)
def test_bad_calibration_files(
    make: object, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = zoo.load_eval("digits_cnn").x[:180]
    np.savez(tmp_path / "bad.npz", **make(x))  # type: ignore[operator]
    out = tmp_path / "q.onnx"
    argv = [str(zoo.model_path("digits_cnn")), "-o", str(out), "--calib"]
    code, _, err = run([*argv, str(tmp_path / "bad.npz")], capsys)
    assert code == 2 and not out.exists()
    assert message in _only_line(err)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "static quantization needs calibration data"),
        (["--mode", "dynamic", "--bits", "4"], "QuantConfig.bits: got 4 with mode='dynamic'"),
        (["--mode", "weight-only", "--group-size", "48"], "QuantConfig.group_size: got 48"),
        (["--mode", "dynamic", "--max-drop", "2"], "QuantConfig.max_drop: got 2.0"),
        (["--mode", "dynamic", "--max-drop", "0.01"], "needs samples to measure the drop on"),
        (["--mode", "dynamic", "--eval", "missing.npz"], "eval data 'missing.npz': no such file"),
    ],
    ids=["no-calib", "int4-dynamic", "group-size", "max-drop-range", "max-drop-no-data", "eval"],
)
def test_bad_options(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "q.onnx"
    code, _, err = run([str(zoo.model_path("mnist_mlp")), "-o", str(out), *extra], capsys)
    assert code == 2 and not out.exists()
    assert message in _only_line(err)


def test_refuses_to_overwrite_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(zoo.model_path("mnist_mlp").read_bytes())
    code, _, err = run([str(model), "-o", str(model), "--mode", "dynamic"], capsys)
    assert code == 2 and "would overwrite the input model" in _only_line(err)
    assert model.read_bytes() == zoo.model_path("mnist_mlp").read_bytes()


@pytest.mark.parametrize("flag", ["--per-channel", "--no-per-channel"])
def test_per_channel_flag_reaches_the_weights(
    flag: str, digits: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "q.onnx"
    argv = [str(digits["model"]), "-o", str(out), "--calib", str(digits["calib"]), flag]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    model = ir.load(out)
    # The weights' DequantizeLinear: int8 constant in, a scale per output channel or one scale.
    scales = [
        n.inputs[1].const_value.numpy()  # type: ignore[union-attr]
        for n in model.graph
        if n.op_type == "DequantizeLinear"
        and n.inputs[0].const_value is not None
        and n.inputs[0].const_value.dtype == ir.DataType.INT8
    ]
    assert len(scales) == 3  # two Convs and the Gemm
    sizes = sorted(s.size for s in scales)
    assert sizes == ([1, 1, 1] if flag == "--no-per-channel" else [10, 16, 32]), sizes
