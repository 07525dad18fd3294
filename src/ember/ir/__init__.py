"""The graph layer: load/save ONNX as onnx_ir Models, infer shapes, verify structure.

Knows nothing about kernels or devices. ember has no IR of its own: it is onnx_ir throughout.
"""

from ember.ir.load import ModelSource, infer_shapes, load_model, save_model
from ember.ir.verify import describe, subgraph_reads, topological_order, verify

__all__ = [
    "ModelSource",
    "describe",
    "infer_shapes",
    "load_model",
    "save_model",
    "subgraph_reads",
    "topological_order",
    "verify",
]
