"""Why a method that picks one box from the ROI pool does or does not localize (pure numpy).

Every method that ranks the frozen detector's ROIs (the proposed model by alpha, the detector by its
score) can only be as good as the pool it picks from. Per image with expert boxes:

* ``iou_i``: best IoU of ROI i with any expert box (``roi_ious``).
* **Pool oracle at t**: some ROI reaches IoU >= t: the ceiling of any re-ranking.
* **Random-ROI expectation at t**: the fraction of ROIs with IoU >= t: the hit rate of a uniformly
  random pick (a ranking must beat this to carry any localization signal).
* **Alpha-weighted IoU** ``sum_i alpha_i iou_i`` against the **pool mean IoU** ``mean_i iou_i``: equal
  when alpha is uniform or blind; larger when alpha puts mass on the right ROIs. Paired bootstrap CI.
* **Alpha entropy ratio** ``H(alpha) / log N``: 1 = uniform, 0 = one ROI.
* **Spearman(alpha, detector score)** per image: does alpha just re-learn the detector?
* **Chosen / expert area**: the top-1 box's area over the area of the expert box it overlaps most
  (median): a method that picks too-large or too-small boxes fails IoU 0.5 even when it points right.
* **Ranking hits** (``ranking_hits``): top-1 hit rate of any per-ROI score (detector score,
  report-conditioned R_roi, the probe).
* **Supervised-probe ceiling** (``probe_ceiling``): a logistic regression trained *on the held-out
  expert boxes themselves* (label: IoU >= 0.5), cross-validated by image. It says whether the ROI
  features hold the signal at all; it is a ceiling, never a method.

Images are the unit of every CI (percentile bootstrap over images, ``grounding.evaluation.bootstrap``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from grounding.evaluation import bootstrap
from grounding.evaluation.metrics import box_iou, hit_name, validate_boxes


def roi_ious(roi_boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """(N,) best IoU of each ROI (xyxy) with any expert box of the same frame; 0 without expert boxes."""
    r = validate_boxes(roi_boxes, "ROI boxes")
    g = validate_boxes(gt_boxes, "expert boxes")
    if len(r) == 0 or len(g) == 0:
        return np.zeros(len(r))
    return box_iou(r, g).max(axis=1)


def _ci(values: Sequence[float] | np.ndarray, n_resamples: int, confidence: float, seed: int) -> dict:
    return bootstrap.bootstrap_ci(np.asarray(values, dtype=np.float64), n_resamples, confidence, seed).to_dict()


def pool_summary(ious: Sequence[np.ndarray], thresholds: Sequence[float], n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> dict:
    """Method-independent facts about the pool: oracle, random expectation, mean IoU, size.

    Args:
        ious: per image (N_i,) ROI IoUs from :func:`roi_ious` (images with expert boxes only).
        thresholds: IoU thresholds t.

    Returns:
        ``{"oracle": {hit_name(t): Interval}, "random": {...}, "pool_mean_iou": Interval,
        "rois_per_image": float, "images": int}``; an image with an empty pool counts as a miss.
    """
    def per_image(fn) -> np.ndarray:
        return np.array([fn(v) if len(v) else 0.0 for v in ious], dtype=np.float64)

    return {
        "oracle": {hit_name(t): _ci(per_image(lambda v, t=t: float(v.max() >= t)), n_resamples, confidence, seed)
                   for t in thresholds},
        "random": {hit_name(t): _ci(per_image(lambda v, t=t: float((v >= t).mean())), n_resamples, confidence,
                                    seed) for t in thresholds},
        "pool_mean_iou": _ci(per_image(lambda v: float(v.mean())), n_resamples, confidence, seed),
        "rois_per_image": float(np.mean([len(v) for v in ious])) if len(ious) else math.nan,
        "images": len(ious),
    }


def entropy_ratio(alpha: np.ndarray) -> float:
    """H(alpha) / log N for one image's attention over N > 1 ROIs (NaN for N <= 1)."""
    a = np.asarray(alpha, dtype=np.float64)
    if len(a) <= 1:
        return math.nan
    p = a / a.sum() if a.sum() > 0 else np.full(len(a), 1.0 / len(a))
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / math.log(len(a)))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:  # scipy would warn and return NaN
        return math.nan
    return float(spearmanr(x, y).statistic)


