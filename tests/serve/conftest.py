"""Shared setup for the serving tests; helpers live in serve_helpers.py (importable from here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "uvicorn", reason="the serve extra is not installed (pip install 'ember[serve]')"
)
pytest.importorskip(
    "prometheus_client", reason="the serve extra is not installed (pip install 'ember[serve]')"
)

# NOTE: pytest runs with --import-mode=importlib, so sibling modules are not importable by default.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def cnn_reference():
    import ember
    from ember import zoo

    return ember.load(zoo.model_path("digits_cnn"))
