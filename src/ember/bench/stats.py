"""The numbers a report states: latency percentiles, throughput, ember/peer speed ratios with a
bootstrap interval, and output agreement with a reference. Pure functions on arrays; no timing here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


def latency_summary(times_s: Sequence[float], samples_per_call: int) -> dict[str, Any]:
    """Percentiles of per-call latency in ms, and throughput in samples/s over the timed calls.

    >>> s = latency_summary([0.001, 0.002, 0.003], samples_per_call=8)
    >>> s["median_ms"], s["n"], round(s["throughput_sps"]), round(s["throughput_median_sps"])
    (2.0, 3, 4000, 4000)
    """
    t = np.asarray(times_s, dtype=np.float64) * 1e3  # (N,) ms
    return {
        "n": int(t.size),
        "median_ms": float(np.median(t)),
        "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
        "std_ms": float(t.std()),
        "min_ms": float(t.min()),
        "max_ms": float(t.max()),
        # Total samples over total time: what a saturated caller gets; a busy machine's outliers
        # drag it down. The median-based figure is the one the ratios use.
        "throughput_sps": float(samples_per_call * t.size / (t.sum() / 1e3)),
        "throughput_median_sps": float(samples_per_call / (np.median(t) / 1e3)),
    }


@dataclasses.dataclass(frozen=True)
class Ratio:
    """ember's speed over a peer's (>1: ember is faster); `low`/`high`: 95% bootstrap interval."""

    value: float
    low: float
    high: float


def speed_ratio(
    ember_s: Sequence[float],
    ember_samples: int,
    peer_s: Sequence[float],
    peer_samples: int,
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> Ratio:
    """(peer median time per sample) / (ember median time per sample), with a percentile bootstrap.

    Medians rather than means: a few calls hit by another process on a shared machine do not move
    them. The interval treats calls as independent draws, which interleaving makes closer to true.

    >>> r = speed_ratio([2.0, 2.0, 2.0], 1, [1.0, 1.0, 1.0], 1)
    >>> r.value, r.low, r.high
    (0.5, 0.5, 0.5)
    """
    e = np.asarray(ember_s, dtype=np.float64) / ember_samples
    p = np.asarray(peer_s, dtype=np.float64) / peer_samples
    value = float(np.median(p) / np.median(e))
    rng = np.random.default_rng(seed)
    e_med = np.median(e[rng.integers(0, e.size, (resamples, e.size))], axis=1)  # (R,)
    p_med = np.median(p[rng.integers(0, p.size, (resamples, p.size))], axis=1)  # (R,)
    low, high = np.percentile(p_med / e_med, [2.5, 97.5])
    return Ratio(value, float(low), float(high))


def detect_task(outputs: Sequence[np.ndarray]) -> str:
    """classify when the first output is (B, C) scores with C >= 2, embed otherwise.

    >>> detect_task([np.zeros((4, 10), np.float32)]), detect_task([np.zeros((4, 7, 3))])
    ('classify', 'embed')
    """
    first = np.asarray(outputs[0])
    if first.ndim == 2 and first.shape[1] >= 2 and first.dtype.kind == "f":
        return "classify"
    return "embed"


def agreement(got: Sequence[np.ndarray], ref: Sequence[np.ndarray], task: str) -> dict[str, Any]:
    """How far an engine's outputs are from the reference's (ember's exact mode).

    max_abs_err: over every element of every output. max_rel_err: that error divided by the
    largest |reference| of the same output (elementwise ratios explode where the reference is ~0).
    classify: top1_agreement, the fraction of samples whose argmax of the first output matches.
    embed: cosine similarity of each sample's first output (flattened), min and mean.

    >>> a = agreement([np.array([[1.0, 2.0]])], [np.array([[1.0, 2.5]])], "classify")
    >>> a["max_abs_err"], a["max_rel_err"], a["top1_agreement"]
    (0.5, 0.2, 1.0)
    """
    if len(got) != len(ref):
        raise ValueError(f"{len(got)} outputs, the reference has {len(ref)}")
    max_abs, max_rel = 0.0, 0.0
    for g, r in zip(got, ref, strict=True):
        g64, r64 = np.asarray(g, np.float64), np.asarray(r, np.float64)
        if g64.shape != r64.shape:
            raise ValueError(f"output shape {g64.shape}, the reference has {r64.shape}")
        if g64.size == 0:
            continue
        err = float(np.max(np.abs(g64 - r64)))
        scale = float(np.max(np.abs(r64)))
        max_abs = max(max_abs, err)
        max_rel = max(max_rel, err / scale if scale > 0 else (0.0 if err == 0 else float("inf")))
    out: dict[str, Any] = {"max_abs_err": max_abs, "max_rel_err": max_rel}
    g0 = np.asarray(got[0], np.float64)
    r0 = np.asarray(ref[0], np.float64)
    if task == "classify":
        out["top1_agreement"] = float(np.mean(g0.argmax(axis=-1) == r0.argmax(axis=-1)))
    else:
        g2 = g0.reshape(g0.shape[0], -1) if g0.ndim else g0.reshape(1, 1)  # (B, D)
        r2 = r0.reshape(r0.shape[0], -1) if r0.ndim else r0.reshape(1, 1)  # (B, D)
        norms = np.linalg.norm(g2, axis=1) * np.linalg.norm(r2, axis=1)  # (B,)
        cos = np.where(norms > 0, (g2 * r2).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
        out["cosine_min"] = float(cos.min())
        out["cosine_mean"] = float(cos.mean())
    return out
