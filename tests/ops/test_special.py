"""erf and erfc (behind the Erf op and Gelu) against the standard library, across their range."""

from __future__ import annotations

import math

import numpy as np

from ember.ops.special import erf, erfc


def test_erf_matches_math_to_double_precision() -> None:
    x = np.concatenate([np.linspace(-7, 7, 20001), [1e-300, -1e-10, 1.0, -1.0, 8.0, 30.0]])
    want = np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(erf(x), want, rtol=1e-15, atol=0)


def test_erfc_keeps_relative_precision_in_the_tail() -> None:
    x = np.concatenate([np.linspace(-9, 26, 7001), [0.0, 1.0, 8.0, 26.5]])
    want = np.array([math.erfc(v) for v in x])
    np.testing.assert_allclose(erfc(x), want, rtol=1e-13, atol=0)
    assert erfc(np.array(10.0)) > 0  # 2.1e-45: no cancellation to 0


def test_special_values() -> None:
    y = erf(np.array([np.inf, -np.inf, np.nan, -0.0]))
    assert y[0] == 1 and y[1] == -1 and np.isnan(y[2]) and np.signbit(y[3])
    c = erfc(np.array([np.inf, -np.inf, np.nan, 40.0]))
    assert c[0] == 0 and c[1] == 2 and np.isnan(c[2]) and c[3] == 0
