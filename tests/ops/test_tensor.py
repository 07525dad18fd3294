"""Tensor ops: shapes, slicing, padding, rearrangements and generators, against NumPy twins.

Ops run through `ember.load(model).run` where a model is easy to build, and are called directly for
legacy opset versions; every op is checked on odd shapes, edge attributes and its error messages.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import ember
from ember.errors import ExecutionError, UnsupportedError
from ember.ops import tensor
from ember.ops.registry import OpContext, lookup


def run(op_type, inputs, opset=21, *, n_outputs=1, **attrs):
    """One node through ember.load(...).run; `None` inputs are omitted. Returns every output."""
    names = [f"x{i}" if a is not None else "" for i, a in enumerate(inputs)]
    outs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, **attrs)
    given_inputs = [(n, a) for n, a in zip(names, inputs, strict=True) if a is not None]
    ins = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in given_inputs
    ]
    graph = helper.make_graph(
        [node], "g", ins, [helper.make_value_info(o, onnx.TypeProto()) for o in outs]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    result = ember.load(model).run(dict(given_inputs))
    return [result[o] for o in outs]


def run1(op_type, inputs, opset=21, **attrs):
    return run(op_type, inputs, opset, **attrs)[0]


def i64(*v):
    return np.array(v, dtype=np.int64)


CTX2 = OpContext(n_outputs=2)


# ---------------------------------------------------------------- version selection


@pytest.mark.parametrize(
    ("op_type", "opset", "fn"),
    [
        ("Reshape", 4, tensor.Reshape),
        ("Reshape", 13, tensor.Reshape_5),
        ("Reshape", 21, tensor.Reshape_14),
        ("Squeeze", 12, tensor.Squeeze),
        ("Squeeze", 13, tensor.Squeeze_13),
        ("Unsqueeze", 11, tensor.Unsqueeze),
        ("Unsqueeze", 13, tensor.Unsqueeze_13),
        ("Split", 11, tensor.Split_2),
        ("Split", 17, tensor.Split_13),
        ("Split", 18, tensor.Split_18),
        ("Slice", 9, tensor.Slice),
        ("Slice", 10, tensor.Slice_10),
        ("Pad", 1, tensor.Pad),
        ("Pad", 10, tensor.Pad_2),
        ("Pad", 17, tensor.Pad_11),
        ("Pad", 19, tensor.Pad_18),
        ("Shape", 14, tensor.Shape),
        ("Shape", 15, tensor.Shape_15),
        ("Dropout", 9, tensor.Dropout_7),
        ("Dropout", 11, tensor.Dropout_10),
        ("Dropout", 22, tensor.Dropout_12),
        ("Concat", 3, tensor.Concat),
        ("Concat", 13, tensor.Concat_4),
        ("Tile", 5, tensor.Tile),
        ("Tile", 13, tensor.Tile_6),
        ("OneHot", 10, tensor.OneHot_9),
        ("OneHot", 28, tensor.OneHot_11),
        ("Range", 26, tensor.Range_11),
        ("Range", 27, tensor.Range_27),
    ],
)
def test_lookup_picks_the_version_whose_semantics_apply(op_type, opset, fn) -> None:
    assert lookup(op_type, "", opset).fn is fn


# ---------------------------------------------------------------- Constant, Identity, Dropout


@pytest.mark.parametrize(
    ("attr", "value", "want"),
    [
        ("value_float", 1.5, np.array(1.5, np.float32)),
        ("value_floats", [1.0, 2.5], np.array([1.0, 2.5], np.float32)),
        ("value_int", -3, np.array(-3, np.int64)),
        ("value_ints", [4, 5, 6], i64(4, 5, 6)),
    ],
)
def test_constant_scalar_and_list_attributes_keep_spec_dtypes(attr, value, want) -> None:
    y = run1("Constant", [], **{attr: value})
    assert y.dtype == want.dtype and y.shape == want.shape
    np.testing.assert_array_equal(y, want)


def test_constant_tensor_and_strings() -> None:
    t = np.arange(6, dtype=np.float16).reshape(2, 3)
    y = run1("Constant", [], value=helper.make_tensor("t", TensorProto.FLOAT16, [2, 3], t.ravel()))
    assert y.dtype == np.float16 and y.shape == (2, 3)
    np.testing.assert_array_equal(y, t)
    assert tensor.Constant(value_ints=[]).shape == (0,)
    s = tensor.Constant(value_strings=["ab", "c"])
    assert s.dtype == object and s.tolist() == ["ab", "c"]
    assert tensor.Constant(value_string="hi").shape == ()
    # A STRING tensor attribute arrives as bytes; it comes out as str like every string tensor.
    assert tensor.Constant(value=np.array([b"x", b"yz"])).tolist() == ["x", "yz"]


def test_constant_sparse_value_arrives_dense() -> None:
    # The runtime densifies SPARSE_TENSOR attributes before the op sees them.
    # NOTE: onnx_ir cannot yet deserialize sparse attributes, so this is not run through a model.
    dense = np.array([[0, 5, 0], [0, 7, 0]], np.float32)
    np.testing.assert_array_equal(tensor.Constant(sparse_value=dense), dense)


def test_constant_needs_exactly_one_value() -> None:
    with pytest.raises(ValueError, match="exactly one value attribute, got 2"):
        tensor.Constant(value_int=1, value_float=2.0)
    with pytest.raises(ValueError, match="got 0"):
        tensor.Constant()


def test_identity_passes_tensors_sequences_and_empty_optionals() -> None:
    x = np.arange(3)
    seq = [x, x + 1]
    assert tensor.Identity(x) is x
    assert tensor.Identity(seq) is seq
    assert tensor.Identity(None) is None


def test_dropout_inference_is_identity_with_true_mask() -> None:
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    y, mask = run("Dropout", [x, np.array(0.7, np.float32)], 22, n_outputs=2)
    np.testing.assert_array_equal(y, x)
    assert mask.dtype == np.bool_ and mask.all()
    # Before opset 10 the mask had the input's type.
    _, mask7 = tensor.Dropout_7(x, ratio=0.3, ctx=CTX2)
    assert mask7.dtype == np.float32 and (mask7 == 1).all()


def test_dropout_training_with_seed_is_deterministic_and_scaled() -> None:
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    r, t = np.array(0.25, np.float32), np.array(True)
    y, mask = tensor.Dropout_12(x, r, t, seed=7, ctx=CTX2)
    want_mask = np.random.RandomState(7).uniform(0, 1, x.shape) >= 0.25
    np.testing.assert_array_equal(mask, want_mask)
    np.testing.assert_allclose(y, np.where(want_mask, x / 0.75, 0), rtol=1e-6)
    assert y.dtype == np.float32
    y2, _ = tensor.Dropout_12(x, r, t, seed=7, ctx=CTX2)
    np.testing.assert_array_equal(y, y2)
    # Ratio 0 in training mode keeps everything.
    y0, m0 = tensor.Dropout_12(x, np.array(0.0, np.float32), t, seed=7, ctx=CTX2)
    np.testing.assert_array_equal(y0, x)
    assert m0.all()


def test_dropout_training_rejects_ratio_one() -> None:
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        tensor.Dropout_12(
            np.ones(3, np.float32), np.array(1.0, np.float32), np.array(True), ctx=CTX2
        )


# ---------------------------------------------------------------- Reshape, Flatten, Squeeze, ...


def test_reshape_zero_copies_and_minus_one_infers() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert run1("Reshape", [x, i64(0, -1)]).shape == (2, 12)
    assert run1("Reshape", [x, i64(-1, 0, 2)]).shape == (4, 3, 2)
    assert run1("Reshape", [np.array([5.0]), i64()]).shape == ()


def test_reshape_allowzero_makes_a_zero_dimension() -> None:
    x = np.zeros((0, 3), np.float32)
    assert run1("Reshape", [x, i64(3, 0)], allowzero=1).shape == (3, 0)
    # Without allowzero a 0 copies the input dimension at its position.
    assert run1("Reshape", [np.zeros((2, 3)), i64(0, 3, 1)], 13).shape == (2, 3, 1)


def test_reshape_errors_name_shapes() -> None:
    x = np.arange(6)
    with pytest.raises(ValueError, match=r"cannot reshape \(6,\) \(6 elements\) into \[4\]"):
        tensor.Reshape_14(x, i64(4))
    with pytest.raises(ValueError, match="at most one -1"):
        tensor.Reshape_14(x, i64(-1, -1))
    with pytest.raises(ValueError, match="allowzero=1 forbids both 0 and -1"):
        tensor.Reshape_14(x, i64(0, -1), allowzero=1)
    with pytest.raises(ExecutionError, match="Reshape"):
        run1("Reshape", [x, i64(5)])


def test_reshape_opset1_takes_the_shape_attribute() -> None:
    assert tensor.Reshape(np.arange(6), shape=[3, -1]).shape == (3, 2)


@pytest.mark.parametrize(
    ("axis", "want"), [(0, (1, 60)), (2, (12, 5)), (3, (60, 1)), (-1, (12, 5))]
)
def test_flatten_axes(axis, want) -> None:
    assert run1("Flatten", [np.zeros((3, 4, 5), np.float32)], axis=axis).shape == want


def test_flatten_rejects_axis_beyond_rank() -> None:
    with pytest.raises(ValueError, match=r"axis=4 is out of range \[-3, 3\]"):
        tensor.Flatten(np.zeros((3, 4, 5)), axis=4)


def test_squeeze_forms() -> None:
    x = np.zeros((1, 3, 1, 5))
    assert run1("Squeeze", [x, i64(0, -2)]).shape == (3, 5)
    assert run1("Squeeze", [x, None]).shape == (3, 5)
    assert tensor.Squeeze(x, axes=[2]).shape == (1, 3, 5)
    assert tensor.Squeeze_13(x, np.zeros(0, np.int64)).shape == (3, 5)
    with pytest.raises(ValueError, match=r"axis 1 has size 3, not 1"):
        tensor.Squeeze_13(x, i64(1))


def test_unsqueeze_axes_index_the_output() -> None:
    x = np.zeros((3, 4))
    assert run1("Unsqueeze", [x, i64(2, 0)]).shape == (1, 3, 1, 4)  # unsorted
    assert run1("Unsqueeze", [x, i64(-1)]).shape == (3, 4, 1)
    assert tensor.Unsqueeze(x, axes=[0, 3]).shape == (1, 3, 4, 1)
    with pytest.raises(ValueError, match="repeat an axis"):
        tensor.Unsqueeze_13(x, i64(1, -3))
    with pytest.raises(ValueError, match=r"axis=5 is out of range for a rank-4"):
        tensor.Unsqueeze_13(x, i64(0, 5))


def test_transpose_default_and_errors() -> None:
    x = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(run1("Transpose", [x]), x.T)
    np.testing.assert_array_equal(run1("Transpose", [x], perm=[1, 2, 0]), x.transpose(1, 2, 0))
    with pytest.raises(ValueError, match="not a permutation"):
        tensor.Transpose(x, perm=[0, 0, 1])


def test_shape_start_end_clamp_and_size() -> None:
    x = np.zeros((2, 3, 4, 5))
    np.testing.assert_array_equal(run1("Shape", [x], start=1, end=-1), i64(3, 4))
    np.testing.assert_array_equal(run1("Shape", [x], start=-10), i64(2, 3, 4, 5))
    assert run1("Shape", [x], start=3, end=1).shape == (0,)
    assert tensor.Shape_15(np.array(1.0)).shape == (0,)
    size = run1("Size", [x])
    assert size.dtype == np.int64 and size.shape == () and size == 120


# ---------------------------------------------------------------- Concat, Split


def test_concat_negative_axis_and_empty_inputs() -> None:
    a, b = np.ones((2, 3), np.int32), np.zeros((2, 0), np.int32)
    y = run1("Concat", [a, b, a], axis=-1)
    assert y.shape == (2, 6) and y.dtype == np.int32
    with pytest.raises(ValueError, match=r"input 1 has shape \(3, 3\), incompatible"):
        tensor.Concat_4(a, np.ones((3, 3), np.int32), axis=1)


def test_split_18_uneven_num_outputs_and_split_input() -> None:
    x = np.arange(7)
    parts = run("Split", [x], 18, n_outputs=3, num_outputs=3)
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6]]
    parts = run("Split", [x, i64(1, 0, 6)], 18, n_outputs=3)
    assert [p.shape[0] for p in parts] == [1, 0, 6]
    with pytest.raises(ValueError, match=r"sizes \[1, 2\] do not add up to the axis size 7"):
        tensor.Split_13(x, i64(1, 2), ctx=CTX2)


def test_split_equal_parts_from_the_output_count() -> None:
    x = np.arange(12).reshape(2, 6)
    parts = tensor.Split_13(x, axis=-1, ctx=OpContext(n_outputs=3))
    assert [p.shape for p in parts] == [(2, 2)] * 3
    parts = tensor.Split_2(x, axis=1, split=[4, 2], ctx=CTX2)
    assert [p.shape for p in parts] == [(2, 4), (2, 2)]


# ---------------------------------------------------------------- Slice


def slice_twin(n: int, start: int, end: int, step: int) -> list[int]:
    """The indices the spec's Slice picks on an axis of n: normalize, clamp, then walk."""
    start, end = start + n if start < 0 else start, end + n if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return list(range(start, end, step))


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(-12, 12),
    end=st.integers(-12, 12),
    step=st.integers(-4, 4).filter(bool),
)
def test_slice_matches_the_spec_clamping(start, end, step) -> None:
    x = np.arange(7 * 3).reshape(7, 3)
    got = tensor.Slice_10(x, i64(start), i64(end), i64(0), i64(step))
    np.testing.assert_array_equal(got, x[slice_twin(7, start, end, step)])


