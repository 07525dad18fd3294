"""NonMaxSuppression and RoiAlign against plain-Python twins of their definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from tests.ops.node import run_node

from ember.ops.detection import NonMaxSuppression_10, RoiAlign_10, RoiAlign_16

RNG = np.random.default_rng(3)


# ----------------------------------------------------------------------------------------------
# NonMaxSuppression
# ----------------------------------------------------------------------------------------------


def iou_twin(a, b, center):
    if center:
        a = [a[1] - a[3] / 2, a[0] - a[2] / 2, a[1] + a[3] / 2, a[0] + a[2] / 2]
        b = [b[1] - b[3] / 2, b[0] - b[2] / 2, b[1] + b[3] / 2, b[0] + b[2] / 2]
    ay0, ay1 = sorted((a[0], a[2]))
    ax0, ax1 = sorted((a[1], a[3]))
    by0, by1 = sorted((b[0], b[2]))
    bx0, bx1 = sorted((b[1], b[3]))
    ih = min(ay1, by1) - max(ay0, by0)
    iw = min(ax1, bx1) - max(ax0, bx0)
    if ih <= 0 or iw <= 0:
        return 0.0
    inter = ih * iw
    ua = (ay1 - ay0) * (ax1 - ax0) + (by1 - by0) * (bx1 - bx0) - inter
    return inter / ua if ua > 0 else 0.0


def nms_twin(boxes, scores, max_out, iou_t, score_t, center):
    out = []
    for b, c in itertools.product(range(scores.shape[0]), range(scores.shape[1])):
        cand = [i for i in range(boxes.shape[1]) if score_t is None or scores[b, c, i] > score_t]
        cand.sort(key=lambda i: (-scores[b, c, i], i))
        kept: list[int] = []
        for i in cand:
            if len(kept) >= max_out:
                break
            if all(iou_twin(boxes[b, i], boxes[b, j], center) <= iou_t for j in kept):
                kept.append(i)
        out += [(b, c, i) for i in kept]
    return np.array(out, dtype=np.int64).reshape(-1, 3)


@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize(
    ("max_out", "iou_t", "score_t"), [(3, 0.5, None), (100, 0.2, 0.3), (2, 0.0, 0.9)]
)
def test_nms_matches_greedy_definition(center, max_out, iou_t, score_t):
    B, C, N = 2, 3, 40
    xy = RNG.uniform(0, 10, (B, N, 2))
    wh = RNG.uniform(0.5, 4, (B, N, 2))
    if center:
        boxes = np.concatenate([xy, wh], -1)
    else:  # corners in any diagonal order
        boxes = np.concatenate([xy, xy + wh * RNG.choice([-1, 1], (B, N, 2))], -1)
    boxes = boxes.astype(np.float32)
    scores = RNG.uniform(0, 1, (B, C, N)).astype(np.float32)
    scores[0, 0, :5] = 0.5  # ties: the lower index first
    st = None if score_t is None else np.array([score_t], dtype=np.float32)
    got = NonMaxSuppression_10(
        boxes,
        scores,
        np.array([max_out]),
        np.array([iou_t], dtype=np.float32),
        st,
        center_point_box=center,
    )
    want = nms_twin(boxes.astype(np.float64), scores, max_out, iou_t, score_t, center)
    np.testing.assert_array_equal(got, want)


def test_nms_keeps_boxes_at_exactly_the_threshold_and_strictly_above_the_score():
    boxes = np.array(
        [[[0, 0, 1, 1], [0, 0, 1, 2], [0, 5, 1, 6]]], dtype=np.float32
    )  # IoU(0,1) = 0.5
    scores = np.array([[[0.9, 0.8, 0.5]]], dtype=np.float32)
    got = NonMaxSuppression_10(
        boxes, scores, np.array([10]), np.array([0.5], np.float32), np.array([0.5], np.float32)
    )
    np.testing.assert_array_equal(got, [[0, 0, 0], [0, 0, 1]])


def test_nms_defaults_select_nothing():
    boxes = np.zeros((1, 2, 4), dtype=np.float32)
    scores = np.ones((1, 1, 2), dtype=np.float32)
    got = run_node("NonMaxSuppression", [("b", boxes), ("s", scores)], opset=11)
    assert got.shape == (0, 3) and got.dtype == np.int64


@pytest.mark.parametrize(
    ("args", "kw", "message"),
    [
        ((np.zeros((1, 2, 3)), np.zeros((1, 1, 2))), {}, "boxes must have shape"),
        ((np.zeros((1, 2, 4)), np.zeros((1, 1, 3))), {}, "scores must have shape"),
        (
            (np.zeros((1, 2, 4)), np.zeros((1, 1, 2)), np.array([1]), np.array([1.5])),
            {},
            "iou_threshold=1.5",
        ),
        ((np.zeros((1, 2, 4)), np.zeros((1, 1, 2)), np.array([1, 2])), {}, "single value"),
        ((np.zeros((1, 2, 4)), np.zeros((1, 1, 2))), {"center_point_box": 2}, "center_point_box=2"),
    ],
)
def test_nms_errors(args, kw, message):
    with pytest.raises(ValueError, match=message):
        NonMaxSuppression_10(*args, **kw)


# ----------------------------------------------------------------------------------------------
# RoiAlign
# ----------------------------------------------------------------------------------------------


def roi_align_twin(x, rois, bidx, ph, pw, ratio, scale, mode, half_pixel):
    """Sample by sample: bilinear (clamped, zero beyond one pixel outside), then avg or max."""
    R, (_, C, H, W) = len(rois), x.shape
    y = np.zeros((R, C, ph, pw))
    off = 0.5 if half_pixel else 0.0
    for r in range(R):
        x1, y1, x2, y2 = (float(v) * scale - off for v in rois[r])
        rh, rw = y2 - y1, x2 - x1
        if not half_pixel:
            rh, rw = max(rh, 1.0), max(rw, 1.0)
        gh = ratio if ratio > 0 else math.ceil(rh / ph)
        gw = ratio if ratio > 0 else math.ceil(rw / pw)
        for c, i, j in itertools.product(range(C), range(ph), range(pw)):
            vals = []
            for a, e in itertools.product(range(gh), range(gw)):
                yy = y1 + i * rh / ph + (a + 0.5) * rh / ph / gh
                xx = x1 + j * rw / pw + (e + 0.5) * rw / pw / gw
                if yy < -1 or yy > H or xx < -1 or xx > W:
                    vals.append([0.0])
                    continue
                yy, xx = max(yy, 0.0), max(xx, 0.0)
                y0, x0 = int(yy), int(xx)
                if y0 >= H - 1:
                    y0 = y1_ = H - 1
                    yy = float(y0)
                else:
                    y1_ = y0 + 1
                if x0 >= W - 1:
                    x0 = x1_ = W - 1
                    xx = float(x0)
                else:
                    x1_ = x0 + 1
                ly, lx = yy - y0, xx - x0
                img = x[bidx[r], c]
                vals.append(
                    [
                        (1 - ly) * (1 - lx) * img[y0, x0],
                        (1 - ly) * lx * img[y0, x1_],
                        ly * (1 - lx) * img[y1_, x0],
                        ly * lx * img[y1_, x1_],
                    ]
                )
            if not vals:
                continue
            if mode == "avg":
                y[r, c, i, j] = sum(sum(v) for v in vals) / (gh * gw)
            else:
                y[r, c, i, j] = max(max(v) for v in vals)
    return y


ROIS = np.array(
    [
        [0, 0, 9, 9],
        [1.3, 2.2, 6.1, 4.9],
        [-3, -2, 2, 3],
        [5, 5, 5.2, 5.1],
        [8, 1, 14, 12],
        [4, 4, 2, 2],
    ],
    dtype=np.float32,
)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("half_pixel", [True, False])
@pytest.mark.parametrize(
    ("ph", "pw", "ratio", "scale"), [(3, 2, 0, 1.0), (2, 4, 2, 0.75), (1, 1, 0, 0.5)]
)
def test_roi_align_matches_definition(mode, half_pixel, ph, pw, ratio, scale):
    x = RNG.standard_normal((2, 3, 8, 10)).astype(np.float32)
    bidx = np.array([0, 1, 1, 0, 1, 0], dtype=np.int64)
    got = RoiAlign_16(
        x,
        ROIS,
        bidx,
        mode=mode,
        output_height=ph,
        output_width=pw,
        sampling_ratio=ratio,
        spatial_scale=scale,
        coordinate_transformation_mode="half_pixel" if half_pixel else "output_half_pixel",
    )
    want = roi_align_twin(x, ROIS, bidx, ph, pw, ratio, scale, mode, half_pixel)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_roi_align_opset_10_has_no_half_pixel_shift():
    x = RNG.standard_normal((1, 2, 6, 6)).astype(np.float32)
    rois, bidx = ROIS[:2], np.array([0, 0], dtype=np.int64)
    attrs = {"output_height": 2, "output_width": 3}
    old = run_node("RoiAlign", [("x", x), ("r", rois), ("b", bidx)], attrs, opset=10)
    new = run_node("RoiAlign", [("x", x), ("r", rois), ("b", bidx)], attrs, opset=16)
    np.testing.assert_allclose(old, RoiAlign_10(x, rois, bidx, **attrs))
    np.testing.assert_allclose(
        old, roi_align_twin(x, rois, bidx, 2, 3, 0, 1.0, "avg", False), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        new, roi_align_twin(x, rois, bidx, 2, 3, 0, 1.0, "avg", True), rtol=1e-5, atol=1e-6
    )


def test_roi_align_errors():
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="batch index 3"):
        RoiAlign_16(x, ROIS[:1], np.array([3]))
    with pytest.raises(ValueError, match="batch_indices has 2 entries for 1 rois"):
        RoiAlign_16(x, ROIS[:1], np.array([0, 0]))
    with pytest.raises(ValueError, match="mode='sum'"):
        RoiAlign_16(x, ROIS[:1], np.array([0]), mode="sum")
    with pytest.raises(ValueError, match="coordinate_transformation_mode='pixel'"):
        RoiAlign_16(x, ROIS[:1], np.array([0]), coordinate_transformation_mode="pixel")
