"""load_samples / SampleSet: .npz files, dicts and iterables of batches, checked against the model's
inputs with errors that say where and what to do; batches are views, .npz members memory-mapped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ember
from ember.compress.data import SampleSet, load_samples
from ember.errors import ConfigError, InputError
from ember.ir import load_model
from ember.zoo import load_eval, model_path


def two_input_model(batch: int | str = "batch") -> onnx.ModelProto:
    """y = x @ w + bias(ids as float): inputs x float32[batch, 4], ids int64[batch, 3]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [batch, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])
    w = onnx.numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Cast", ["ids"], ["idf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["xw", "idf"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [x, ids], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def model() -> ember.Model:
    return ember.load(two_input_model())


def arrays(n: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((n, 4)).astype(np.float32),
        "ids": rng.integers(0, 5, (n, 3)).astype(np.int64),
    }


# --- good inputs -------------------------------------------------------------------------------


def test_dict_batches_cover_every_sample_once(model: ember.Model) -> None:
    data = arrays(10)
    samples = load_samples(data, model, batch_size=4)
    assert len(samples) == 10 and samples.n_batches == 3 and samples.labels is None
    batches = list(samples)
    assert [b["x"].shape[0] for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), data["x"])
    np.testing.assert_array_equal(np.concatenate([b["ids"] for b in batches]), data["ids"])
    # Re-iterable, and the batches are views of the caller's arrays, not copies.
    assert len(list(samples)) == 3
    assert np.shares_memory(batches[0]["x"], data["x"])
    assert all(set(b) == {"x", "ids"} for b in batches)


def test_npz_uncompressed_is_memory_mapped(model: ember.Model, tmp_path: Path) -> None:
    path = tmp_path / "calib.npz"
    data = arrays(9)
    labels = np.arange(9) % 3
    np.savez(path, **data, labels=labels)
    samples = load_samples(path, model, batch_size=5)
    first = next(iter(samples))
    assert isinstance(first["x"].base, np.memmap) or isinstance(first["x"], np.memmap)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in samples]), data["x"])
    np.testing.assert_array_equal(np.concatenate([b["ids"] for b in samples]), data["ids"])
    np.testing.assert_array_equal(samples.labels, labels)
    assert "labels" not in first  # batches hold the model's inputs only


def test_npz_compressed_and_fortran_order_read_correctly(
    model: ember.Model, tmp_path: Path
) -> None:
    data = arrays(7)
    path = tmp_path / "c.npz"
    np.savez_compressed(path, **data)
    got = np.concatenate([b["x"] for b in load_samples(path, model)])
    np.testing.assert_array_equal(got, data["x"])
    fortran = tmp_path / "f.npz"
    np.savez(fortran, x=np.asfortranarray(data["x"]), ids=np.asfortranarray(data["ids"]))
    got = np.concatenate([b["x"] for b in load_samples(fortran, model)])
    np.testing.assert_array_equal(got, data["x"])


def test_limit_caps_samples_and_labels(model: ember.Model) -> None:
    samples = load_samples({**arrays(10), "labels": np.arange(10)}, model, batch_size=4, limit=6)
    assert len(samples) == 6 and [b["x"].shape[0] for b in samples] == [4, 2]
    np.testing.assert_array_equal(samples.labels, np.arange(6))


def test_select_is_a_window(model: ember.Model) -> None:
    data = arrays(10)
    samples = load_samples({**data, "labels": np.arange(10)}, model, batch_size=3)
    part = samples.select(4, 9)
    assert len(part) == 5
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in part]), data["x"][4:9])
    np.testing.assert_array_equal(part.labels, np.arange(4, 9))
    np.testing.assert_array_equal(
        np.concatenate([b["x"] for b in part.select(1, 3)]), data["x"][5:7]
    )


def test_iterable_of_batches_used_as_given(model: ember.Model) -> None:
    data = arrays(10)
    batches = [
        {"x": data["x"][:6], "ids": data["ids"][:6], "labels": np.zeros(6, np.int64)},
        {"x": data["x"][6:], "ids": data["ids"][6:], "labels": np.ones(4, np.int64)},
    ]
    samples = load_samples(iter(batches), model, batch_size=100)  # a one-shot iterator
    assert len(samples) == 10
    for _ in range(2):  # re-iterable although the source was an iterator
        got = list(samples)
        assert [b["x"].shape[0] for b in got] == [6, 4] and all("labels" not in b for b in got)
    np.testing.assert_array_equal(samples.labels, [0] * 6 + [1] * 4)
    part = samples.select(4, 8)  # across the two batches
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in part]), data["x"][4:8])
    np.testing.assert_array_equal(part.labels, [0, 0, 1, 1])
    assert len(load_samples(batches, model, limit=3)) == 3


def test_zoo_eval_set_with_labels() -> None:
    ev = load_eval("digits_cnn")
    m = load_model(model_path("digits_cnn"))  # an onnx_ir Model works as well as ember.Model
    samples = load_samples({"input": ev.x, "labels": ev.y}, m, what="eval")
    assert len(samples) == 360 and samples.labels is not None and samples.labels.shape == (360,)


def test_fixed_batch_axis_reads_whole_batches() -> None:
    model = ember.load(two_input_model(batch=2))
    samples = load_samples({**arrays(7), "labels": np.arange(7)}, model, batch_size=32)
    assert len(samples) == 6  # three whole batches of 2; the 7th sample cannot fill one
    assert [b["x"].shape[0] for b in samples] == [2, 2, 2]
    assert samples.labels is not None and len(samples.labels) == 6