def test_slice_backwards_from_before_the_start_keeps_element_zero() -> None:
    # NOTE: the spec (and onnxruntime) clamp start to [0, n-1] when stepping backwards, so a start
    # below -n still yields element 0, where Python's x[-8:-8:-1] is empty.
    x = np.arange(7)
    np.testing.assert_array_equal(tensor.Slice_10(x, i64(-8), i64(-8), i64(0), i64(-1)), [0])


def test_slice_huge_bounds_defaults_and_negative_axes() -> None:
    x = np.arange(60).reshape(3, 4, 5)
    big = np.iinfo(np.int64).max
    np.testing.assert_array_equal(run1("Slice", [x, i64(1, -big), i64(big, big)]), x[1:, :])
    np.testing.assert_array_equal(
        run1("Slice", [x, i64(-1), i64(-big), i64(-1), i64(-2)]), x[:, :, ::-2]
    )
    np.testing.assert_array_equal(tensor.Slice(x, starts=[1], ends=[3], axes=[1]), x[:, 1:3])


def test_slice_errors() -> None:
    x = np.arange(10)
    with pytest.raises(ValueError, match="steps cannot be 0"):
        tensor.Slice_10(x, i64(0), i64(5), None, i64(0))
    with pytest.raises(ValueError, match="appears twice"):
        tensor.Slice_10(np.zeros((2, 2)), i64(0, 0), i64(1, 1), i64(0, -2))


