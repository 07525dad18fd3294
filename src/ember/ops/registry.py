"""The op registry: maps (domain, op type, opset version) to a NumPy reference function.

An op is a plain function named after its ONNX op type, with a suffix naming the opset version in
which its current semantics began (`Softmax_13`). `@op` registers it; nothing is found by scanning a
namespace. Lookup takes the largest registered version <= the model's opset for that domain.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from typing import Any

from ember.errors import UnsupportedError

_NAME = re.compile(r"(?P<op_type>[A-Za-z][A-Za-z0-9]*?)(?:_(?P<since>\d+))?")


@dataclasses.dataclass(frozen=True)
class OpContext:
    """What a few ops need beyond inputs and attributes; an op asks for it by a `ctx` parameter.

    exact: accumulate in float64 where the spec allows (the oracle mode).
    n_outputs: how many outputs the node declares (Split, TopK-like ops, optional outputs).
    opset: the opset version of the op's domain in the model.
    """

    exact: bool = False
    n_outputs: int = 1
    opset: int = 0


@dataclasses.dataclass(frozen=True)
class OpRecord:
    domain: str
    op_type: str
    since: int
    fn: Callable[..., Any]
    attributes: frozenset[str]  # keyword-only parameters = the ONNX attributes the op understands
    wants_ctx: bool
    accepts_any_attribute: bool  # the function takes **attrs


#: ember's own ops: what graph passes fuse ONNX subgraphs into (ember.ops.fused defines them).
EMBER_DOMAIN = "ai.ember"

_REGISTRY: dict[tuple[str, str], list[OpRecord]] = {}


def _canonical_domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def op(fn: Callable[..., Any] | None = None, *, domain: str = "") -> Any:
    """Register `fn` as the reference implementation of the op its name names.

    >>> @op
    ... def Relu_14(x):
    ...     return x * (x > 0)
    """

    def register(f: Callable[..., Any]) -> Callable[..., Any]:
        m = _NAME.fullmatch(f.__name__)
        if m is None:
            raise ValueError(f"op function name {f.__name__!r} is not OpType or OpType_<version>")
        params = inspect.signature(f).parameters.values()
        record = OpRecord(
            domain=_canonical_domain(domain),
            op_type=m["op_type"],
            since=int(m["since"] or 1),
            fn=f,
            attributes=frozenset(
                p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "ctx"
            ),
            wants_ctx=any(p.name == "ctx" for p in params),
            accepts_any_attribute=any(p.kind is p.VAR_KEYWORD for p in params),
        )
        versions = _REGISTRY.setdefault((record.domain, record.op_type), [])
        if any(r.since == record.since for r in versions):
            raise ValueError(f"{record.op_type} version {record.since} registered twice")
        versions.append(record)
        versions.sort(key=lambda r: r.since)
        return f

    return register(fn) if fn is not None else register


def lookup(op_type: str, domain: str, opset: int) -> OpRecord:
    """The record for `op_type` at `opset`, or UnsupportedError naming what exists."""
    versions = _REGISTRY.get((_canonical_domain(domain), op_type))
    where = f"{domain}::{op_type}" if domain else op_type
    if not versions:
        raise UnsupportedError(f"op {where} (opset {opset}) is not implemented by ember")
    usable = [r for r in versions if r.since <= opset]
    if not usable:
        have = ", ".join(str(r.since) for r in versions)
        raise UnsupportedError(
            f"op {where} at opset {opset} is not implemented; ember has versions {have}"
        )
    return usable[-1]


def find(op_type: str, domain: str, opset: int) -> OpRecord | None:
    """Like `lookup`, but None when ember has no implementation."""
    try:
        return lookup(op_type, domain, opset)
    except UnsupportedError:
        return None


def registered() -> dict[tuple[str, str], list[OpRecord]]:
    """Every registered op, keyed by (domain, op type), each list sorted by version."""
    return {k: list(v) for k, v in _REGISTRY.items()}
