"""The Model API: load from every source, run, outputs=, and the input checks."""

from __future__ import annotations

import re
import threading

import numpy as np
import onnx
import onnx.parser
import pytest
from tests.models import mlp, mlp_reference

import ember
from ember.errors import InputError


def x_of(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)


@pytest.mark.parametrize("source", ["path", "str", "bytes", "proto"])
def test_load_every_source(source: str, tmp_path) -> None:
    proto = mlp()
    path = tmp_path / "mlp.onnx"
    onnx.save(proto, path)
    arg = {"path": path, "str": str(path), "bytes": proto.SerializeToString(), "proto": proto}[
        source
    ]
    model = ember.load(arg)
    x = x_of(3)
    np.testing.assert_allclose(model.run({"x": x})["y"], mlp_reference(x), rtol=1e-6)


def test_signature_keeps_symbolic_dims() -> None:
    model = ember.load(mlp())
    assert [(s.name, s.dtype, s.shape) for s in model.inputs] == [("x", np.float32, ("batch", 4))]
    assert str(model.outputs[0]) == "y: float32[batch, 3]"


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_dynamic_batch(batch: int) -> None:
    x = x_of(batch)
    assert ember.load(mlp()).run({"x": x})["y"].shape == (batch, 3)


def test_outputs_may_name_intermediates() -> None:
    model = ember.load(mlp(), level=0)  # optimization fuses MatMul+Add+Relu; level 0 keeps `h`
    x = x_of(2)
    got = model.run({"x": x}, outputs=["h", "y"])
    assert list(got) == ["h", "y"]
    W = onnx.numpy_helper.to_array(mlp().graph.initializer[0])
    np.testing.assert_allclose(got["h"], x @ W, rtol=1e-6)


def test_unknown_output_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unknown output 'nope'"):
        ember.load(mlp()).run({"x": x_of(1)}, outputs=["nope"])


def test_exact_mode_matches_float64() -> None:
    x = x_of(4)
    got = ember.load(mlp(), exact=True).run({"x": x})["y"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, mlp_reference(x.astype(np.float64)), rtol=1e-6, atol=1e-7)


def test_run_from_many_threads() -> None:
    model = ember.load(mlp())
    errors: list[str] = []

    def work(seed: int) -> None:
        for i in range(20):
            x = x_of(seed + i + 1)
            if not np.allclose(model.run({"x": x})["y"], mlp_reference(x), rtol=1e-5):
                errors.append(f"thread {seed} iteration {i}")

    threads = [threading.Thread(target=work, args=(s * 100,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# Each bad input gets one clear line naming the problem: (inputs, words the user must read).
BAD_INPUTS = [
    ({}, "missing input 'x' (expected x: float32[batch, 4])"),
    (
        {"x": x_of(1), "extra": x_of(1)},
        "unknown input 'extra'; the model takes: x: float32[batch, 4]",
    ),
    ({"x": x_of(1).astype(np.float64)}, "input 'x': expected dtype float32, got float64"),
    (
        {"x": np.zeros((1, 1, 4), np.float32)},
        "input 'x': expected rank 2 (shape ['batch', 4]), got rank 3",
    ),
    (
        {"x": np.zeros((2, 5), np.float32)},
        "input 'x': expected shape ['batch', 4], got [2, 5] (axis 1 must be 4, got 5)",
    ),
    ({"x": "not an array"}, "input 'x': expected a NumPy array, got str"),
]


@pytest.mark.parametrize(("inputs", "message"), BAD_INPUTS)
def test_bad_inputs_say_expected_vs_got(inputs, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)) as info:
        ember.load(mlp()).run(inputs)
    assert "\n" not in str(info.value)


def test_symbolic_dims_must_agree_across_inputs() -> None:
    model = ember.load(
        onnx.parser.parse_model(
            """<ir_version: 8, opset_import: ["" : 17]>
            g (float[N, 3] a, float[N, 3] b) => (float[N, 3] c) { c = Add(a, b) }"""
        )
    )
    ok = model.run({"a": np.ones((2, 3), np.float32), "b": np.ones((2, 3), np.float32)})
    assert ok["c"].shape == (2, 3)
    with pytest.raises(
        InputError, match="input 'b': axis 0 is dim 'N' = 5, but input 'a' axis 0 set 'N' = 2"
    ):
        model.run({"a": np.ones((2, 3), np.float32), "b": np.ones((5, 3), np.float32)})


def test_initializer_inputs_are_optional_overrides() -> None:
    m = mlp()
    m.graph.input.append(onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [3]))
    model = ember.load(m)
    x = x_of(2)
    np.testing.assert_allclose(model.run({"x": x})["y"], mlp_reference(x), rtol=1e-6)
    zero_b = model.run({"x": x, "b": np.full(3, -100, np.float32)})["y"]
    assert not zero_b.any()
