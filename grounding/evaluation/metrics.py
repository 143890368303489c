"""Box IoU, localization accuracy at IoU thresholds (paper Table 1) and a simple AP.

All boxes are xyxy floats in one pixel frame (IoU does not change under axis-aligned scaling, so
original or prepared pixels give the same numbers).

Matching rule (the one the evaluation uses, documented in the README):

* An image counts only if it has at least one ground-truth box; images without expert boxes are
  excluded from the denominator (they cannot be localised).
* Predictions per image are sorted by descending score. With ``top_k=1`` (the paper's number) the
  image is a *hit at t* when its top-1 box has IoU >= t with ANY of the image's ground-truth boxes.
  With ``top_k=k`` it is a hit when ANY of its top-k boxes reaches IoU >= t with ANY ground-truth box.
* An image with ground truth but no prediction is a miss.

IoU is never NaN: a pair with zero union (two zero-area boxes) has IoU 0. Corners must be ordered
(x1 <= x2, y1 <= y2) and finite; anything else raises ``ValueError`` because it is an upstream bug,
not a bad prediction.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# -- metric names: one place, used by the loops, ray.train.report, Tune spaces and the eval job --
VAL_PREFIX = "val_"
AP50 = "ap50"
NUM_IMAGES_WITH_BOXES = "num_images_with_boxes"
MEAN_BEST_IOU = "mean_best_iou"


def hit_name(threshold: float, top_k: int = 1) -> str:
    """Metric key of localization accuracy at ``threshold``: ``hit_iou50`` (top-1), ``hit3_iou50`` (top-3)."""
    k = "" if top_k == 1 else str(top_k)
    return f"hit{k}_iou{int(round(threshold * 100)):02d}"


HIT_IOU25 = hit_name(0.25)
HIT_IOU50 = hit_name(0.5)
HIT_IOU75 = hit_name(0.75)


def validate_boxes(boxes: np.ndarray, what: str = "boxes") -> np.ndarray:
    """(N, 4) float64 xyxy, checked: finite and x1 <= x2, y1 <= y2. Empty input gives (0, 4).

    Raises:
        ValueError: naming ``what`` and the first bad box.
    """
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim == 1 and b.size % 4 == 0:  # the flat Parquet form
        b = b.reshape(-1, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{what}: expected (N, 4) xyxy boxes, got shape {np.shape(boxes)}")
    bad = ~np.isfinite(b).all(axis=1) | (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what}: box {i} {b[i].tolist()} is not finite xyxy with x1<=x2, y1<=y2")
    return b


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes.

    Args:
        a: (N, 4) xyxy.
        b: (M, 4) xyxy.

    Returns:
        (N, M) float64 in [0, 1]; 0 where the union is 0 (never NaN).
    """
    a = validate_boxes(a, "boxes a")
    b = validate_boxes(b, "boxes b")
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def best_iou(pred_boxes: np.ndarray, gt_boxes: np.ndarray, top_k: int = 1) -> float:
    """Highest IoU of any of the first ``top_k`` predictions with any ground-truth box (0 if none)."""
    p = validate_boxes(pred_boxes, "predicted boxes")[:top_k]
    g = validate_boxes(gt_boxes, "ground-truth boxes")
    if len(p) == 0 or len(g) == 0:
        return 0.0
    return float(box_iou(p, g).max())


def localization_accuracy(
    pred_boxes: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    thresholds: Sequence[float] = (0.25, 0.5, 0.75),
    top_k: int = 1,
    pred_scores: Sequence[np.ndarray] | None = None,
) -> dict[str, float]:
    """Fraction of images with ground truth whose predicted box reaches IoU >= t (module docstring rule).

    Args:
        pred_boxes: per image, (K_i, 4) xyxy sorted by descending score (or give ``pred_scores``).
        gt_boxes: per image, (M_i, 4) xyxy; images with M_i = 0 are excluded.
        thresholds: IoU thresholds t.
        top_k: how many of the highest-scored predictions may hit.
        pred_scores: optional per image (K_i,) scores; predictions are then sorted by them.

    Returns:
        ``{hit_name(t, top_k): accuracy, ..., "num_images_with_boxes": n, "mean_best_iou": m}``;
        accuracies are 0.0 when no image has ground truth (n = 0 tells the caller).
    """
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError(f"{len(pred_boxes)} prediction lists for {len(gt_boxes)} images")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    ious = []
    for i, (p, g) in enumerate(zip(pred_boxes, gt_boxes)):
        g = validate_boxes(g, f"image {i} ground-truth boxes")
        if len(g) == 0:
            continue
        p = validate_boxes(p, f"image {i} predicted boxes")
        if pred_scores is not None and len(p):
            order = np.argsort(-np.asarray(pred_scores[i], dtype=np.float64), kind="stable")
            p = p[order]
        ious.append(best_iou(p, g, top_k))
    ious_arr = np.asarray(ious, dtype=np.float64)
    n = len(ious_arr)
    out: dict[str, float] = {
        hit_name(t, top_k): float((ious_arr >= t).mean()) if n else 0.0 for t in thresholds
    }
    out[NUM_IMAGES_WITH_BOXES] = float(n)
    out[MEAN_BEST_IOU] = float(ious_arr.mean()) if n else 0.0
    return out


def average_precision(
    pred_boxes: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
) -> float:
    """VOC-style all-point AP for one class over a set of images.

    Predictions of all images are ranked by score; each is a true positive when it reaches
    ``iou_threshold`` with a not-yet-matched ground-truth box of its image (greedy, highest IoU
    first), else a false positive. Images without ground truth contribute only false positives.

    Returns:
        AP in [0, 1]; 0.0 when there is no ground-truth box at all.
    """
    records = []  # (score, image index, prediction index)
    for i, (p, s) in enumerate(zip(pred_boxes, pred_scores)):
        p = validate_boxes(p, f"image {i} predicted boxes")
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        if len(s) != len(p):
            raise ValueError(f"image {i}: {len(p)} boxes but {len(s)} scores")
        records += [(float(s[j]), i, j) for j in range(len(p))]
    gts = [validate_boxes(g, f"image {i} ground-truth boxes") for i, g in enumerate(gt_boxes)]
    n_gt = sum(len(g) for g in gts)
    if n_gt == 0:
        return 0.0
    records.sort(key=lambda r: -r[0])
    matched = [np.zeros(len(g), dtype=bool) for g in gts]
    tp = np.zeros(len(records))
    for r, (_, i, j) in enumerate(records):
        if len(gts[i]) == 0:
            continue
        iou = box_iou(np.asarray(pred_boxes[i], dtype=np.float64).reshape(-1, 4)[j : j + 1], gts[i])[0]
        iou[matched[i]] = -1.0
        k = int(iou.argmax())
        if iou[k] >= iou_threshold:
            matched[i][k] = True
            tp[r] = 1.0
    if not records:
        return 0.0
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(records) + 1)
    # all-point interpolation: precision envelope, summed over recall steps
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def prefixed(metrics: dict[str, float], prefix: str = VAL_PREFIX) -> dict[str, float]:
    """``{"hit_iou50": x}`` -> ``{"val_hit_iou50": x}``."""
    return {f"{prefix}{k}": v for k, v in metrics.items()}
