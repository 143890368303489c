"""Localization ablation: the per-variant evaluation on the hand-made cache of test_evaluation."""

from __future__ import annotations

import pyarrow as pa
import pytest

from grounding.evaluation.ablation import evaluate_variant, markdown_table, pool_key
from grounding.bench.train import ROI_CACHE_SCHEMA
from grounding.model.checkpoint import load_model
from grounding.config import GroundingConfig
from test_evaluation import _cache_rows, _export  # noqa: E402  (tests/ is on sys.path under pytest)


def test_evaluate_variant_picks_by_alpha_and_pairs_with_the_detector(tmp_path):
    table = pa.Table.from_pylist(_cache_rows(), schema=ROI_CACHE_SCHEMA)
    (tmp_path / "m").mkdir()
    model = load_model(_export(tmp_path / "m", 0))[0]
    r = evaluate_variant(model, table, n_resamples=100)
    assert r["images"] == 4  # e4's annotation has zero boxes
    # alpha ~1 on ROI IoU 1.0 (e0), 0.6 (e1), 0.43 (e2), 0.0 (e3): as evaluate's Table 1 gives
    assert [r["hits"][k]["estimate"] for k in ("hit_iou25", "hit_iou50", "hit_iou75")] == \
        pytest.approx([0.75, 0.5, 0.25])
    assert r["retinanet"]["hit_iou50"]["estimate"] == pytest.approx(0.25)  # only e1's top detection is the GT
    assert r["vs_retinanet"]["hit_iou25"]["estimate"] == pytest.approx(0.5)
    assert r["diagnostics"]["pool"]["random"]["hit_iou50"]["estimate"] == pytest.approx(0.5)
    row = {"variant": "paper", "paper": True, "epochs": 3, **r}
    text = markdown_table([row])
    assert "| paper | yes | 75.0 | 50.0 | +25.0 [" in text and "RetinaNet top-1 on the same 4 images" in text


def test_pool_key_names_the_pool():
    cfg = GroundingConfig().with_overrides({"detector.roi_pool": "per_location", "detector.num_rois": 100})
    assert pool_key(cfg) == "per_location-tower-100" and pool_key(GroundingConfig()) == "top_anchors-tower-32"
