"""ml ops (reference implementations)."""

from __future__ import annotations

import numpy as np

from ember.ops.registry import op