# ---------------------------------------------------------------- Expand, Tile, Pad


def test_expand_broadcasts_both_ways_and_returns_a_writable_copy() -> None:
    x = np.arange(3, dtype=np.float32).reshape(3, 1)
    y = run1("Expand", [x, i64(2, 1, 4)])
    assert y.shape == (2, 3, 4) and y.flags.writeable
    np.testing.assert_array_equal(y, np.broadcast_to(x, (2, 3, 4)))
    assert tensor.Expand_8(np.zeros((2, 5)), i64(1, 1)).shape == (2, 5)
    with pytest.raises(ValueError, match=r"\(3, 1\) cannot broadcast with \[2, 4\]"):
        tensor.Expand_8(x, i64(2, 4))


def test_tile_repeats_and_errors() -> None:
    x = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(run1("Tile", [x, i64(2, 0)]), np.tile(x, (2, 0)))
    np.testing.assert_array_equal(tensor.Tile(x, np.array(3), np.array(1)), np.tile(x, (1, 3)))
    with pytest.raises(ValueError, match="repeats has 1 values for a rank-2 input"):
        tensor.Tile_6(x, i64(2))


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes_match_numpy(mode) -> None:
    x = np.arange(20, dtype=np.float32).reshape(4, 5)
    pads = i64(1, 2, 3, 0)  # (begin0, begin1, end0, end1)
    y = run1("Pad", [x, pads], 19, mode=mode)
    np.testing.assert_array_equal(y, np.pad(x, [(1, 3), (2, 0)], mode=mode))


