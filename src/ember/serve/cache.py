"""An LRU response cache keyed by a hash of model, version, requested outputs and input
bytes, dtypes and shapes.

Outputs are stored read-only, so a hit can never be mutated by the caller that got it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from ember.serve.protocol import tensor_to_bytes


def cache_key(
    model: str, version: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None
) -> bytes:
    """A 32-byte digest that changes with any input name, dtype, shape or byte."""
    h = hashlib.blake2b(digest_size=32)
    for part in (model, version, ",".join(outputs) if outputs is not None else "*"):
        h.update(part.encode())
        h.update(b"\0")
    for name in sorted(inputs):
        array = inputs[name]
        h.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        h.update(tensor_to_bytes(array))
    return h.digest()


class ResponseCache:
    """A bounded LRU of output dicts. Not thread-safe: used from the server's event loop only.

    >>> c = ResponseCache(2)
    >>> c.put(b"k", {"y": np.zeros(2)}); c.get(b"k")["y"].flags.writeable
    False
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[bytes, dict[str, np.ndarray]] = OrderedDict()

    def get(self, key: bytes) -> dict[str, np.ndarray] | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: bytes, outputs: Mapping[str, np.ndarray]) -> None:
        frozen = {}
        for name, array in outputs.items():
            array = np.array(
                array, copy=True
            )  # NOTE: a copy, so a batch's shared buffer is not pinned
            array.flags.writeable = False
            frozen[name] = array
        self._items[key] = frozen
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
