"""Percentile bootstrap confidence intervals over images (vectorised, deterministic for a seed).

* ``bootstrap_ci``: CI of the mean of a per-image metric (e.g. hit at IoU t, an array of 0/1).
* ``paired_bootstrap``: CI of the DIFFERENCE of the means of two methods evaluated on the same
  images (both resampled with the same indices), plus the fraction of resamples where the
  difference is > 0 -- the evidence for a "proposed > baseline" claim.
* ``localization_cis``: Table 1 cells (hit@t for several t) with CIs, one shared resample set.

Resampling is images with replacement, ``n_resamples`` times, by ``scipy.stats.bootstrap``
(``method="percentile"``): the CI is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
percentiles of the resampled means. NaN values are dropped first and counted (``n_dropped``).
scipy draws the indices in batches to bound memory at about ``chunk_elements`` indices; the batch
size does not change the result for a given seed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats

from grounding.evaluation import metrics as box_metrics

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap CI."""

    estimate: float
    low: float
    high: float
    n: int  # observations used (after dropping NaN)
    n_dropped: int
    n_resamples: int
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedInterval(Interval):
    """CI of mean(a) - mean(b) on the same images; ``fraction_positive`` = P*(diff > 0)."""

    fraction_positive: float = math.nan
    mean_a: float = math.nan
    mean_b: float = math.nan


def _check(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _column_means(x: np.ndarray, axis: int) -> np.ndarray:
    return x.mean(axis=axis)


def resampled_means(values: np.ndarray, n_resamples: int, seed: int, confidence: float = DEFAULT_CONFIDENCE,
                    chunk_elements: int = 4_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``scipy.stats.bootstrap`` (percentile) of the mean of the rows of ``values``.

    Args:
        values: (n,) or (n, m) float; columns are resampled together (same image indices).
        n_resamples: B.
        seed: ``numpy.random.default_rng`` seed.
        chunk_elements: about this many resampled indices in memory at once (scipy's ``batch``).

    Returns:
        ``(means, low, high)``: (B,) or (B, m) resampled means and the CI bounds, () or (m,).
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[0]
    if n == 0:
        raise ValueError("cannot bootstrap an empty sample")
    if n == 1:  # scipy needs two observations; every resample of one image is that image
        return np.repeat(v[None], n_resamples, axis=0), v[0], v[0]
    with warnings.catch_warnings():
        if n_resamples < 2:  # scipy's standard error (ddof=1) of one resample warns; it is not used here
            warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap((v,), _column_means, n_resamples=n_resamples, confidence_level=confidence,
                              method="percentile", vectorized=True, axis=0, batch=max(1, chunk_elements // n),
                              rng=np.random.default_rng(seed))
    return np.moveaxis(res.bootstrap_distribution, -1, 0), res.confidence_interval.low, res.confidence_interval.high


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_resamples: int = DEFAULT_RESAMPLES,
                 confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> Interval:
    """Percentile bootstrap CI of the mean of a per-image metric.

    Args:
        values: (n,) per-image values (0/1 hits, IoUs, ...); NaN are dropped and counted.

    Returns:
        ``Interval``; with no valid value every number is NaN and ``n`` = 0.
    """
    _check(n_resamples, confidence)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    ok = np.isfinite(v)
    v = v[ok]
    dropped = int((~ok).sum())
    if len(v) == 0:
        return Interval(math.nan, math.nan, math.nan, 0, dropped, n_resamples, confidence)
    _, lo, hi = resampled_means(v, n_resamples, seed, confidence)
    return Interval(float(v.mean()), float(lo), float(hi), len(v), dropped, n_resamples, confidence)


def paired_bootstrap(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                     n_resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                     seed: int = 0) -> PairedInterval:
    """Paired bootstrap of ``mean(a) - mean(b)`` for two methods on the same images.

    Args:
        a: (n,) per-image metric of method A (e.g. proposed).
        b: (n,) per-image metric of method B (e.g. baseline), same image order.

    Returns:
        ``PairedInterval``: estimate = observed difference, [low, high] its CI,
        ``fraction_positive`` = fraction of resamples with difference > 0. Images where either
        value is NaN are dropped and counted.
    """
    _check(n_resamples, confidence)
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"paired bootstrap needs equal lengths, got {len(x)} and {len(y)}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    dropped = int((~ok).sum())
    if len(x) == 0:
        return PairedInterval(math.nan, math.nan, math.nan, 0, dropped, n_resamples, confidence)
    diffs, lo, hi = resampled_means(x - y, n_resamples, seed, confidence)  # mean of diffs == diff of means
    return PairedInterval(float(x.mean() - y.mean()), float(lo), float(hi), len(x), dropped, n_resamples,
                          confidence, fraction_positive=float((diffs > 0).mean()),
                          mean_a=float(x.mean()), mean_b=float(y.mean()))


def per_image_best_iou(pred_boxes: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
                       top_k: int = 1) -> np.ndarray:
    """(n_gt_images,) best IoU per image WITH ground truth, by ``grounding.evaluation.metrics``' rule.

    Predictions must already be sorted by descending score. Images without ground-truth boxes are
    skipped, exactly as ``grounding.evaluation.metrics.localization_accuracy`` excludes them.
    """
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError(f"{len(pred_boxes)} prediction lists for {len(gt_boxes)} images")
    out = []
    for i, (p, g) in enumerate(zip(pred_boxes, gt_boxes)):
        g = box_metrics.validate_boxes(g, f"image {i} ground-truth boxes")
        if len(g):
            out.append(box_metrics.best_iou(p, g, top_k))
    return np.asarray(out, dtype=np.float64)


def localization_cis(pred_boxes: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
                     thresholds: Sequence[float] = (0.25, 0.5, 0.75), top_k: int = 1,
                     n_resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                     seed: int = 0) -> dict[str, dict]:
    """Table 1 cells with CIs: ``{hit_name(t, top_k): Interval.to_dict(), ...}``.

    The estimates equal ``grounding.evaluation.metrics.localization_accuracy`` (same matching rule); all
    thresholds share one set of resampled images. No image with ground truth gives NaN cells, n=0.
    """
    _check(n_resamples, confidence)
    ious = per_image_best_iou(pred_boxes, gt_boxes, top_k)
    hits = np.stack([(ious >= t).astype(np.float64) for t in thresholds], axis=1)  # (n, T)
    names = [box_metrics.hit_name(t, top_k) for t in thresholds]
    if len(ious) == 0:
        nan = Interval(math.nan, math.nan, math.nan, 0, 0, n_resamples, confidence).to_dict()
        return {name: dict(nan) for name in names}
    _, lo, hi = resampled_means(hits, n_resamples, seed, confidence)
    est = hits.mean(axis=0)
    return {name: Interval(float(est[j]), float(lo[j]), float(hi[j]), len(ious), 0, n_resamples,
                           confidence).to_dict() for j, name in enumerate(names)}


def per_image_hits(pred_boxes: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray], threshold: float,
                   top_k: int = 1) -> np.ndarray:
    """(n_gt_images,) 0/1 hit at IoU ``threshold`` per image with ground truth (for ``paired_bootstrap``)."""
    return (per_image_best_iou(pred_boxes, gt_boxes, top_k) >= threshold).astype(np.float64)
