"""`ember bench` on the command line: the zoo CNN end to end, bad arguments (one line, exit 2)."""

from __future__ import annotations

import importlib.util
import json

import onnx
import onnx.parser
import pytest
from tests.models import mlp

from ember.bench import validate
from ember.cli import main


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), path)
    return path


def test_bench_zoo_cnn(tmp_path, capsys) -> None:
    html = importlib.util.find_spec("matplotlib") is not None  # the HTML report's plots need it
    out_json, out_html = tmp_path / "cnn.json", tmp_path / "cnn.html"
    argv = ["bench", "digits_cnn", "--batch", "1,4", "--peers", "ort", "--min-time", "0.03",
            "--rounds", "2", "--max-iters", "10", "--json", str(out_json)]  # fmt: skip
    assert main(argv + (["--html", str(out_html)] if html else [])) == 0
    out = capsys.readouterr().out
    doc = json.loads(out_json.read_text())
    assert validate(doc) == []
    assert doc["model"]["name"] == "digits_cnn" and doc["model"]["input_data"] == "given"
    assert doc["model"]["inputs"] == [
        {"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 8]}
    ]
    if html:
        assert out_html.read_text().count("<svg") == 3
    assert "latency per call (ms) and throughput" in out
    assert f"json report written to {out_json}" in out
    if any(e["name"] == "ort" for e in doc["engines"]):
        assert out.index("ember speed / peer speed") < out.index("latency per call")  # ratios first
    for row in doc["results"]:
        assert row["status"] == "ok" and row["agreement"]["top1_agreement"] == 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "{tmp}/missing.onnx"], "no such model file '{tmp}/missing.onnx'"),
        (["bench", "{tmp}"], "is a directory, not an ONNX model file"),
        (["bench", "{tmp}/garbage.onnx"], "not a valid ONNX file"),
        (
            ["bench", "{model}", "--batch", "1,x"],
            "--batch '1,x': expected comma-separated positive integers, e.g. 1,8,32",
        ),
        (
            ["bench", "{model}", "--batch", "0"],
            "--batch '0': expected comma-separated positive integers",
        ),
        (["bench", "{model}", "--batch", "8,8"], "--batch '8,8': a batch size is repeated"),
        (
            ["bench", "{model}", "--peers", "ort,tensorrt"],
            "unknown peer 'tensorrt'; known peers: ort, openvino, torch",
        ),
        (["bench", "{model}", "--peers", "torch"], "the torch peer needs a torch.nn.Module"),
        (["bench", "{model}", "--min-time", "0"], "min_time must be > 0 seconds"),
        (["bench", "{model}", "--threads", "0"], "threads must be a positive integer"),
        (["bench", "{model}", "--dim", "seq"], "expected NAME=SIZE"),
        (
            ["bench", "{seq_model}"],
            "has the symbolic dim 'seq' on axis 1: give its size, e.g. --dim seq=128",
        ),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args, message, model_file, tmp_path, capsys) -> None:
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07garbage\xff\xff\xff")
    seq_model = tmp_path / "seq.onnx"
    onnx.save(
        onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[batch, seq] x) => (float[batch, seq] y) { y = Relu(x) }
    """),
        seq_model,
    )
    argv = [a.format(model=model_file, tmp=tmp_path, seq_model=seq_model) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err
    assert err.startswith("ember bench: error: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unknown_precision_is_an_argparse_error(model_file, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", str(model_file), "--precision", "fp8"])
    assert e.value.code == 2
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_html_without_matplotlib_fails_before_running(model_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    assert main(["bench", str(model_file), "--html", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "--html needs matplotlib for its plots: pip install matplotlib" in err
    assert not (tmp_path / "r.html").exists()
