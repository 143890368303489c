"""Report rendering: metrics.json (strict JSON, atomic), Markdown tables, figure functions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from grounding.evaluation import figures
from grounding.evaluation import report
from grounding.evaluation.bootstrap import localization_cis, paired_bootstrap, per_image_hits


def _images(n=3, size=64):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (size, size + 8 * i), dtype=np.uint8) for i in range(n)]


def _png_ok(path, min_side=200):
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= min_side
        arr = np.asarray(im.convert("RGB"))
    return arr


def test_to_jsonable_and_strict_metrics_json(tmp_path):
    m = {"a": math.nan, "b": np.float32(0.5), "c": (1, np.int64(2)), "d": {"e": np.array([1.0, math.inf])}}
    path = report.write_metrics_json(str(tmp_path / "m.json"), m)
    text = open(path).read()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": 0.5, "c": [1, 2], "d": {"e": [1.0, None]}}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp file left behind


def test_attribute_metrics_against_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    t = (rng.random((40, 3)) < 0.4).astype(int)
    t[:, 2] = 0  # one attribute never positive: AUC undefined
    p = np.clip(t * 0.5 + rng.random((40, 3)) * 0.6, 0, 1)
    out = report.attribute_metrics(t, p, ["left", "right", "severe"])
    assert out["per_attribute"]["left"]["auc"] == pytest.approx(roc_auc_score(t[:, 0], p[:, 0]))
    assert out["per_attribute"]["right"]["accuracy"] == pytest.approx(((p[:, 1] >= 0.5) == t[:, 1]).mean())
    assert math.isnan(out["per_attribute"]["severe"]["auc"]) and out["n_auc_defined"] == 2
    assert out["mean_auc"] == pytest.approx(np.mean([out["per_attribute"][a]["auc"] for a in ("left", "right")]))
    with pytest.raises(ValueError):
        report.attribute_metrics(t, p[:, :2], ["a", "b", "c"])


def _metrics():
    gt = [np.array([[10, 10, 40, 40.0]])] * 6
    good = [np.array([[12, 12, 40, 41.0]])] * 5 + [np.zeros((0, 4))]
    bad = [np.array([[30, 30, 60, 60.0]])] * 6
    loc = {"gradcam": localization_cis(bad, gt, n_resamples=100), "proposed": localization_cis(good, gt, n_resamples=100),
           "retinanet": localization_cis(bad, gt, n_resamples=100)}
    comp = {"proposed - RetinaNet, IoU >= 0.5": paired_bootstrap(per_image_hits(good, gt, 0.5),
                                                                  per_image_hits(bad, gt, 0.5), 100).to_dict()}
    sev = {"n_rows": 10, "n_scored": 9, "n_patients": 5, "n_missing_score": 1, "folds_requested": 5, "folds_used": 5,
           "warnings": [], "columns": {c: {"n_missing_probability": 0, "metrics": {
               k: {"mean": 0.5, "std": 0.1, "n_valid_folds": 4, "n_nan_folds": 1}
               for k in ("pearson_r", "pearson_p", "spearman_rho", "spearman_p", "r2", "mae", "mse")}, "folds": []}
               for c in ("p_severe", "p_mild")}}
    attrs = report.attribute_metrics(np.array([[1, 0], [0, 1], [1, 1]]), np.array([[0.9, 0.2], [0.1, 0.7], [0.6, 0.4]]),
                                     ["left", "right"])
    return {"localization": loc, "comparisons": comp, "severity": sev, "attributes": attrs}


def test_write_report_tables_in_paper_order(tmp_path):
    fig = figures.training_curves([{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}], str(tmp_path / "c.png"))
    path = report.write_report(str(tmp_path), _metrics(), {"training curves": fig})
    text = open(path).read()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "IoU" not in line and "---" not in line]
    order = [r.split("|")[1].strip() for r in rows[:3]]
    assert order == ["Supervised RetinaNet (baseline)", "Proposed (L_trip + L_BCE)", "Grad-CAM"]
    assert "| Proposed (L_trip + L_BCE) | 83.3 [" in text  # 5 of 6 hits, in %, with a CI
    assert "| Supervised RetinaNet (baseline) | 0.0 [0.0, 0.0] | 0.0 [0.0, 0.0] | 0.0 [0.0, 0.0] | 6 |" in text
    assert "0.500 +/- 0.100 (4/5 folds valid)" in text and "P(severe) | P(mild)" in text
    assert "| **mean** | **1.000**" in text and "![training curves](c.png)" in text
    assert "+83.3" in text  # paired difference in percentage points
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["localization"]["proposed"]["hit_iou50"]["estimate"] == pytest.approx(5 / 6)


def test_boxes_grid_draws_green_and_red(tmp_path):
    imgs = [np.full((80, 80), 40, np.uint8) for _ in range(3)]
    gt = [np.array([[10, 10, 40, 40.0]]), np.zeros((0, 4)), np.array([[5, 5, 20, 30.0]])]
    pred = [np.array([[30, 30, 70, 70.0]]), np.array([[1, 1, 9, 9.0]]), np.zeros((0, 4))]
    probs = [{"left": 0.9, "right": 0.1, "severe": 0.7, "mild": 0.3}] * 3
    path = figures.boxes_grid(imgs, gt, pred, str(tmp_path / "grid.png"), probs, titles=["a", "b", "c"],
                              pred_scores=[[0.8], [0.4], []], ncols=2)
    arr = _png_ok(path).astype(int)
    green = (arr[..., 1] > 150) & (arr[..., 0] < 100) & (arr[..., 2] < 150)
    red = (arr[..., 0] > 200) & (arr[..., 1] < 110) & (arr[..., 2] < 110)
    assert green.sum() > 100 and red.sum() > 100


def test_severity_scatter_training_curves_and_case_study(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random(50)
    y = np.clip(x + rng.normal(0, 0.1, 50), 0, 1)
    x[0] = np.nan
    _png_ok(figures.severity_scatter({"P(severe)": (x, y, 1.0, 0.0), "P(mild)": (1 - x, y, -1.0, 1.0, "r=-0.9")},
                                     str(tmp_path / "s.png")))
    csv = tmp_path / "h.csv"
    csv.write_text("epoch,train_loss,val_hit_iou50,run\n0,1.0,0.2,x\n1,0.7,0.35,x\n2,0.6,0.4,x\n")
    assert figures.read_history(str(csv))[1] == {"epoch": 1.0, "train_loss": 0.7, "val_hit_iou50": 0.35}
    _png_ok(figures.training_curves(str(csv), str(tmp_path / "t.png")))
    imgs = _images(3)
    _png_ok(figures.case_study(imgs, [np.array([[5, 5, 30, 30.0]])] * 3,
                               [{"bilateral": 0.8, "patchy": 0.6, "lower": 0.55, "severe": 0.2}] * 3,
                               ["Patchy bilateral lower lobe opacities. " * 8, "", "Improving."], [0, 3, None],
                               str(tmp_path / "case.png")))
    with pytest.raises(ValueError):
        figures.case_study(imgs, [], [], [], [], str(tmp_path / "x.png"))
    with pytest.raises(ValueError):
        figures.training_curves([], str(tmp_path / "y.png"))
