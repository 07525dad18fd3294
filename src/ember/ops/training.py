"""ai.onnx.preview.training optimizer steps: Adagrad, Adam and Momentum (all version 1).

Each takes R (learning rate) and T (update count) scalars, then its per-tensor inputs grouped by
role (X1..Xn, G1..Gn, ...), and returns the new tensors grouped the same way. Tensors are updated
independently; the scalar coefficients are computed in float64 and the elementwise update in X's
work dtype (float32 for half floats, float64 in exact mode), then cast back to each input's dtype.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ember.ops.common import is_float, work_dtype
from ember.ops.registry import OpContext, op

_DOMAIN = "ai.onnx.preview.training"


def _scalar(x: np.ndarray, name: str) -> float:
    a = np.asarray(x)
    if a.size != 1:
        raise ValueError(f"{name} must be a scalar, got shape {a.shape}")
    return float(a.reshape(()))


def _groups(op_type: str, tensors: tuple[np.ndarray, ...], roles: str) -> list[list[np.ndarray]]:
    """Split the variadic inputs into one list per role ("XGH" -> [Xs, Gs, Hs])."""
    k = len(roles)
    if not tensors or len(tensors) % k:
        raise ValueError(
            f"{op_type} takes R, T and then {k} tensors ({', '.join(roles)}) per optimized "
            f"tensor; got {len(tensors)} tensors after R and T"
        )
    n = len(tensors) // k
    return [list(tensors[i * n : (i + 1) * n]) for i in range(k)]


def _work(ctx: OpContext | None, *arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays in X's work dtype."""
    x = arrays[0]
    if not is_float(x.dtype):
        raise TypeError(f"optimized tensors must be float or double, got {x.dtype}")
    wt = work_dtype(ctx, x.dtype)
    return [np.asarray(a).astype(wt) for a in arrays]


@op(domain=_DOMAIN)
def Adagrad(R, T, *inputs, decay_factor=0.0, epsilon=1e-6, norm_coefficient=0.0, ctx=None):
    """X_new = X - r * G' / (sqrt(H + G'^2) + epsilon), G' = G + norm_coefficient * X,
    r = R / (1 + T * decay_factor); returns (X1_new.., H1_new..)."""
    xs, gs, hs = _groups("Adagrad", inputs, "XGH")
    r = _scalar(R, "R") / (1.0 + _scalar(T, "T") * decay_factor)
    x_out, h_out = [], []
    for X, G, H in zip(xs, gs, hs, strict=True):
        x, g, h = _work(ctx, X, G, H)
        g = norm_coefficient * x + g
        h_new = h + g * g
        x_new = x - r * g / (np.sqrt(h_new) + epsilon)
        x_out.append(x_new.astype(X.dtype))
        h_out.append(h_new.astype(H.dtype))
    return (*x_out, *h_out)


@op(domain=_DOMAIN)
def Adam(
    R,
    T,
    *inputs,
    alpha=0.9,
    beta=0.999,
    epsilon=1e-6,
    norm_coefficient=0.0,
    norm_coefficient_post=0.0,
    ctx=None,
):
    """Adam with bias correction when T > 0 and optional L2 terms before (norm_coefficient) and
    after (norm_coefficient_post) the step; returns (X1_new.., V1_new.., H1_new..)."""
    xs, gs, vs, hs = _groups("Adam", inputs, "XGVH")
    r, t = _scalar(R, "R"), _scalar(T, "T")
    if t > 0:
        r = r * math.sqrt(1.0 - beta**t) / (1.0 - alpha**t)
    x_out, v_out, h_out = [], [], []
    for X, G, V, H in zip(xs, gs, vs, hs, strict=True):
        x, g, v, h = _work(ctx, X, G, V, H)
        g = norm_coefficient * x + g
        v_new = alpha * v + (1.0 - alpha) * g
        h_new = beta * h + (1.0 - beta) * (g * g)
        x_new = (x - r * (v_new / (np.sqrt(h_new) + epsilon))) * (1.0 - norm_coefficient_post)
        x_out.append(x_new.astype(X.dtype))
        v_out.append(v_new.astype(V.dtype))
        h_out.append(h_new.astype(H.dtype))
    return (*x_out, *v_out, *h_out)


@op(domain=_DOMAIN)
def Momentum(
    R, T, *inputs, alpha=None, beta=None, mode=None, norm_coefficient=None, ctx=None
) -> tuple[Any, ...]:
    """SGD with momentum (mode "standard") or Nesterov momentum (mode "nesterov"); beta is taken as
    1 on the first update (T == 0). Returns (X1_new.., V1_new..)."""
    missing = [
        name
        for name, value in (
            ("alpha", alpha),
            ("beta", beta),
            ("mode", mode),
            ("norm_coefficient", norm_coefficient),
        )
        if value is None
    ]
    if missing:
        raise ValueError(f"Momentum needs the attribute(s) {', '.join(missing)}")
    if mode not in ("standard", "nesterov"):
        raise ValueError(f"Momentum mode must be 'standard' or 'nesterov', got {mode!r}")
    xs, gs, vs = _groups("Momentum", inputs, "XGV")
    r = _scalar(R, "R")
    beta_t = beta if _scalar(T, "T") > 0 else 1.0
    x_out, v_out = [], []
    for X, G, V in zip(xs, gs, vs, strict=True):
        x, g, v = _work(ctx, X, G, V)
        g = norm_coefficient * x + g
        v_new = alpha * v + beta_t * g
        step = g + alpha * v_new if mode == "nesterov" else v_new
        x_out.append((x - r * step).astype(X.dtype))
        v_out.append(v_new.astype(V.dtype))
    return (*x_out, *v_out)