def test_pad_constant_value_axes_and_negative_pads() -> None:
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    y = run1("Pad", [x, i64(1, 1), np.array(9, np.int32), i64(-1)], 18)
    np.testing.assert_array_equal(y, np.pad(x, [(0, 0), (1, 1)], constant_values=9))
    # Negative pads crop.
    np.testing.assert_array_equal(tensor.Pad_11(x, i64(-1, 0, 0, -2)), x[1:, :2])
    np.testing.assert_array_equal(
        tensor.Pad_2(x, pads=[0, 1, 0, 0], value=1.5),
        np.pad(x, [(0, 0), (1, 0)], constant_values=1),
    )


def test_pad_errors() -> None:
    x = np.zeros((2, 2))
    with pytest.raises(UnsupportedError, match="Pad mode 'mirror'"):
        tensor.Pad_11(x, i64(0, 0, 0, 0), mode="mirror")
    with pytest.raises(ValueError, match="3 pads for 2 axes; need 4"):
        tensor.Pad_11(x, i64(0, 0, 0))


def test_center_crop_pad_odd_differences_put_the_extra_at_the_end() -> None:
    x = np.arange(5 * 4, dtype=np.float32).reshape(5, 4)
    y = run1("CenterCropPad", [x, i64(2, 7)], 18)
    assert y.shape == (2, 7)
    np.testing.assert_array_equal(y[:, 1:5], x[1:3])  # crop 5 -> 2 starts at 1; pad 4 -> 7 at 1
    assert (y[:, [0, 5, 6]] == 0).all()
    y = run1("CenterCropPad", [np.zeros((2, 6, 3)), i64(4)], 18, axes=[-2])
    assert y.shape == (2, 4, 3)


