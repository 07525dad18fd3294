"""Sequence and optional ops: direct calls for the list algebra, the runtime for SequenceMap."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import ember
from ember.ops.sequence import (
    ConcatFromSequence_11,
    Optional_15,
    OptionalGetElement_15,
    OptionalHasElement_15,
    SequenceAt_11,
    SequenceConstruct_11,
    SequenceEmpty_11,
    SequenceErase_11,
    SequenceInsert_11,
    SequenceLength_11,
    SplitToSequence_11,
)

A, B, C = np.float32([1]), np.float32([2, 3]), np.float32([4, 5, 6])


def i64(v):
    return np.array(v, dtype=np.int64)


def test_construct_length_at():
    seq = SequenceConstruct_11(A, B, C)
    assert SequenceLength_11(seq) == 3 and SequenceLength_11(seq).dtype == np.int64
    assert SequenceAt_11(seq, i64(1)) is B
    assert SequenceAt_11(seq, np.int32(-1)) is C
    assert SequenceLength_11(SequenceEmpty_11()) == 0


def test_construct_rejects_mixed_dtypes():
    with pytest.raises(TypeError, match="must share one dtype"):
        SequenceConstruct_11(A, np.int64([1]))


@pytest.mark.parametrize(
    ("position", "expected"), [(None, [A, B, C]), (0, [C, A, B]), (-1, [A, C, B]), (2, [A, B, C])]
)
def test_insert_positions(position, expected):
    seq = [A, B]
    out = SequenceInsert_11(seq, C, None if position is None else i64(position))
    assert [x.tolist() for x in out] == [x.tolist() for x in expected]
    assert seq == [A, B]  # the input list is not mutated


def test_insert_out_of_range_and_bad_dtype():
    with pytest.raises(ValueError, match=r"position 3 is out of range \[-2, 2\]"):
        SequenceInsert_11([A, B], C, i64(3))
    with pytest.raises(TypeError, match="tensor dtype int64 differs from the sequence's float32"):
        SequenceInsert_11([A], np.int64([1]))
    with pytest.raises(TypeError, match="position must be an integer scalar"):
        SequenceInsert_11([A], C, np.float32(0))


def test_at_out_of_range():
    with pytest.raises(ValueError, match=r"SequenceAt: position 2 is out of range \[-2, 1\]"):
        SequenceAt_11([A, B], i64(2))
    with pytest.raises(TypeError, match="needs a sequence"):
        SequenceAt_11(A, i64(0))


def test_erase():
    seq = [A, B, C]
    assert SequenceErase_11(seq) == [A, B]
    assert SequenceErase_11(seq, i64(0)) == [B, C]
    assert SequenceErase_11(seq, i64(-2)) == [A, C]
    assert seq == [A, B, C]
    with pytest.raises(ValueError, match="cannot erase from an empty sequence"):
        SequenceErase_11([])


def test_concat_from_sequence():
    x = [np.ones((2, 3)), np.zeros((2, 3))]
    assert ConcatFromSequence_11(x, axis=0).shape == (4, 3)
    assert ConcatFromSequence_11(x, axis=-1).shape == (2, 6)
    assert ConcatFromSequence_11(x, axis=0, new_axis=1).shape == (2, 2, 3)
    assert ConcatFromSequence_11(x, axis=2, new_axis=1).shape == (2, 3, 2)
    assert ConcatFromSequence_11(x, axis=-1, new_axis=1).shape == (2, 3, 2)
    with pytest.raises(ValueError, match="axis=2 is out of range for a rank-2 tensor"):
        ConcatFromSequence_11(x, axis=2)
    with pytest.raises(ValueError, match="non-empty sequence"):
        ConcatFromSequence_11([], axis=0)


def test_split_to_sequence():
    x = np.arange(14).reshape(7, 2)
    assert [p.shape for p in SplitToSequence_11(x)] == [(1, 2)] * 7
    assert [p.shape for p in SplitToSequence_11(x, axis=1, keepdims=0)] == [(7,)] * 2
    assert [p.shape[0] for p in SplitToSequence_11(x, i64(3))] == [3, 3, 1]
    assert [p.shape[0] for p in SplitToSequence_11(x, i64([2, 0, 5]))] == [2, 0, 5]
    np.testing.assert_array_equal(np.concatenate(SplitToSequence_11(x, i64(2))), x)
    # keepdims only matters when split is omitted
    assert SplitToSequence_11(x, i64([7]), keepdims=0)[0].shape == (7, 2)


def test_split_to_sequence_bad_split():
    x = np.arange(6)
    with pytest.raises(
        ValueError, match=r"split \[2, 2\] must be non-negative and sum to the axis length 6"
    ):
        SplitToSequence_11(x, i64([2, 2]))
    with pytest.raises(ValueError, match="split must be positive, got 0"):
        SplitToSequence_11(x, i64(0))


def test_optionals():
    assert Optional_15() is None
    assert Optional_15(A) is A
    assert not OptionalHasElement_15(None) and OptionalHasElement_15(None).dtype == np.bool_
    assert OptionalHasElement_15([])  # an empty sequence is still a value
    assert OptionalGetElement_15([A]) == [A]
    with pytest.raises(ValueError, match="the optional is empty"):
        OptionalGetElement_15(None)


def test_optional_has_element_on_an_absent_input():
    assert not OptionalHasElement_15()


# ----------------------------------------------------------------------------------------------
# SequenceMap through the runtime
# ----------------------------------------------------------------------------------------------

F = TensorProto.FLOAT
seq_vi = helper.make_tensor_sequence_value_info


def sequence_map_model(extra_is_sequence: bool):
    body = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Shape", ["a"], ["shape"])],
        "body",
        [helper.make_tensor_value_info("a", F, None), helper.make_tensor_value_info("b", F, None)],
        [
            helper.make_tensor_value_info("sum", F, None),
            helper.make_tensor_value_info("shape", TensorProto.INT64, None),
        ],
    )
    node = helper.make_node("SequenceMap", ["xs", "extra"], ["sums", "shapes"], body=body)
    extra = (
        seq_vi("extra", F, None)
        if extra_is_sequence
        else helper.make_tensor_value_info("extra", F, None)
    )
    graph = helper.make_graph(
        [node],
        "g",
        [seq_vi("xs", F, None), extra],
        [seq_vi("sums", F, None), seq_vi("shapes", TensorProto.INT64, None)],
    )
    return ember.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_sequence_map_with_a_tensor_and_a_sequence():
    xs = [np.float32([1, 2]), np.float32([3, 4, 5])]
    out = sequence_map_model(False).run({"xs": xs, "extra": np.float32(10)})
    assert [s.tolist() for s in out["sums"]] == [[11, 12], [13, 14, 15]]
    assert [s.tolist() for s in out["shapes"]] == [[2], [3]]
    out = sequence_map_model(True).run({"xs": xs, "extra": [np.float32(1), np.float32(2)]})
    assert [s.tolist() for s in out["sums"]] == [[2, 3], [5, 6, 7]]


def test_sequence_map_of_an_empty_sequence():
    out = sequence_map_model(False).run({"xs": [], "extra": np.float32(1)})
    assert out["sums"] == [] and out["shapes"] == []


def test_sequence_map_length_mismatch():
    with pytest.raises(ember.errors.ExecutionError, match="additional input 0 has 1 elements"):
        sequence_map_model(True).run({"xs": [A, B], "extra": [A]})
