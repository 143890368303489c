"""ROI-pool diagnostics on hand-made pools whose answers are known."""

import math

import numpy as np
import pytest

from grounding.evaluation import pool_diagnostics as pdx
from grounding.evaluation.report import pool_diagnostics_section

GT = np.array([[0.0, 0.0, 10.0, 10.0]])
# ROI 0 = the expert box (IoU 1), ROI 1 = half of it (IoU 0.5), ROI 2 = a quarter (IoU 0.25), ROI 3 off it
POOL = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 5, 5], [20, 20, 30, 30]], dtype=float)


def test_roi_ious_are_best_iou_with_any_expert_box():
    ious = pdx.roi_ious(POOL, np.vstack([GT, [[20, 20, 30, 30]]]))
    np.testing.assert_allclose(ious, [1.0, 0.5, 0.25, 1.0])
    np.testing.assert_allclose(pdx.roi_ious(POOL, GT), [1.0, 0.5, 0.25, 0.0])
    assert pdx.roi_ious(POOL, np.zeros((0, 4))).tolist() == [0.0] * 4


def test_oracle_random_and_pool_mean():
    ious = [np.array([1.0, 0.5, 0.25, 0.0]), np.array([0.3, 0.1]), np.zeros(0)]
    s = pdx.pool_summary(ious, (0.25, 0.5), n_resamples=50)
    assert s["oracle"]["hit_iou25"]["estimate"] == pytest.approx(2 / 3)  # images 1, 2 have a ROI >= .25
    assert s["oracle"]["hit_iou50"]["estimate"] == pytest.approx(1 / 3)
    # random pick: image 1 -> 3/4 at .25 and 2/4 at .5, image 2 -> 1/2 and 0, empty pool -> 0
    assert s["random"]["hit_iou25"]["estimate"] == pytest.approx((0.75 + 0.5 + 0) / 3)
    assert s["random"]["hit_iou50"]["estimate"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert s["pool_mean_iou"]["estimate"] == pytest.approx((1.75 / 4 + 0.2 + 0) / 3)
    assert s["images"] == 3 and s["rois_per_image"] == pytest.approx(2.0)


def test_weighted_iou_entropy_and_rank_correlation():
    ious = [np.array([1.0, 0.5, 0.25, 0.0])] * 2
    scores = [np.array([0.9, 0.8, 0.7, 0.6])] * 2
    chosen = [POOL[:1], POOL[3:4]]
    gt = [GT, GT]
    sharp = [np.array([1.0, 0, 0, 0]), np.array([1.0, 0, 0, 0])]
    s = pdx.attention_summary(sharp, ious, scores, chosen, gt, n_resamples=50)
    assert s["weighted_iou"]["estimate"] == pytest.approx(1.0)
    d = s["weighted_minus_pool_mean"]
    assert d["estimate"] == pytest.approx(1.0 - 1.75 / 4) and d["low"] > 0
    assert s["entropy_ratio"] == pytest.approx(0.0)
    uniform = [np.full(4, 0.25)] * 2
    u = pdx.attention_summary(uniform, ious, scores, chosen, gt, n_resamples=50)
    assert u["weighted_minus_pool_mean"]["estimate"] == pytest.approx(0.0)
    assert u["entropy_ratio"] == pytest.approx(1.0)
    assert math.isnan(u["spearman_alpha_score"])  # constant alpha has no rank
    anti = [np.array([0.1, 0.2, 0.3, 0.4])] * 2
    assert pdx.attention_summary(anti, ious, scores, chosen, gt, n_resamples=50)["spearman_alpha_score"] == \
        pytest.approx(-1.0)
    # chosen box = expert box in image 1 (ratio 1); image 2 picks a box that misses: ratio to the largest box
    assert s["chosen_to_expert_area"] == pytest.approx(1.0)
    assert pdx.chosen_area_ratio(POOL[2:3], GT) == pytest.approx(0.25)


def test_ranking_hits_take_the_argmax():
    ious = [np.array([0.1, 0.6]), np.array([0.7, 0.2])]
    r = pdx.ranking_hits([np.array([0.0, 1.0]), np.array([0.0, 1.0])], ious, (0.5,), n_resamples=20)
    assert r["hit_iou50"]["estimate"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pdx.ranking_hits([np.zeros(2)], ious, (0.5,))


def test_probe_ceiling_finds_separable_features_and_fails_on_noise():
    rng = np.random.default_rng(0)
    feats, ious = [], []
    for _ in range(40):
        iou = rng.uniform(0, 0.45, 12)
        good = rng.integers(12)
        iou[good] = 0.8  # one good ROI per image, marked by feature 0
        f = rng.normal(size=(12, 3))
        f[:, 0] = (iou >= 0.5) * 3.0 + rng.normal(scale=0.2, size=12)
        feats.append(f)
        ious.append(iou)
    p = pdx.probe_ceiling(feats, ious, (0.5,), n_resamples=50)
    assert p["auc"] > 0.95 and p["hits"]["hit_iou50"]["estimate"] > 0.9
    noise = [rng.normal(size=f.shape) for f in feats]
    q = pdx.probe_ceiling(noise, ious, (0.5,), n_resamples=50)
    assert q["auc"] < 0.7 and q["hits"]["hit_iou50"]["estimate"] < 0.4  # chance = 1/12
    assert "skipped" in pdx.probe_ceiling(feats[:3], ious[:3], (0.5,))
    assert "skipped" in pdx.probe_ceiling(feats, [np.zeros(12)] * 40, (0.5,))


def test_report_section_lists_every_row():
    ious = [np.array([1.0, 0.5, 0.25, 0.0])] * 6
    scores = [np.array([0.9, 0.8, 0.7, 0.6])] * 6
    pool = pdx.pool_summary(ious, (0.25, 0.5), n_resamples=20)
    method = pdx.attention_summary([np.full(4, 0.25)] * 6, ious, scores, [POOL[:1]] * 6, [GT] * 6, n_resamples=20)
    method["alpha_ranking"] = pdx.ranking_hits([np.full(4, 0.25)] * 6, ious, (0.25, 0.5), n_resamples=20)
    method["alpha_vs_random"] = pdx.ranking_vs_random([np.full(4, 0.25)] * 6, ious, (0.25, 0.5), n_resamples=20)
    method["report_conditioned_ranking"] = {"images": 6, "hits": method["alpha_ranking"], "random": pool["random"]}
    pd = {"pool": pool, "detector_score_ranking": pdx.ranking_hits(scores, ious, (0.25, 0.5), n_resamples=20),
          "probe_ceiling": {"skipped": "test"}, "methods": {"proposed": method}}
    text = pool_diagnostics_section(pd, (0.25, 0.5))
    for label in ("oracle", "random ROI", "detector score", "proposed: alpha", "report-conditioned",
                  "Probe ceiling skipped"):
        assert label in text
    assert "| proposed | 0.438 | 0.438 | +0.000 [+0.000, +0.000] | +50.0 [" in text


def test_ranking_vs_random_is_paired_per_image():
    ious = [np.array([0.9, 0.1, 0.1, 0.1])] * 10  # random expectation at 0.5: 1/4
    good = pdx.ranking_vs_random([np.array([1.0, 0, 0, 0])] * 10, ious, (0.5,), n_resamples=50)["hit_iou50"]
    assert good["estimate"] == pytest.approx(0.75) and good["low"] == pytest.approx(0.75)
    bad = pdx.ranking_vs_random([np.array([0, 1.0, 0, 0])] * 10, ious, (0.5,), n_resamples=50)["hit_iou50"]
    assert bad["estimate"] == pytest.approx(-0.25) and bad["high"] < 0
