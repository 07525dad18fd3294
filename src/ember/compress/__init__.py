"""Compression: quantization (static/dynamic int8 QDQ, weight-only int8/int4, fp16/bf16) as
graph -> graph functions, with calibration that streams over the user's data.

>>> from ember.compress import QuantConfig
>>> QuantConfig(mode="dynamic").mode
'dynamic'
"""

from ember.compress.calibrate import calibrate
from ember.compress.config import QuantConfig
from ember.compress.qdq import quantizable_nodes, quantize_graph

__all__ = ["QuantConfig", "calibrate", "quantizable_nodes", "quantize_graph"]
