"""Loss ops: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (forward only).

Both gather one class score per sample along axis 1, weight it, drop samples whose label is
`ignore_index`, and reduce (none/sum/mean). Sums run in float32 for half floats, float64 when exact.
"""

from __future__ import annotations

import numpy as np

from ember.ops.common import work_dtype
from ember.ops.registry import op

_REDUCTIONS = ("none", "sum", "mean")


def _nll(
    logp: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None,
    ignore_index: int | None,
    reduction: str,
    name: str,
) -> np.ndarray:
    """The loss from log-probabilities `logp` (N, C, d1, ...) and labels `target` (N, d1, ...),
    in logp's dtype (the caller casts)."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if logp.ndim < 2:
        raise ValueError(f"{name}: input must be (N, C) or (N, C, d1, ...), got shape {logp.shape}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"{name}: target must be an integer tensor, got {target.dtype}")
    expected = logp.shape[:1] + logp.shape[2:]
    if target.shape != expected:
        raise ValueError(
            f"{name}: target has shape {target.shape}, expected {expected} for input of shape "
            f"{logp.shape}"
        )
    C = logp.shape[1]
    kept = np.ones(target.shape, dtype=bool) if ignore_index is None else target != ignore_index
    bad = kept & ((target < 0) | (target >= C))
    if bad.any():
        raise ValueError(
            f"{name}: target value {int(target[bad].flat[0])} is out of range [0, {C})"
            + ("" if ignore_index is None else f" and is not ignore_index ({ignore_index})")
        )
    label = np.where(kept, target, 0).astype(np.intp)  # (N, d1, ...), ignored -> any valid class
    picked = np.take_along_axis(logp, label[:, None], axis=1)[:, 0]  # (N, d1, ...)
    if weight is not None:
        if weight.shape != (C,):
            raise ValueError(f"{name}: weight must have shape ({C},), got {weight.shape}")
        w = np.where(kept, weight.astype(logp.dtype)[label], 0)
    else:
        w = kept.astype(logp.dtype)
    loss = -picked * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    # mean divides by the total weight of the samples kept (their count without weights); with
    # every sample ignored that is 0/0 = nan, as in PyTorch.
    with np.errstate(invalid="ignore", divide="ignore"):
        return loss.sum() / w.sum()


@op
def NegativeLogLikelihoodLoss_12(
    input, target, weight=None, *, ignore_index=None, reduction="mean", ctx=None
):
    """-input[n, target[n, d...], d...] * weight[target], reduced; opsets 13 and 22 only add
    types."""
    dt = work_dtype(ctx, input.dtype)
    w = None if weight is None else weight.astype(dt)
    loss = _nll(input.astype(dt), target, w, ignore_index, reduction, "NegativeLogLikelihoodLoss")
    return np.asarray(loss).astype(input.dtype)


@op
def SoftmaxCrossEntropyLoss_12(
    scores, labels, weights=None, *, ignore_index=None, reduction="mean", ctx=None
):
    """NegativeLogLikelihoodLoss of LogSoftmax(scores, axis=1) -> loss, or (loss, log_prob) when
    the node declares the second output; opset 13 only adds bfloat16.

    >>> scores = np.array([[0.0, 0.0], [1000.0, 0.0]])
    >>> SoftmaxCrossEntropyLoss_12(scores, np.array([0, 1]), reduction="none").tolist()
    [0.6931471805599453, 1000.0]
    """
    dt = work_dtype(ctx, scores.dtype)
    if scores.ndim < 2 or scores.shape[1] == 0:
        raise ValueError(
            f"SoftmaxCrossEntropyLoss: scores must be (N, C) or (N, C, d1, ...) with C >= 1, "
            f"got shape {scores.shape}"
        )
    x = scores.astype(dt)
    # log-softmax over the classes: every exponent is <= 0, so nothing overflows.
    m = np.max(x, axis=1, keepdims=True)
    d = x - np.where(np.isfinite(m), m, 0)
    log_prob = d - np.log(np.sum(np.exp(d), axis=1, keepdims=True))
    w = None if weights is None else weights.astype(dt)
    loss = _nll(log_prob, labels, w, ignore_index, reduction, "SoftmaxCrossEntropyLoss")
    loss = np.asarray(loss).astype(scores.dtype)
    if ctx is not None and ctx.n_outputs > 1:
        return loss, log_prob.astype(scores.dtype)
    return loss
