"""Runs the ONNX backend node-test corpus against ember; used by test_onnx_node.py and by hand.

    python tests/node_suite.py                 # every case; prints failures and the pass count
    python tests/node_suite.py -k conv         # only cases whose name contains "conv"

Exclusions live in node_test_exclusions.txt, one case per line with its reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

EXCLUSIONS_FILE = Path(__file__).with_name("node_test_exclusions.txt")


@dataclasses.dataclass
class Outcome:
    name: str
    passed: bool
    message: str = ""
    seconds: float = 0.0
    fallback_ops: tuple[str, ...] = ()


@cache
def load_cases() -> list[Any]:
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return load_model_tests(kind="node")


def load_exclusions() -> dict[str, str]:
    """case name -> reason, from the exclusions file (`name  # reason`, one per line)."""
    out = {}
    for line in EXCLUSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition("#")
        out[name.strip()] = reason.strip()
    return out


def _assert_same(expected: Any, got: Any, rtol: float, atol: float, where: str) -> None:
    if isinstance(expected, list):
        if not isinstance(got, list) or len(got) != len(expected):
            raise AssertionError(
                f"{where}: expected a sequence of {len(expected)}, got {type(got).__name__}"
            )
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            _assert_same(e, g, rtol, atol, f"{where}[{i}]")
        return
    if expected is None:
        if got is not None:
            raise AssertionError(
                f"{where}: expected None (empty optional), got {type(got).__name__}"
            )
        return
    expected = np.asarray(expected)
    if not isinstance(got, np.ndarray | np.generic):
        raise AssertionError(f"{where}: expected an array, got {type(got).__name__}")
    got = np.asarray(got)
    if expected.dtype != got.dtype:
        raise AssertionError(f"{where}: expected dtype {expected.dtype}, got {got.dtype}")
    if expected.shape != got.shape:
        raise AssertionError(f"{where}: expected shape {expected.shape}, got {got.shape}")
    if expected.dtype.kind in "OUSb" or expected.dtype.kind in "iu":
        np.testing.assert_array_equal(got, expected, err_msg=where)
    else:
        e = expected.astype(np.float64)
        g = got.astype(np.float64)
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=where)


def _as_array(value: Any) -> Any:
    # onnx 1.23 stores some test data (float8, int4, ...) as TensorProtos, not arrays.
    from onnx import TensorProto, numpy_helper

    return numpy_helper.to_array(value) if isinstance(value, TensorProto) else value


def run_case(case: Any) -> Outcome:
    import ember

    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            model = ember.load(case.model)
            fallback = tuple(sorted({n.op_type for n in model.plan().fallback_nodes}))
            names = [v.name for v in model.ir.graph.inputs]
            for raw_inputs, raw_expected in case.data_sets:
                inputs = [_as_array(v) for v in raw_inputs]
                expected = [_as_array(v) for v in raw_expected]
                feeds = dict(zip(names, inputs, strict=False))
                result = model.run(feeds)
                got = list(result.values())
                if len(got) != len(expected):
                    raise AssertionError(f"expected {len(expected)} outputs, got {len(got)}")
                for i, (e, g) in enumerate(zip(expected, got, strict=True)):
                    _assert_same(e, g, case.rtol, case.atol, f"output {i}")
    except Exception as e:  # noqa: BLE001  (any failure is a failed case, reported by name)
        msg = f"{type(e).__name__}: {e}".splitlines()
        return Outcome(case.name, False, " ".join(msg)[:400], time.perf_counter() - start)
    return Outcome(case.name, True, "", time.perf_counter() - start, fallback)


def run_all(pattern: str = "") -> list[Outcome]:
    return [run_case(c) for c in load_cases() if pattern in c.name]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-k", default="", help="only cases whose name contains this")
    p.add_argument("--show-excluded", action="store_true", help="also print excluded failures")
    args = p.parse_args(argv)
    excluded = load_exclusions()
    outcomes = run_all(args.k)
    for o in outcomes:
        if not o.passed and (o.name not in excluded or args.show_excluded):
            print(f"FAIL {o.name}: {o.message}")
    for o in outcomes:
        if o.passed and o.name in excluded:
            print(f"XPASS {o.name} (listed as excluded: {excluded[o.name]})")
    passed = sum(o.passed for o in outcomes)
    fb = sum(o.passed and bool(o.fallback_ops) for o in outcomes)
    slow = sorted(outcomes, key=lambda o: -o.seconds)[:5]
    print("slowest: " + ", ".join(f"{o.name} {o.seconds:.2f}s" for o in slow))
    print(
        f"{passed} of {len(outcomes)} node tests pass "
        f"({fb} of them use the onnx.reference fallback)"
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.exit(main())