# ---------------------------------------------------------------- generators


def test_constant_of_shape() -> None:
    y = run1("ConstantOfShape", [i64(2, 3)])
    assert y.dtype == np.float32 and y.shape == (2, 3) and (y == 0).all()
    v = helper.make_tensor("v", TensorProto.INT32, [1], [7])
    y = run1("ConstantOfShape", [i64()], value=v)
    assert y.dtype == np.int32 and y.shape == () and y == 7
    with pytest.raises(ValueError, match=r"dimensions must be >= 0, got \[2, -1\]"):
        tensor.ConstantOfShape_9(i64(2, -1))


@pytest.mark.parametrize(
    ("start", "limit", "delta"),
    [(1.0, 5.0, 2.0), (10, 6, -3), (0.5, 0.5, 1.0), (3, 10, -1), (0.0, 1.0, 0.1)],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32, np.int64])
def test_range_matches_arange(start, limit, delta, dtype) -> None:
    if np.dtype(dtype).kind == "i" and not all(
        float(v).is_integer() for v in (start, limit, delta)
    ):
        pytest.skip("integer range needs integer bounds")
    s, lim, d = (np.array(v, dtype=dtype) for v in (start, limit, delta))
    y = run1("Range", [s, lim, d], 27)
    want = np.arange(float(s), float(lim), float(d)).astype(dtype)
    assert y.dtype == dtype
    np.testing.assert_allclose(y.astype(np.float64), want.astype(np.float64), rtol=1e-3)


def test_range_rejects_zero_delta() -> None:
    with pytest.raises(ValueError, match="delta cannot be 0"):
        tensor.Range_11(np.array(0), np.array(5), np.array(0))


def test_eyelike_dtype_and_offsets() -> None:
    x = np.zeros((3, 5), np.int32)
    y = run1("EyeLike", [x], 22, k=2)
    np.testing.assert_array_equal(y, np.eye(3, 5, k=2, dtype=np.int32))
    y = run1("EyeLike", [x], 22, k=-1, dtype=TensorProto.DOUBLE)
    assert y.dtype == np.float64 and y[1, 0] == 1
    with pytest.raises(ValueError, match="must be 2-D"):
        tensor.EyeLike_9(np.zeros(3))


@pytest.mark.parametrize("k", [-4, -1, 0, 2, 7])
@pytest.mark.parametrize("upper", [0, 1])
def test_trilu_batched_matches_numpy(k, upper) -> None:
    x = np.arange(2 * 3 * 5).reshape(2, 3, 5)
    y = run1("Trilu", [x, np.array(k, np.int64)], 14, upper=upper)
    np.testing.assert_array_equal(y, np.triu(x, k) if upper else np.tril(x, k))


# ---------------------------------------------------------------- rearrangements


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_space_to_depth_and_back_round_trip(mode) -> None:
    x = np.arange(2 * 3 * 4 * 6, dtype=np.float32).reshape(2, 3, 4, 6)
    d = run1("SpaceToDepth", [x], 28, blocksize=2, mode=mode)
    assert d.shape == (2, 12, 2, 3)
    np.testing.assert_array_equal(run1("DepthToSpace", [d], 13, blocksize=2, mode=mode), x)


def test_depth_to_space_dcr_layout() -> None:
    # DCR: output[n, c, h*b + i, w*b + j] = input[n, (i*b + j)*C' + c, h, w]
    x = np.arange(8).reshape(1, 8, 1, 1)
    y = tensor.DepthToSpace(x, blocksize=2)
    np.testing.assert_array_equal(y[0, 0], [[0, 2], [4, 6]])
    np.testing.assert_array_equal(
        tensor.DepthToSpace(x, blocksize=2, mode="CRD")[0, 0], [[0, 1], [2, 3]]
    )
    with pytest.raises(ValueError, match="channels 8 are not divisible by blocksize"):
        tensor.DepthToSpace(x, blocksize=3)