def test_optional_initializer_input_may_be_left_out() -> None:
    proto = two_input_model()
    # `ids` gets a default (an initializer with the same name), so the data may omit it.
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((1, 3), np.int64), "ids"))
    samples = load_samples({"x": arrays(3)["x"]}, load_model(proto))
    assert len(samples) == 3


# --- bad inputs --------------------------------------------------------------------------------


def test_missing_input_names_file_input_and_fix(model: ember.Model, tmp_path: Path) -> None:
    path = tmp_path / "calib.npz"
    np.savez(path, x=arrays()["x"])
    with pytest.raises(InputError) as e:
        load_samples(path, model)
    msg = str(e.value)
    assert f"calibration data {str(path)!r}" in msg
    assert "missing input 'ids'" in msg and "int64[batch, 3]" in msg
    assert "the data has arrays: x" in msg and "add an array named 'ids'" in msg


def test_wrong_name_is_reported_with_the_models_inputs(model: ember.Model) -> None:
    data = arrays()
    data["pixels"] = data.pop("x")
    with pytest.raises(
        InputError,
        match=r"array 'pixels' is not an input of the model; "
        r"the model takes x: float32\[batch, 4\], ids: int64\[batch, 3\]",
    ):
        load_samples(data, model, what="eval")


def test_zoo_npz_as_stored_is_rejected_clearly() -> None:
    # The zoo's files hold uint8 pixels under `x`/`y`: not the model's input names or dtype.
    with pytest.raises(
        InputError,
        match=r"array 'x' is not an input of the model; the model takes input: "
        r"float32\[batch, 1, 8, 8\].*rename it to the missing input 'input'",
    ):
        load_samples(
            model_path("digits_cnn").with_name("digits_cnn_eval.npz"),
            ember.load(model_path("digits_cnn")),
        )


def test_wrong_dtype_says_how_to_convert(model: ember.Model) -> None:
    data = arrays()
    data["x"] = data["x"].astype(np.float64)
    with pytest.raises(InputError) as e:
        load_samples(data, model)
    assert "array 'x' is float64, but the model's input 'x' is float32" in str(e.value)
    assert ".astype(np.float32)" in str(e.value)


def test_wrong_rank_and_static_dim(model: ember.Model) -> None:
    data = arrays()
    with pytest.raises(InputError, match=r"'x' has rank 3 .* has rank 2.*samples go along axis 0"):
        load_samples({**data, "x": data["x"][:, None, :]}, model)
    with pytest.raises(InputError, match=r"shape \[10, 5\].*needs axis 1 = 4, got 5"):
        load_samples({**data, "x": np.zeros((10, 5), np.float32)}, model)


def test_sample_counts_must_agree(model: ember.Model) -> None:
    data = arrays()
    with pytest.raises(InputError, match=r"different numbers of samples .*x: 10, ids: 9"):
        load_samples({**data, "ids": data["ids"][:9]}, model)
    with pytest.raises(InputError, match="9 labels for 10 samples"):
        load_samples({**data, "labels": np.arange(9)}, model)
    with pytest.raises(InputError, match="1-D integer array of class indices"):
        load_samples({**data, "labels": np.zeros(10, np.float32)}, model)


def test_empty_set_is_an_input_error(model: ember.Model, tmp_path: Path) -> None:
    empty = {k: v[:0] for k, v in arrays().items()}
    with pytest.raises(InputError, match=r"no samples \(an empty calibration set\)"):
        load_samples(empty, model)
    path = tmp_path / "empty.npz"
    np.savez(path, **empty)
    with pytest.raises(InputError, match=rf"{path.name}.*an empty calibration set"):
        load_samples(path, model)
    with pytest.raises(InputError, match="empty eval set"):
        load_samples([], model, what="eval")


def test_bad_files(model: ember.Model, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_samples(tmp_path / "nope.npz", model)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"not an \.npz file"):
        load_samples(junk, model)
    obj = tmp_path / "obj.npz"
    np.savez(obj, x=np.array([None, 1], dtype=object))
    with pytest.raises(InputError, match=r"'x' cannot be read.*Python objects"):
        load_samples(obj, model)


def test_bad_batches(model: ember.Model) -> None:
    data = arrays()
    with pytest.raises(InputError, match=r"batch 1: expected a dict"):
        load_samples([data, [1, 2]], model)
    with pytest.raises(InputError, match=r"batch 0: array 'x' is float64"):
        load_samples([{**data, "x": data["x"].astype(np.float64)}], model)
    with pytest.raises(InputError, match=r"batch 1: some batches have `labels`"):
        load_samples([{**data, "labels": np.arange(10)}, data], model)
    with pytest.raises(InputError, match="cannot read samples from int"):
        load_samples(3, model)  # type: ignore[arg-type]


def test_bad_options(model: ember.Model) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        load_samples(arrays(), model, batch_size=0)
    with pytest.raises(ConfigError, match="limit"):
        load_samples(arrays(), model, limit=0)


def test_sampleset_passes_through(model: ember.Model) -> None:
    samples = load_samples(arrays(), model)
    assert isinstance(samples, SampleSet)
    assert load_samples(samples, model) is samples
    assert len(load_samples(samples, model, limit=4)) == 4
