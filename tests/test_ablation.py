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


def _row(variant: str, hit50: float, widen: float, retina: float = 0.4, paper: bool = True) -> dict:
    return {"variant": variant, "paper": paper, "hits": {"hit_iou50": {"estimate": hit50}},
            "retinanet": {"hit_iou50": {"estimate": retina}},
            "diagnostics": {"methods": {"proposed": {"weighted_minus_pool_mean": {"estimate": widen}}}}}


def test_seed_table_pairs_variants_by_seed_and_skips_incomplete_ones():
    from grounding.evaluation.ablation import seed_markdown, seed_table

    by_seed = {0: [_row("adopted", 0.30, 0.01), _row("ext", 0.40, 0.03, paper=False), _row("only0", 0.9, 0.1)],
               1: [_row("adopted", 0.20, 0.02), _row("ext", 0.26, 0.05, paper=False)],
               2: [_row("adopted", 0.25, 0.00), _row("ext", 0.25, 0.04, paper=False)]}
    rows = {r["variant"]: r for r in seed_table(by_seed, reference="adopted")}
    assert set(rows) == {"adopted", "ext"}  # only0 did not run on every seed
    assert rows["adopted"]["hit_iou50_mean_sd"] == pytest.approx((0.25, 0.05))
    assert rows["ext"]["minus_reference"] == pytest.approx([0.10, 0.06, 0.0])
    assert rows["ext"]["minus_reference_mean_sd"][0] == pytest.approx(0.16 / 3)
    assert rows["ext"]["weighted_minus_pool_mean_sd"] == pytest.approx((0.04, 0.01))
    assert "minus_reference" not in rows["adopted"]
    text = seed_markdown(list(rows.values()), "adopted")
    assert "| ext | extension | 40.0 / 26.0 / 25.0 | 30.3 +/- 8.4 | +5.3 +/- 5.0 |" in text
