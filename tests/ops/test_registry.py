"""The registry: version lookup, loud misses, and ember's coverage of the ops real models use."""

from __future__ import annotations

import pytest

from ember.errors import UnsupportedError
from ember.ops import lookup, registered
from ember.ops.registry import op

# Every op the engine-foundation issue names: ember implements each itself, never via the fallback.
REQUIRED = """
Abs Neg Reciprocal Sqrt Exp Log Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh Ceil
Floor Round Sign Erf IsNaN IsInf Add Sub Mul Div Pow Mod Max Min Sum Mean Equal Greater
GreaterOrEqual Less LessOrEqual And Or Xor Not BitShift BitwiseAnd BitwiseOr BitwiseXor
BitwiseNot Relu LeakyRelu PRelu Elu Selu Celu Sigmoid HardSigmoid HardSwish Tanh Softplus
Softsign Gelu Mish Clip Conv ConvTranspose MaxPool AveragePool LpPool GlobalAveragePool
GlobalMaxPool GlobalLpPool BatchNormalization InstanceNormalization LayerNormalization
GroupNormalization LRN MatMul Gemm Einsum Softmax LogSoftmax ReduceSum ReduceMean ReduceMax
ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare ArgMax
ArgMin TopK Reshape Flatten Squeeze Unsqueeze Transpose Concat Split Slice Gather GatherElements
GatherND Scatter ScatterElements ScatterND Expand Tile Pad Shape Size ConstantOfShape Range
Where NonZero OneHot CumSum Trilu DepthToSpace SpaceToDepth Cast CastLike Resize RNN LSTM GRU
QuantizeLinear DequantizeLinear DynamicQuantizeLinear MatMulInteger ConvInteger QLinearConv
QLinearMatMul If Loop Scan NonMaxSuppression Attention Constant Identity Dropout
""".split()


@pytest.mark.parametrize("op_type", REQUIRED)
def test_required_op_is_ember_own(op_type: str) -> None:
    assert ("", op_type) in registered(), f"{op_type} must have an ember reference implementation"


def test_attention_exists_at_opset_23() -> None:
    assert lookup("Attention", "", 23).since <= 23


def test_lookup_takes_largest_version_not_above_opset() -> None:
    versions = [r.since for r in registered()[("", "Softmax")]]
    assert 13 in versions and 1 in versions
    assert lookup("Softmax", "", 12).since < 13
    assert lookup("Softmax", "", 21).since == 13


def test_miss_names_what_exists() -> None:
    with pytest.raises(
        UnsupportedError,
        match=r"op Attention at opset 11 is not implemented; ember has versions 23",
    ):
        lookup("Attention", "", 11)
    with pytest.raises(UnsupportedError, match=r"op com\.acme::Nope .* not implemented"):
        lookup("Nope", "com.acme", 1)


def test_bad_op_names_and_duplicates_are_refused() -> None:
    with pytest.raises(ValueError, match="is not OpType or OpType_<version>"):
        op(lambda x: x)

    @op(domain="test.registry")
    def Thing_3(x):
        return x

    with pytest.raises(ValueError, match="Thing version 3 registered twice"):
        op(domain="test.registry")(Thing_3)
