"""ember against the ONNX backend node-test corpus (onnx.backend.test, 1,884 cases in onnx 1.23).

Every case must pass unless node_test_exclusions.txt lists it with a reason; an excluded case that
starts passing fails too, so the list stays honest. The pass count is printed at the end.
"""

from __future__ import annotations

from functools import cache

import pytest
from tests.node_suite import Outcome, load_cases, load_exclusions, run_case

MIN_PASSING = 1600
CASES = {c.name: c for c in load_cases()}
EXCLUDED = load_exclusions()


@cache
def outcome(name: str) -> Outcome:
    return run_case(CASES[name])


def test_exclusions_name_real_cases_and_give_reasons() -> None:
    assert not set(EXCLUDED) - set(CASES), "exclusions list cases that do not exist"
    assert all(EXCLUDED.values()), "every exclusion needs a reason after '#'"


@pytest.mark.parametrize("name", sorted(CASES))
def test_node(name: str) -> None:
    result = outcome(name)
    if name in EXCLUDED:
        if result.passed:
            pytest.fail(f"{name} passes now: remove it from node_test_exclusions.txt")
        pytest.skip(f"excluded: {EXCLUDED[name]}")
    assert result.passed, result.message


def test_pass_count(capsys) -> None:
    results = [outcome(n) for n in sorted(CASES)]
    passed = [r for r in results if r.passed]
    fallback = [r for r in passed if r.fallback_ops]
    fallback_ops = sorted({op for r in fallback for op in r.fallback_ops})
    with capsys.disabled():
        print(
            f"\nONNX node tests: {len(passed)} of {len(results)} pass "
            f"({len(passed) - len(fallback)} on ember's own ops alone, "
            f"{len(fallback)} also use the "
            f"onnx.reference fallback for: {', '.join(fallback_ops) or 'nothing'}); "
            f"{len(EXCLUDED)} excluded"
        )
    assert len(passed) >= MIN_PASSING