def test_compress_short_condition_and_flattening() -> None:
    x = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(run1("Compress", [x, np.array([True, False])], axis=0), x[:1])
    np.testing.assert_array_equal(
        run1("Compress", [x, np.array([0, 1, 1], bool)]), np.array([1, 2])
    )
    with pytest.raises(ValueError, match="condition has 5 values but the axis has 4"):
        tensor.Compress_9(x, np.ones(5, bool), axis=-1)


def test_reverse_sequence_per_batch_lengths() -> None:
    x = np.arange(4 * 3).reshape(4, 3)  # (T, B)
    y = run1("ReverseSequence", [x, i64(4, 0, 2)], 10, time_axis=0, batch_axis=1)
    want = x.copy()
    want[:, 0] = x[::-1, 0]
    want[:2, 2] = x[1::-1, 2]
    np.testing.assert_array_equal(y, want)
    yb = tensor.ReverseSequence_10(x.T, i64(4, 0, 2), batch_axis=0, time_axis=1)
    np.testing.assert_array_equal(yb, want.T)
    with pytest.raises(ValueError, match=r"sequence_lens must be in \[0, 4\]"):
        tensor.ReverseSequence_10(x, i64(5, 0, 0))


def test_one_hot_axis_negatives_and_out_of_range() -> None:
    idx = np.array([[0, -1], [5, 2]], np.int64)
    vals = np.array([1, 9], np.int32)
    y = run1("OneHot", [idx, np.array(3, np.int64), vals], 11, axis=1)
    assert y.shape == (2, 3, 2) and y.dtype == np.int32
    np.testing.assert_array_equal(y[0, :, 0], [9, 1, 1])
    np.testing.assert_array_equal(y[0, :, 1], [1, 1, 9])  # -1 wraps to 2 since opset 11
    np.testing.assert_array_equal(y[1, :, 0], [1, 1, 1])  # 5 is out of range: all off
    # Opset 9 does not wrap negatives; float indices are truncated.
    y9 = tensor.OneHot_9(np.array([-1.0, 1.7]), np.array([3.0]), vals)
    np.testing.assert_array_equal(y9, [[1, 1, 1], [1, 9, 1]])


def test_nonzero_including_scalars() -> None:
    x = np.array([[0, 2], [3, 0]])
    np.testing.assert_array_equal(run1("NonZero", [x], 13), i64(0, 1, 1, 0).reshape(2, 2))
    assert tensor.NonZero_9(np.array(5)).shape == (0, 1)
    assert tensor.NonZero_9(np.zeros((2, 3))).shape == (2, 0)


def test_unique_sorted_and_unsorted_outputs_reconstruct_the_input() -> None:
    x = np.array([2, 1, 1, 3, 4, 3], np.float32)
    ys, idx, inv, cnt = run("Unique", [x], 11, n_outputs=4)
    np.testing.assert_array_equal(ys, [1, 2, 3, 4])
    np.testing.assert_array_equal(idx, [1, 0, 3, 4])
    np.testing.assert_array_equal(cnt, [2, 1, 2, 1])
    np.testing.assert_array_equal(ys[inv], x)
    yu, idx, inv, cnt = run("Unique", [x], 11, n_outputs=4, sorted=0)
    np.testing.assert_array_equal(yu, [2, 1, 3, 4])
    np.testing.assert_array_equal(idx, [0, 1, 3, 4])
    np.testing.assert_array_equal(inv, [0, 1, 1, 2, 3, 2])
    np.testing.assert_array_equal(cnt, [1, 2, 2, 1])
    assert all(a.dtype == np.int64 for a in (idx, inv, cnt))


def test_unique_along_an_axis_unsorted() -> None:
    x = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    y, idx, inv, cnt = tensor.Unique_11(x, axis=0, sorted=0, ctx=OpContext(n_outputs=4))
    np.testing.assert_array_equal(y, [[1, 0], [0, 1], [0, 0]])
    np.testing.assert_array_equal(idx, [0, 1, 3])
    np.testing.assert_array_equal(y[inv], x)
    np.testing.assert_array_equal(cnt, [2, 1, 1])
