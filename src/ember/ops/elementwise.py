"""elementwise ops (reference implementations)."""

from __future__ import annotations

import numpy as np

from ember.ops.registry import op


@op
def Add_7(a, b):
    return a + b
