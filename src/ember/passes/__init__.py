"""Graph optimization by level, like ONNX Runtime's: 0 nothing, 1 basic cleanup, 2 fusions into the
ai.ember ops, 3 channels-last layout for convolutional regions.

Every pass rewrites the model in place, keeps its inputs and outputs (names, types, layouts), leaves
it valid for ember.ir.verify, is idempotent, and preserves what the model computes. Fused nodes
record what they replaced in `metadata_props["ember.fused"]`.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common

from ember.errors import ConfigError
from ember.passes.basic import EliminatePassthroughPass, FoldConstantsPass, InferShapesPass
from ember.passes.fuse_conv import (
    FuseConvActivationPass,
    FuseConvAddPass,
    FuseConvBatchNormPass,
    FuseGemmActivationPass,
    ReduceMeanToGlobalAveragePoolPass,
)
from ember.passes.fuse_quant import FuseQuantPass
from ember.passes.layout import ChannelsLastPass

try:
    from ember.passes.fuse_transformer import TRANSFORMER_PASSES
except ImportError:  # fuse_transformer lands separately
    TRANSFORMER_PASSES = []

LEVELS = (0, 1, 2, 3)


def basic_passes() -> list[ir.passes.PassBase]:
    """Level 1, repeated until nothing changes: folding can make shapes static, which folds more."""
    return [
        ir.passes.PassManager(
            [
                InferShapesPass(),
                FoldConstantsPass(),
                EliminatePassthroughPass(),
                common.CommonSubexpressionEliminationPass(),
                common.RemoveUnusedNodesPass(),
            ],
            steps=8,
        )
    ]


def fusion_passes() -> list[ir.passes.PassBase]:
    """Level 2's own passes: fusions into the ai.ember ops."""
    return [
        # int8 islands first: the float fusions must not take a quantized Conv or MatMul.
        FuseQuantPass(),
        FuseConvBatchNormPass(),
        FuseConvAddPass(),
        FuseConvActivationPass(),
        FuseGemmActivationPass(),
        ReduceMeanToGlobalAveragePoolPass(),
        *TRANSFORMER_PASSES,
    ]


def level_passes(level: int) -> list[ir.passes.PassBase]:
    """The passes `optimize` runs at `level`, in order.

    >>> [type(p).__name__ for p in level_passes(3)][-3:]
    ['PassManager', 'ChannelsLastPass', 'PassManager']
    """
    _check_level(level)
    passes: list[ir.passes.PassBase] = []
    if level >= 1:
        passes += basic_passes()
    if level >= 2:
        passes += [*fusion_passes(), *basic_passes()]
    if level >= 3:
        passes += [ChannelsLastPass(), *basic_passes()]
    return passes


def optimize(model: ir.Model, level: int = 3) -> ir.Model:
    """Rewrite `model` in place into a faster equivalent at optimization `level` (0-3); returns it.

    >>> from ember.ir import load_model
    >>> from ember.zoo import model_path
    >>> m = optimize(load_model(model_path("digits_cnn")), level=2)
    >>> [n.op_type for n in m.graph]
    ['FusedConv', 'FusedConv', 'MaxPool', 'Flatten', 'Gemm']
    >>> m.graph[0].metadata_props["ember.fused"]
    'Conv+BatchNormalization+Relu'
    """
    passes = level_passes(level)
    if not passes:
        return model
    graph = model.graph
    declared = [(v.name, v.type, v.shape) for v in (*graph.inputs, *graph.outputs)]
    ir.passes.PassManager(passes)(model)
    # The signature is the caller's: whichever value now stands at an input or output, it is
    # declared as before (passes keep the names; an output's value may be a different one).
    for v, (name, type_, shape) in zip((*graph.inputs, *graph.outputs), declared, strict=True):
        assert v.name == name, f"a pass renamed graph input/output {name!r} to {v.name!r}"
        v.type, v.shape = type_, shape
    return model


def _check_level(level: int) -> None:
    if not isinstance(level, int) or isinstance(level, bool) or level not in LEVELS:
        raise ConfigError(f"optimization level must be 0, 1, 2 or 3, got {level!r}")


__all__ = ["LEVELS", "TRANSFORMER_PASSES", "level_passes", "optimize"]
