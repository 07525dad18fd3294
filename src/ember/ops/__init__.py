"""The meaning of every op: one NumPy reference function per ONNX op type (and opset version).

This package is the executable spec and the oracle for every faster backend; it knows nothing about
speed. Importing it registers every op module below (explicitly, never by scanning).
"""

from ember.ops import (  # noqa: F401  (imported to register their ops)
    activation,
    attention,
    cast,
    control,
    conv,
    detection,
    elementwise,
    fused,
    generate,
    index,
    linalg,
    loss,
    ml,
    norm,
    pool,
    quant,
    reduce,
    resize,
    rnn,
    sequence,
    signal,
    tensor,
    text,
    training,
)
from ember.ops.registry import OpContext, lookup, op, registered

__all__ = ["OpContext", "lookup", "op", "registered"]
