"""Every environment variable ember reads is declared here, once; nothing else reads os.environ."""

from __future__ import annotations

import os

#: Threads for NumPy/BLAS and native kernels when the caller does not say (0 = library default).
EMBER_THREADS: int = int(os.environ.get("EMBER_THREADS", "0") or 0)

#: Set to 0 to forbid the per-node fallback to onnx.reference for ops ember does not implement.
EMBER_ALLOW_FALLBACK: bool = os.environ.get("EMBER_ALLOW_FALLBACK", "1") != "0"

#: Set to 0 to run planned models step by step from Python instead of as one native Program
#: (runtime/program.py); for debugging and for measuring what the Program saves.
EMBER_PROGRAM: bool = os.environ.get("EMBER_PROGRAM", "1") != "0"

#: Set to 0 to run every batch whole, even where running a few samples at a time keeps a
#: per-sample model's activations in cache (runtime/batching.py).
EMBER_SPLIT_BATCH: bool = os.environ.get("EMBER_SPLIT_BATCH", "1") != "0"
