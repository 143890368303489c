"""Bootstrap CIs: determinism, chunking invariance, coverage on known distributions, paired differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grounding.evaluation import bootstrap as bs
from grounding.evaluation.metrics import localization_accuracy


def test_deterministic_and_chunking_does_not_change_the_result():
    v = np.random.default_rng(0).integers(0, 2, 150).astype(float)
    a = bs.bootstrap_ci(v, 500, seed=3)
    b = bs.bootstrap_ci(v, 500, seed=3)
    assert a == b
    assert bs.bootstrap_ci(v, 500, seed=4) != a
    # resampled means are the same whether drawn in one chunk or many of 7 rows
    np.testing.assert_array_equal(bs.resampled_means(v, 50, 1)[0], bs.resampled_means(v, 50, 1, chunk_elements=1000)[0])


def test_interval_matches_a_loop_reference():
    v = np.random.default_rng(1).normal(size=40)
    ci = bs.bootstrap_ci(v, 300, confidence=0.9, seed=7)
    rng = np.random.default_rng(7)
    means = np.array([v[rng.integers(0, 40, size=(1, 40))[0]].mean() for _ in range(300)])
    lo, hi = np.percentile(means, [5, 95])
    assert ci.estimate == pytest.approx(v.mean())
    assert ci.low == pytest.approx(lo) and ci.high == pytest.approx(hi)
    assert ci.low < ci.estimate < ci.high and ci.n == 40


@pytest.mark.parametrize("p", [0.3, 0.7])
def test_coverage_of_a_bernoulli_mean(p):
    """95 % CIs of hit rates (0/1 per image) contain the true rate about 95 % of the time."""
    rng = np.random.default_rng(11)
    trials, n = 300, 150
    covered = 0
    for t in range(trials):
        ci = bs.bootstrap_ci(rng.random(n) < p, 400, seed=t)
        covered += ci.low <= p <= ci.high
    assert 0.90 <= covered / trials <= 0.985


def test_coverage_of_a_normal_mean_and_width_shrinks_with_n():
    rng = np.random.default_rng(5)
    covered = 0
    for t in range(200):
        ci = bs.bootstrap_ci(rng.normal(2.0, 1.0, 80), 400, seed=t)
        covered += ci.low <= 2.0 <= ci.high
    assert 0.89 <= covered / 200 <= 0.99
    small = bs.bootstrap_ci(rng.normal(size=50), 400, seed=0)
    big = bs.bootstrap_ci(rng.normal(size=5000), 400, seed=0)
    assert (big.high - big.low) < (small.high - small.low) / 5


def test_nan_dropped_and_counted_empty_gives_nan():
    ci = bs.bootstrap_ci([1.0, np.nan, 0.0, 1.0], 100, seed=0)
    assert ci.n == 3 and ci.n_dropped == 1 and ci.estimate == pytest.approx(2 / 3)
    empty = bs.bootstrap_ci([np.nan], 100)
    assert empty.n == 0 and math.isnan(empty.estimate) and math.isnan(empty.low)
    with pytest.raises(ValueError):
        bs.bootstrap_ci([1.0], 0)
    with pytest.raises(ValueError):
        bs.bootstrap_ci([1.0], 10, confidence=1.0)


def test_paired_difference():
    rng = np.random.default_rng(2)
    base = (rng.random(200) < 0.4).astype(float)
    better = np.maximum(base, (rng.random(200) < 0.25).astype(float))  # proposed hits a superset
    d = bs.paired_bootstrap(better, base, 1000, seed=0)
    assert d.estimate == pytest.approx(better.mean() - base.mean()) and d.estimate > 0
    assert d.low > 0 and d.fraction_positive == 1.0
    assert d.mean_a == pytest.approx(better.mean()) and d.mean_b == pytest.approx(base.mean())
    same = bs.paired_bootstrap(base, base, 200, seed=0)
    assert same.estimate == 0 and same.low == 0 and same.high == 0 and same.fraction_positive == 0
    # pairing matters: the paired CI is narrower than the CI of two independent resamples
    noisy = np.clip(base + (rng.random(200) < 0.1), 0, 1)
    paired = bs.paired_bootstrap(noisy, base, 1000, seed=1)
    ia, ib = bs.bootstrap_ci(noisy, 1000, seed=1), bs.bootstrap_ci(base, 1000, seed=2)
    assert paired.high - paired.low < (ia.high - ia.low) + (ib.high - ib.low)
    with pytest.raises(ValueError, match="equal lengths"):
        bs.paired_bootstrap([1, 0], [1, 0, 1])
    nan_pair = bs.paired_bootstrap([1.0, np.nan, 0.0], [0.0, 1.0, np.nan], 50)
    assert nan_pair.n == 1 and nan_pair.n_dropped == 2


def test_localization_cis_agree_with_metrics():
    gt = [np.array([[10, 10, 50, 50.0]]), np.zeros((0, 4)), np.array([[0, 0, 20, 20.0], [60, 60, 90, 90.0]]),
          np.array([[5, 5, 25, 25.0]])]
    pred = [np.array([[12, 12, 50, 52.0]]), np.array([[1, 1, 5, 5.0]]), np.array([[60, 62, 90, 90.0]]),
            np.zeros((0, 4))]
    cis = bs.localization_cis(pred, gt, (0.25, 0.5, 0.75), n_resamples=200, seed=0)
    ref = localization_accuracy(pred, gt, (0.25, 0.5, 0.75))
    for key in ("hit_iou25", "hit_iou50", "hit_iou75"):
        assert cis[key]["estimate"] == pytest.approx(ref[key])
        assert cis[key]["n"] == 3 and cis[key]["low"] <= cis[key]["estimate"] <= cis[key]["high"]
    np.testing.assert_array_equal(bs.per_image_hits(pred, gt, 0.5), [1, 1, 0])
    none = bs.localization_cis(pred[1:2], gt[1:2], (0.5,), n_resamples=10)
    assert none["hit_iou50"]["n"] == 0 and math.isnan(none["hit_iou50"]["estimate"])


@pytest.mark.ray
def test_localization_cis_ray_equals_local(ray_local):
    from grounding.distributed.tasks import localization_cis_ray

    gt = [np.array([[0, 0, 10, 10.0]])] * 5
    methods = {"a": [np.array([[0, 0, 10, 9.0]])] * 3 + [np.zeros((0, 4))] * 2, "b": [np.array([[5, 5, 15, 15.0]])] * 5}
    remote = localization_cis_ray(methods, gt, n_resamples=50, seed=3)
    assert remote == {k: bs.localization_cis(v, gt, n_resamples=50, seed=3) for k, v in methods.items()}
