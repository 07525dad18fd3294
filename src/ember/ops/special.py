"""erf and erfc for float64 arrays to double precision (NumPy has neither; SciPy is no dependency).

The rational approximations are Stephen Moshier's from the Cephes library (public domain), the ones
SciPy's own erf/ndtr compile: erf on |x| <= 1, erfc on 1 < |x| < 8 and |x| >= 8. About 30 array
passes per call, against over 100 for a series or continued fraction of the same accuracy.
"""

from __future__ import annotations

import numpy as np

_T = (9.60497373987051638749e0, 9.00260197203842689217e1, 2.23200534594684319226e3,
      7.00332514112805075473e3, 5.55923013010394962768e4)  # fmt: skip
_U = (1.0, 3.35617141647503099647e1, 5.21357949780152679795e2, 4.59432382970980127987e3,
      2.26290000613890934246e4, 4.92673942608635921086e4)  # fmt: skip
_P = (2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0,
      4.86371970985681366614e1, 1.96520832956077098242e2, 5.26445194995477358631e2,
      9.34528527171957607540e2, 1.02755188689515710272e3, 5.57535335369399327526e2)  # fmt: skip
_Q = (1.0, 1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2,
      9.75708501743205489753e2, 1.82390916687909736289e3, 2.24633760818710981792e3,
      1.65666309194161350182e3, 5.57535340817727675546e2)  # fmt: skip
_R = (5.64189583547755073984e-1, 1.27536670759978104416e0, 5.01905042251180477414e0,
      6.16021097993053585195e0, 7.40974269950448939160e0, 2.97886665372100240670e0)  # fmt: skip
_S = (1.0, 2.26052863220117276590e0, 9.39603524938001434673e0, 1.20489539808096656605e1,
      1.70814450747565897222e1, 9.60896809063285878198e0, 3.36907645100081516050e0)  # fmt: skip


def _poly(x: np.ndarray, coefficients: tuple[float, ...]) -> np.ndarray:
    """Horner's rule, highest power first."""
    out = np.full_like(x, coefficients[0])
    for c in coefficients[1:]:
        out = out * x + c
    return out


def _erf_small(x: np.ndarray) -> np.ndarray:
    """erf(x) for |x| <= 1 (evaluated anywhere; only used there)."""
    z = x * x
    return x * _poly(z, _T) / _poly(z, _U)


def _erfc_large(a: np.ndarray) -> np.ndarray:
    """erfc(a) for a >= 1 (a = |x|); underflows to 0 past a ~ 26.6 as it should."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        mid = _poly(a, _P) / _poly(a, _Q)  # 1 <= a < 8
        far = _poly(a, _R) / _poly(a, _S)  # a >= 8
        # The rationals are inf/inf at a = inf, where erfc is exactly 0.
        return np.where(np.isinf(a), 0.0, np.exp(-a * a) * np.where(a < 8.0, mid, far))


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, in float64.

    >>> float(erf(np.array(0.5)))
    0.5204998778130465
    """
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    small = a <= 1.0
    big = np.copysign(1.0 - _erfc_large(np.maximum(a, 1.0)), x)
    out = np.where(small, _erf_small(np.clip(x, -1.0, 1.0)), big)
    return np.where(np.isnan(x), x, out)


def erfc(x: np.ndarray) -> np.ndarray:
    """The complementary error function 1 - erf(x), elementwise, in float64, without cancellation
    for large x (erfc(10) = 2.1e-45, not 0).

    >>> f"{float(erfc(np.array(3.0))):.12e}"
    '2.209049699859e-05'
    """
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    tail = _erfc_large(np.maximum(a, 1.0))
    out = np.where(
        a < 1.0, 1.0 - _erf_small(np.clip(x, -1.0, 1.0)), np.where(x < 0, 2.0 - tail, tail)
    )
    return np.where(np.isnan(x), x, out)
