"""Loading and saving: every source, external data, atomic saves, and the errors for bad files."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest
from tests.models import mlp, mlp_reference

import ember
from ember.errors import ModelError
from ember.ir import infer_shapes, load_model, save_model


def test_external_data_is_found_next_to_the_file(tmp_path) -> None:
    proto = mlp()
    path = tmp_path / "ext.onnx"
    onnx.save(
        proto,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.weights",
        size_threshold=0,
    )
    assert (tmp_path / "ext.weights").exists()
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(ember.load(path).run({"x": x})["y"], mlp_reference(x), rtol=1e-6)


def test_missing_external_data_file_is_named(tmp_path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(mlp(), path, save_as_external_data=True, location="w.bin", size_threshold=0)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(ModelError, match=r"external file 'w\.bin', which is missing"):
        ember.load(path)


def test_save_round_trip(tmp_path) -> None:
    model = load_model(mlp())
    out = tmp_path / "sub" / "saved.onnx"
    save_model(model, out)
    assert [p.name for p in out.parent.iterdir()] == ["saved.onnx"]  # no temp file left behind
    x = np.ones((3, 4), np.float32)
    np.testing.assert_allclose(ember.load(out).run({"x": x})["y"], mlp_reference(x), rtol=1e-6)


def test_save_with_external_data(tmp_path) -> None:
    out = tmp_path / "big.onnx"
    save_model(load_model(mlp()), out, external_data=True)
    assert (tmp_path / "big.onnx.data").exists()
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(ember.load(out).run({"x": x})["y"], mlp_reference(x), rtol=1e-6)


def test_shape_inference_keeps_symbolic_dims() -> None:
    model = infer_shapes(load_model(mlp()))
    values = {n.outputs[0].name: n.outputs[0] for n in model.graph}
    assert str(values["h"].shape) == "[batch,3]"
    assert values["h"].dtype == ir.DataType.FLOAT


# Bad files: each gets one clear line that names the file and the problem.
def test_truncated_file(tmp_path) -> None:
    path = tmp_path / "cut.onnx"
    data = mlp().SerializeToString()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ModelError, match=r"cut\.onnx: not a valid ONNX file .* truncated or corrupt"
    ):
        ember.load(path)


def test_corrupt_file(tmp_path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00\xffthis is not protobuf\xff" * 10)
    with pytest.raises(ModelError, match=r"junk\.onnx: not a"):
        ember.load(path)


def test_empty_file_is_not_a_model(tmp_path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match="not an ONNX model"):
        ember.load(path)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        ember.load(tmp_path / "nope.onnx")


def test_wrong_source_type() -> None:
    with pytest.raises(ModelError, match="cannot load a model from int"):
        ember.load(42)  # type: ignore[arg-type]


def test_sparse_constant_is_densified_without_touching_the_callers_proto() -> None:
    sparse = onnx.helper.make_sparse_tensor(
        onnx.numpy_helper.from_array(np.array([5.0, 7.0], np.float32), "v"),
        onnx.numpy_helper.from_array(np.array([1, 4], np.int64), "i"),
        [2, 3],
    )
    node = onnx.helper.make_node("Constant", [], ["y"], sparse_value=sparse)
    graph = onnx.helper.make_graph(
        [node], "g", [], [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])]
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    before = proto.SerializeToString()
    y = ember.load(proto).run({})["y"]
    np.testing.assert_array_equal(y, [[0, 5, 0], [0, 7, 0]])
    assert proto.SerializeToString() == before


def test_loaded_weights_are_numpy_arrays_of_their_own() -> None:
    """Weights are copied out of the parsed proto once: it is freed, and .numpy() copies nothing."""
    from ember.zoo import model_path

    model = load_model(model_path("digits_cnn"))
    tensors = [v.const_value for v in model.graph.initializers.values()]
    assert tensors and all(type(t) is ir.Tensor for t in tensors)
    assert all(t.numpy() is t.numpy() for t in tensors)


def test_loading_an_ir_model_leaves_the_callers_model_unchanged() -> None:
    from tests.models import small_resnet

    model = ir.serde.deserialize_model(small_resnet())
    ops_before = [n.op_type for n in model.graph]
    weights_before = {k: v.const_value.numpy().copy() for k, v in model.graph.initializers.items()}
    fast = ember.load(model)  # level 3: fuses, folds BatchNormalization, goes channels-last
    assert [n.op_type for n in model.graph] == ops_before
    for name, w in weights_before.items():
        np.testing.assert_array_equal(model.graph.initializers[name].const_value.numpy(), w)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(
        fast.run({"x": x})["y"], ember.load(model, exact=True).run({"x": x})["y"], rtol=1e-4
    )
