"""Compression, graph -> graph, measured on the user's data: quantization (static/dynamic int8 QDQ,
weight-only int8/int4, fp16/bf16, with calibration that streams over the data), pruning
(unstructured, and structured with the change propagated through the graph), low-rank
factorization, and distillation on a differentiable torch executor of the graph.

>>> from ember.compress import QuantConfig
>>> QuantConfig(mode="dynamic").mode
'dynamic'
"""

from ember.compress.calibrate import calibrate
from ember.compress.config import QuantConfig
from ember.compress.distill import DistillConfig, distill, gradual_prune
from ember.compress.lowrank import LowRankConfig, lowrank
from ember.compress.prune import PruneConfig, prune
from ember.compress.qdq import quantizable_nodes, quantize_graph

__all__ = [
    "DistillConfig",
    "LowRankConfig",
    "PruneConfig",
    "QuantConfig",
    "calibrate",
    "distill",
    "gradual_prune",
    "lowrank",
    "prune",
    "quantizable_nodes",
    "quantize_graph",
]
