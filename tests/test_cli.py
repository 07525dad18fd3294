"""`ember inspect` and `ember run` on a model with a dynamic batch dim, and their errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from tests.models import mlp, mlp_reference

from ember.cli import main


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), path)
    return path


def test_inspect_dynamic_batch(model_file, capsys) -> None:
    assert main(["inspect", str(model_file), "--batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "[batch, 4]" in out and "[batch, 3]" in out
    assert "ai.onnx 17" in out
    assert "parameters: 15" in out
    # MatMul 2*8*4*3 = 192, Add 24, Relu 24.
    assert "FLOPs (estimate, batch=8): 240" in out
    assert "MatMul" in out and "Relu" in out
    assert "unsupported ops: none" in out


def test_run_random_dynamic_batch(model_file, tmp_path, capsys) -> None:
    out_file = tmp_path / "out.npz"
    assert main(["run", str(model_file), "--random", "--batch", "6", "-o", str(out_file)]) == 0
    text = capsys.readouterr().out
    assert "output y: float32[6, 3]" in text
    assert np.load(out_file)["y"].shape == (6, 3)


def test_run_with_input_files(model_file, tmp_path, capsys) -> None:
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out_file = tmp_path / "o.npz"
    assert (
        main(["run", str(model_file), "--input", f"x={tmp_path / 'x.npy'}", "-o", str(out_file)])
        == 0
    )
    np.testing.assert_allclose(np.load(out_file)["y"], mlp_reference(x), rtol=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "{model}", "--random", "--input", "x=a.npy"], "give either --input"),
        (["run", "{model}", "--input", "x"], "expected NAME=FILE.npy"),
        (["run", "{model}", "--input", "x={tmp}/missing.npy"], "no such file"),
        (["run", "{model}", "--input", "x={tmp}/x64.npy"], "expected dtype float32, got float64"),
        (["run", "{tmp}/nothing.onnx", "--random"], "nothing.onnx: no such file"),
        (["inspect", "{tmp}/garbage.onnx"], "not a valid ONNX file"),
        (["inspect", "{model}", "--dim", "seq"], "expected NAME=SIZE"),
    ],
)
def test_errors_are_one_line_and_exit_2(args, message, model_file, tmp_path, capsys) -> None:
    np.save(tmp_path / "x64.npy", np.zeros((1, 4)))
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07garbage\xff\xff\xff")
    argv = [a.format(model=model_file, tmp=tmp_path) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_failed_run_writes_no_output(model_file, tmp_path) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((2, 9), np.float32))
    out_file = tmp_path / "o.npz"
    assert (
        main(["run", str(model_file), "--input", f"x={tmp_path / 'bad.npy'}", "-o", str(out_file)])
        == 2
    )
    assert not out_file.exists()


def test_unsupported_op_is_reported(tmp_path, capsys) -> None:
    text = """<ir_version: 8, opset_import: ["" : 17, "com.acme" : 1]>
    g (float[N, 2] x) => (float[N, 2] y) { t = Relu(x)  y = com.acme.Frobnicate(t) }"""
    path = tmp_path / "acme.onnx"
    onnx.save(onnx.parser.parse_model(text), path)
    assert main(["inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert "unsupported:" in out and "com.acme::Frobnicate (opset 1) is not implemented" in out
    assert main(["run", str(path), "--random"]) == 2
    err = capsys.readouterr().err
    assert "com.acme::Frobnicate (opset 1) is not implemented" in err and err.count("\n") == 1


def test_profile_prints_top_ops_fusions_and_memory(model_file, capsys) -> None:
    assert (
        main(["profile", str(model_file), "--batch", "4", "--repeat", "3", "--threads", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert "per run (median), 1 steps, optimization level 3, threads 1" in out
    assert "ai.ember::FusedGemm" in out and "onednn matmul" in out  # A is 2-D: a Gemm
    assert "MatMul+Add+Relu -> ai.ember::FusedGemm" in out
    assert "memory: no intermediate values" in out  # y is the one value, and outputs are not


def test_profile_at_level_0_fuses_nothing(model_file, capsys) -> None:
    assert main(["profile", str(model_file), "--level", "0", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "fused: nothing" in out and "3 steps" in out


def test_profile_and_run_errors_are_one_line(model_file, tmp_path, capsys) -> None:
    assert main(["profile", str(tmp_path / "missing.onnx")]) == 2
    assert "ember profile: error:" in capsys.readouterr().err
    assert main(["profile", str(model_file), "--input", "x=nope.npy"]) == 2
    assert "no such file 'nope.npy'" in capsys.readouterr().err
    assert main(["run", str(model_file), "--random", "--threads", "0"]) == 2
    assert "threads must be a positive int" in capsys.readouterr().err


def test_optimize_saves_a_model_ember_runs_to_the_same_outputs(tmp_path, capsys) -> None:
    from ember.zoo import load_eval, model_path

    out = tmp_path / "digits.opt.onnx"
    assert main(["optimize", str(model_path("digits_cnn")), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fused    2 x Conv+BatchNormalization+Relu -> ai.ember::FusedConv" in text
    assert "BatchNormalization                     2 -> 0" in text
    x = load_eval("digits_cnn").x[:16]
    import ember

    want = ember.load(model_path("digits_cnn"), exact=True).run({"input": x})["logits"]
    reloaded = ember.load(out, level=0)  # the file itself holds the fused graph
    assert {s.node.op_type for s in reloaded.plan().steps} >= {"FusedConv"}
    np.testing.assert_allclose(reloaded.run({"input": x})["logits"], want, rtol=1e-4, atol=1e-4)


def test_optimize_refuses_to_overwrite_its_input_and_names_bad_files(model_file, capsys) -> None:
    assert main(["optimize", str(model_file), "-o", str(model_file)]) == 2
    assert "would overwrite the input model" in capsys.readouterr().err
    assert main(["optimize", str(model_file.with_name("missing.onnx"))]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["optimize", str(model_file), "--level", "4"])
