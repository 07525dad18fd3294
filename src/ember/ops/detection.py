"""Detection ops: NonMaxSuppression and RoiAlign.

NonMaxSuppression is greedy per (batch, class): a loop over the boxes it selects, each step one
vectorized IoU of the selected box against the remaining candidates. RoiAlign loops over regions
and treats each one as two small interpolation matrices (one per spatial axis).
"""

from __future__ import annotations

import math

import numpy as np

from ember.ops.common import as_int_list
from ember.ops.registry import op

# ----------------------------------------------------------------------------------------------
# NonMaxSuppression
# ----------------------------------------------------------------------------------------------


def _corners(boxes: np.ndarray, center_point_box: int) -> np.ndarray:
    """(..., 4) boxes -> (..., 4) as (y_min, x_min, y_max, x_max)."""
    if center_point_box == 0:
        y1, x1, y2, x2 = np.moveaxis(boxes, -1, 0)
        return np.stack(
            [np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)], -1
        )
    if center_point_box == 1:
        xc, yc, w, h = np.moveaxis(boxes, -1, 0)
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], -1)
    raise ValueError(f"center_point_box={center_point_box} must be 0 or 1")


def _iou(one: np.ndarray, many: np.ndarray) -> np.ndarray:
    """IoU of box `one` (4,) with each of `many` (K, 4), all as corners; 0 for empty overlaps."""
    ih = np.minimum(one[2], many[:, 2]) - np.maximum(one[0], many[:, 0])
    iw = np.minimum(one[3], many[:, 3]) - np.maximum(one[1], many[:, 1])
    inter = np.where((ih > 0) & (iw > 0), ih * iw, 0.0)
    a1 = (one[2] - one[0]) * (one[3] - one[1])
    a2 = (many[:, 2] - many[:, 0]) * (many[:, 3] - many[:, 1])
    union = a1 + a2 - inter
    ok = (inter > 0) & (a1 > 0) & (a2 > 0) & (union > 0)
    return np.where(ok, inter / np.where(ok, union, 1.0), 0.0)


def _scalar(x: np.ndarray | None, name: str, default):
    if x is None or x.size == 0:
        return default
    if x.size != 1:
        raise ValueError(f"{name} must hold a single value, got shape {x.shape}")
    return x.reshape(-1)[0].item()


@op
def NonMaxSuppression_10(
    boxes,
    scores,
    max_output_boxes_per_class=None,
    iou_threshold=None,
    score_threshold=None,
    *,
    center_point_box=0,
):
    if boxes.ndim != 3 or boxes.shape[2] != 4:
        raise ValueError(f"boxes must have shape (num_batches, num_boxes, 4), got {boxes.shape}")
    if scores.ndim != 3 or scores.shape[0] != boxes.shape[0] or scores.shape[2] != boxes.shape[1]:
        raise ValueError(
            f"scores must have shape (num_batches={boxes.shape[0]}, num_classes, "
            f"num_boxes={boxes.shape[1]}), "
            f"got {scores.shape}"
        )
    max_out = max(int(_scalar(max_output_boxes_per_class, "max_output_boxes_per_class", 0)), 0)
    iou_t = float(_scalar(iou_threshold, "iou_threshold", 0.0))
    score_t = _scalar(score_threshold, "score_threshold", None)
    if not 0.0 <= iou_t <= 1.0:
        raise ValueError(f"iou_threshold={iou_t} must be in [0, 1]")
    corners = _corners(boxes.astype(np.float64), center_point_box)  # (B, N, 4)
    selected = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            s = scores[b, c]
            # Highest score first; ties keep the lower box index first (stable sort).
            order = np.argsort(-s.astype(np.float64), kind="stable")
            if score_t is not None:
                order = order[s[order] > score_t]
            picked = 0
            while order.size and picked < max_out:  # a loop over the boxes it keeps
                i = order[0]
                selected.append((b, c, int(i)))
                picked += 1
                rest = order[1:]
                order = rest[_iou(corners[b, i], corners[b, rest]) <= iou_t]
    return np.array(selected, dtype=np.int64).reshape(-1, 3)


# ----------------------------------------------------------------------------------------------
# RoiAlign
# ----------------------------------------------------------------------------------------------


