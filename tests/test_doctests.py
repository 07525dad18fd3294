"""Every docstring example in ember runs (the style guide asks public functions for one)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import ember

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(ember.__path__, "ember.") if not m.name.endswith("._C")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
    result = doctest.testmod(module, optionflags=flags, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