def _area(b: np.ndarray) -> np.ndarray:
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def chosen_area_ratio(chosen: np.ndarray, gt_boxes: np.ndarray) -> float:
    """Area of the chosen box over the area of the expert box it overlaps most (the largest if none)."""
    c = validate_boxes(chosen, "chosen box")[:1]
    g = validate_boxes(gt_boxes, "expert boxes")
    if len(c) == 0 or len(g) == 0:
        return math.nan
    iou = box_iou(c, g)[0]
    j = int(np.argmax(iou)) if iou.max() > 0 else int(np.argmax(_area(g)))
    ga = _area(g[j:j + 1])[0]
    return float(_area(c)[0] / ga) if ga > 0 else math.nan


def ranking_hits(rank_scores: Sequence[np.ndarray], ious: Sequence[np.ndarray], thresholds: Sequence[float],
                 n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Top-1 hit rate when each image's ROIs are ranked by ``rank_scores`` (ties: first ROI).

    Returns:
        ``{hit_name(t): Interval}``; an image with an empty pool is a miss.
    """
    if len(rank_scores) != len(ious):
        raise ValueError(f"{len(rank_scores)} score lists for {len(ious)} images")
    best = np.array([v[int(np.argmax(s))] if len(v) else 0.0 for s, v in zip(rank_scores, ious)])
    return {hit_name(t): _ci((best >= t).astype(np.float64), n_resamples, confidence, seed) for t in thresholds}


def ranking_vs_random(rank_scores: Sequence[np.ndarray], ious: Sequence[np.ndarray], thresholds: Sequence[float],
                      n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Paired bootstrap of (top-1 hit by ``rank_scores``) - (random-ROI expectation), per image.

    Returns:
        ``{hit_name(t): PairedInterval}``: a CI above 0 means the ranking carries localization signal.
    """
    best = np.array([v[int(np.argmax(s))] if len(v) else 0.0 for s, v in zip(rank_scores, ious)])
    out = {}
    for t in thresholds:
        rand = np.array([float((v >= t).mean()) if len(v) else 0.0 for v in ious])
        out[hit_name(t)] = bootstrap.paired_bootstrap((best >= t).astype(np.float64), rand, n_resamples,
                                                      confidence, seed).to_dict()
    return out


def attention_summary(alphas: Sequence[np.ndarray], ious: Sequence[np.ndarray], scores: Sequence[np.ndarray],
                      chosen: Sequence[np.ndarray], gt: Sequence[np.ndarray], n_resamples: int = 1000,
                      confidence: float = 0.95, seed: int = 0) -> dict:
    """How one method's per-ROI attention relates to the pool (module docstring).

    Args:
        alphas: per image (N_i,) attention over the pool (any non-negative weights; normalised here).
        ious: per image (N_i,) ROI IoUs. scores: per image (N_i,) detector scores.
        chosen: per image the method's top-1 box (1, 4) (or (0, 4)), same frame as ``gt``.
        gt: per image expert boxes.

    Returns:
        ``weighted_iou`` (Interval), ``weighted_minus_pool_mean`` (PairedInterval, the key test),
        ``entropy_ratio`` and ``spearman_alpha_score`` (mean over images), ``chosen_to_expert_area``
        (median ratio) and ``images``.
    """
    n = len(alphas)
    if not (len(ious) == len(scores) == len(chosen) == len(gt) == n):
        raise ValueError("alphas, ious, scores, chosen and gt need one entry per image")
    weighted, pool_mean, ent, rho, area = [], [], [], [], []
    for a, v, s, c, g in zip(alphas, ious, scores, chosen, gt):
        a = np.asarray(a, dtype=np.float64)
        if len(a) != len(v) or len(a) != len(s):
            raise ValueError(f"alpha ({len(a)}), IoU ({len(v)}) and score ({len(s)}) lengths differ")
        if len(a) == 0:
            weighted.append(0.0)
            pool_mean.append(0.0)
            continue
        p = a / a.sum() if a.sum() > 0 else np.full(len(a), 1.0 / len(a))
        weighted.append(float((p * v).sum()))
        pool_mean.append(float(v.mean()))
        ent.append(entropy_ratio(p))
        rho.append(spearman(p, s))
        area.append(chosen_area_ratio(c, g))
    return {
        "weighted_iou": _ci(weighted, n_resamples, confidence, seed),
        "weighted_minus_pool_mean": bootstrap.paired_bootstrap(weighted, pool_mean, n_resamples, confidence,
                                                               seed).to_dict(),
        "entropy_ratio": float(np.nanmean(ent)) if np.isfinite(ent).any() else math.nan,
        "spearman_alpha_score": float(np.nanmean(rho)) if np.isfinite(rho).any() else math.nan,
        "chosen_to_expert_area": float(np.nanmedian(area)) if np.isfinite(area).any() else math.nan,
        "images": n,
    }


def probe_ceiling(features: Sequence[np.ndarray], ious: Sequence[np.ndarray], thresholds: Sequence[float],
                  label_iou: float = 0.5, folds: int = 5, seed: int = 0, n_resamples: int = 1000,
                  confidence: float = 0.95) -> dict:
    """Supervised-probe ceiling: logistic regression on ROI features, label ``iou >= label_iou``,
    ``folds``-fold cross-validation grouped by image; out-of-fold scores rank each image's ROIs.

    A ceiling trained on the evaluation boxes themselves: it tells whether the features can
    separate good from bad ROIs at all. Never a method.

    Args:
        features: per image (N_i, F) ROI features (the caller decides: r_i, geometry, score).
        ious: per image (N_i,) ROI IoUs.

    Returns:
        ``{"auc": float, "hits": {hit_name(t): Interval}, "folds": int, "positives": int}``, or
        ``{"skipped": reason}`` when there are too few images or only one class.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keep = [i for i, v in enumerate(ious) if len(v)]
    if len(keep) < folds:
        return {"skipped": f"{len(keep)} images with ROIs, fewer than {folds} folds"}
    x = np.concatenate([np.asarray(features[i], dtype=np.float64) for i in keep])
    y = np.concatenate([np.asarray(ious[i]) >= label_iou for i in keep]).astype(int)
    groups = np.concatenate([np.full(len(ious[i]), k) for k, i in enumerate(keep)])
    if y.min() == y.max():
        return {"skipped": f"every ROI is {'a positive' if y[0] else 'a negative'} at IoU {label_iou}"}
    oof = np.zeros(len(y))
    for train, test in GroupKFold(n_splits=folds).split(x, y, groups):
        if y[train].min() == y[train].max():
            oof[test] = float(y[train][0])
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed))
        probe.fit(x[train], y[train])
        oof[test] = probe.decision_function(x[test])
    per_image = np.split(oof, np.cumsum([len(ious[i]) for i in keep])[:-1])
    hits_ious = [ious[i] for i in keep] + [np.zeros(0)] * (len(ious) - len(keep))  # empty pools are misses
    per_image = list(per_image) + [np.zeros(0)] * (len(ious) - len(keep))
    return {"auc": float(roc_auc_score(y, oof)), "folds": folds, "positives": int(y.sum()),
            "label_iou": label_iou,
            "hits": ranking_hits(per_image, hits_ious, thresholds, n_resamples, confidence, seed)}


__all__ = ["attention_summary", "chosen_area_ratio", "entropy_ratio", "pool_summary", "probe_ceiling",
           "ranking_hits", "ranking_vs_random", "roi_ious", "spearman"]