def _bilinear_axis(coord: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """Per sample along one axis: (low, high, weight_low, weight_high, valid).

    Samples more than one pixel outside the map are invalid (they contribute 0); the others are
    clamped to the map, as in Caffe2/onnxruntime RoiAlign.
    """
    valid = (coord >= -1.0) & (coord <= size)
    c = np.maximum(coord, 0.0)
    low = np.floor(c).astype(np.int64)
    at_end = low >= size - 1
    low = np.where(at_end, size - 1, low)
    high = np.where(at_end, size - 1, low + 1)
    c = np.where(at_end, low, c)
    frac = c - low
    return low, high, (1 - frac) * valid, frac * valid, valid


def _roi_align(
    X,
    rois,
    batch_indices,
    *,
    mode,
    output_height,
    output_width,
    sampling_ratio,
    spatial_scale,
    half_pixel,
):
    if X.ndim != 4:
        raise ValueError(f"X must have shape (N, C, H, W), got {X.shape}")
    if rois.ndim != 2 or rois.shape[1] != 4:
        raise ValueError(f"rois must have shape (num_rois, 4) [x1, y1, x2, y2], got {rois.shape}")
    bidx = as_int_list(batch_indices)
    if len(bidx) != rois.shape[0]:
        raise ValueError(f"batch_indices has {len(bidx)} entries for {rois.shape[0]} rois")
    if mode not in ("avg", "max"):
        raise ValueError(f"mode={mode!r} is not one of avg, max")
    N, C, H, W = X.shape
    PH, PW = int(output_height), int(output_width)
    # Sample weights are float64 in every implementation worth matching; the data follows.
    x, r_all = X.astype(np.float64), rois.astype(np.float64)
    y = np.zeros((rois.shape[0], C, PH, PW), dtype=np.float64)
    offset = 0.5 if half_pixel else 0.0
    for r, b in enumerate(bidx):  # a loop over regions
        if not 0 <= b < N:
            raise ValueError(f"roi {r} has batch index {b}, outside [0, {N})")
        x1, y1, x2, y2 = (float(v) * spatial_scale - offset for v in r_all[r])
        rh, rw = y2 - y1, x2 - x1
        if not half_pixel:  # legacy mode: malformed regions become 1x1
            rh, rw = max(rh, 1.0), max(rw, 1.0)
        bin_h, bin_w = rh / PH, rw / PW
        gh = int(sampling_ratio) if sampling_ratio > 0 else math.ceil(rh / PH)
        gw = int(sampling_ratio) if sampling_ratio > 0 else math.ceil(rw / PW)
        if gh <= 0 or gw <= 0:
            continue  # no sample points: the bins pool to 0
        count = gh * gw
        ys = (
            y1 + np.arange(PH)[:, None] * bin_h + (np.arange(gh)[None, :] + 0.5) * bin_h / gh
        ).reshape(-1)
        xs = (
            x1 + np.arange(PW)[:, None] * bin_w + (np.arange(gw)[None, :] + 0.5) * bin_w / gw
        ).reshape(-1)
        ylo, yhi, wyl, wyh, _ = _bilinear_axis(ys, H)  # (PH*gh,)
        xlo, xhi, wxl, wxh, _ = _bilinear_axis(xs, W)  # (PW*gw,)
        img = x[b]  # (C, H, W)
        if mode == "avg":
            # Each output is sum_samples sum_corners wy*wx*img: separable, so two matrices.
            ay = np.zeros((PH, H))
            ph = np.repeat(np.arange(PH), gh)
            np.add.at(ay, (ph, ylo), wyl)
            np.add.at(ay, (ph, yhi), wyh)
            ax = np.zeros((PW, W))
            pw = np.repeat(np.arange(PW), gw)
            np.add.at(ax, (pw, xlo), wxl)
            np.add.at(ax, (pw, xhi), wxh)
            y[r] = np.matmul(np.matmul(ay, img), ax.T) / count  # (C, PH, PW)
        else:
            # NOTE: like onnxruntime (and the ONNX reference), max mode takes the max of the four
            # weighted corner values of each sample, not the max of the interpolated samples.
            best = None
            for yi, wy in ((ylo, wyl), (yhi, wyh)):
                for xi, wx in ((xlo, wxl), (xhi, wxh)):
                    v = img[:, yi][:, :, xi] * np.multiply.outer(wy, wx)  # (C, PH*gh, PW*gw)
                    best = v if best is None else np.maximum(best, v)
            y[r] = best.reshape(C, PH, gh, PW, gw).max(axis=(2, 4))
    return y.astype(X.dtype)


@op
def RoiAlign_10(
    X,
    rois,
    batch_indices,
    *,
    mode="avg",
    output_height=1,
    output_width=1,
    sampling_ratio=0,
    spatial_scale=1.0,
):
    # Opset 10 has no coordinate_transformation_mode: it behaves as 'output_half_pixel'.
    return _roi_align(
        X,
        rois,
        batch_indices,
        mode=mode,
        output_height=output_height,
        output_width=output_width,
        sampling_ratio=sampling_ratio,
        spatial_scale=spatial_scale,
        half_pixel=False,
    )


@op
def RoiAlign_16(
    X,
    rois,
    batch_indices,
    *,
    coordinate_transformation_mode="half_pixel",
    mode="avg",
    output_height=1,
    output_width=1,
    sampling_ratio=0,
    spatial_scale=1.0,
):
    if coordinate_transformation_mode not in ("half_pixel", "output_half_pixel"):
        raise ValueError(
            f"coordinate_transformation_mode={coordinate_transformation_mode!r} is not one of "
            "half_pixel, output_half_pixel"
        )
    return _roi_align(
        X,
        rois,
        batch_indices,
        mode=mode,
        output_height=output_height,
        output_width=output_width,
        sampling_ratio=sampling_ratio,
        spatial_scale=spatial_scale,
        half_pixel=coordinate_transformation_mode == "half_pixel",
    )
