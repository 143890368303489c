"""evaluate: exact Table 1 hit rates on a hand-made ROI cache, CIs, comparisons, outputs, Ray parity."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from grounding.evaluation import localization as ev
from grounding.bench.train import ROI_CACHE_SCHEMA, synthetic_vectors
from grounding.model.checkpoint import export_model
from grounding.config import GroundingConfig
from grounding.evaluation.run import EvalSettings, run_evaluation
from grounding.model.grounding_model import build_model
from grounding.data.prepared import PREPARED_SCHEMA, pixels_to_bytes
from grounding.data.schema import empty_manifest_row
from grounding.data.storage import write_table
from grounding.text.vocabulary import ATTRIBUTES, VOCABULARY_VERSION

W, H = 200, 100  # original image size (non-square: normalised -> pixel mapping is checked)
GT = [50.0, 20.0, 150.0, 80.0]  # = [0.25, 0.2, 0.75, 0.8] normalised
ROIS = np.array([[0.25, 0.2, 0.75, 0.8],  # r0: IoU 1.0 with GT
                 [0.375, 0.2, 0.875, 0.8],  # r1: IoU 0.6
                 [0.0, 0.0, 0.1, 0.1],  # r2: IoU 0
                 [0.45, 0.2, 0.95, 0.8]], dtype=np.float32)  # r3: IoU 0.43
FAR = [0.0, 0.0, 20.0, 10.0]
C = 4  # feature width; feature 0 marks the ROI the proposed model must pick, feature 1 the no-cls pick


def _roi_row(image_id, pick, detector, purpose="eval", split="test", boxes=(GT,), attributes=(), patient="p1",
             offset=None, has_boxes=True):
    feats = np.zeros((4, C), dtype=np.float16)
    feats[pick, 0] = 1.0
    feats[2, 1] = 1.0  # the no-cls model always picks the far ROI r2
    det_boxes, det_scores = detector
    row = empty_manifest_row()
    row.pop("report_text")
    row.update(image_id=image_id, patient_id=patient, study_id="s" + image_id, purpose=purpose, split=split,
               width=W, height=H, has_boxes=has_boxes, boxes=[v for b in boxes for v in b],
               attributes=list(attributes), offset_days=offset, pneumonia_positive=True)
    row.update(roi_features=feats.tobytes(), roi_scores=[0.9, 0.8, 0.7, 0.6], roi_boxes=ROIS.reshape(-1).tolist(),
               neg_roi_features=np.zeros((4, C), np.float16).tobytes(), neg_roi_scores=[0.0] * 4,
               neg_roi_boxes=ROIS.reshape(-1).tolist(), num_rois=4, feature_dim=C,
               detector_boxes=[v for b in det_boxes for v in b], detector_scores=list(det_scores))
    return row


def _cache_rows():
    miss = ([FAR], [0.9])
    return [
        _roi_row("e0", 0, miss, attributes=["left"], offset=0),  # proposed hits at all t
        _roi_row("e1", 1, ([FAR, GT], [0.5, 0.9]), attributes=["right", "lower"], offset=3),  # baseline: top = GT
        _roi_row("e2", 3, miss, attributes=["left", "lower"]),  # proposed IoU 0.43
        _roi_row("e3", 2, ([], []), split="val", attributes=[]),  # proposed misses; no detections
        _roi_row("e4", 0, miss, boxes=(), attributes=["right"]),  # annotated, zero boxes: excluded from Table 1
        _roi_row("g0", 0, miss, purpose="grounding", split="train", boxes=(), has_boxes=False, attributes=["left"]),
        _roi_row("d0", 0, miss, purpose="detector", split="test", attributes=[]),  # box site, no report
    ]


def _export(directory, feature: int):
    """A GroundingModel whose alpha is ~1 on the ROI with feature ``feature`` = 1 (hand-set weights)."""
    cfg = GroundingConfig().with_overrides({"model.roi_hidden": 0, "model.alpha_hidden": 4, "model.max_roi_area": 1.0,
                                            "model.classifier_hidden": [4], "model.dropout": 0.0})
    v = synthetic_vectors(4)
    model = build_model(C, v.vectors, v.negative_vectors, cfg.model)
    with torch.no_grad():
        model.embed.w1.weight.copy_(torch.eye(4, C))
        model.embed.w1.bias.zero_()
        model.embed.w2.weight.zero_()
        model.embed.w2.bias.zero_()
        model.alpha_mlp[0].weight.zero_()
        model.alpha_mlp[0].weight[0, feature] = 1.0
        model.alpha_mlp[0].bias.zero_()
        model.alpha_mlp[2].weight.fill_(0.0)
        model.alpha_mlp[2].weight[0, 0] = 20.0
    export_model(directory, model_state=model.state_dict(), config=cfg.to_dict(), config_yaml=cfg.to_yaml(),
                 vocabulary=ATTRIBUTES, vocabulary_version=VOCABULARY_VERSION, epoch=0)
    return str(directory / "model.pt")


def _prepared(tmp_path, rows):
    """Prepared pixels for the eval rows + 8 grounding training rows with report labels (CAM)."""
    rng = np.random.default_rng(0)
    out = []
    for r in rows:
        p = {k: v for k, v in r.items() if k in PREPARED_SCHEMA.names}
        out.append({**p, "pixels": pixels_to_bytes(rng.integers(0, 255, (32, 32), dtype=np.uint8)),
                    "image_size": 32, "boxes_prepared": []})
    for k in range(8):
        img = rng.integers(0, 60, (32, 32)).astype(np.uint8)
        if k % 2:
            img[8:20, 8:20] = 220
        row = empty_manifest_row()
        row.pop("report_text")
        row.update(image_id=f"t{k}", purpose="grounding", split="train", width=32, height=32,
                   pneumonia_positive=bool(k % 2))
        out.append({**row, "pixels": pixels_to_bytes(img), "image_size": 32, "boxes_prepared": []})
    path = tmp_path / "prepared"
    path.mkdir()
    write_table(pa.Table.from_pylist(out, schema=PREPARED_SCHEMA), str(path / "part-0.parquet"))
    return str(path)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalcache")
    rows = _cache_rows()
    (tmp / "rois").mkdir()
    write_table(pa.Table.from_pylist(rows, schema=ROI_CACHE_SCHEMA), str(tmp / "rois" / "rois-0.parquet"))
    (tmp / "m").mkdir()
    (tmp / "n").mkdir()
    return tmp, _export(tmp / "m", 0), _export(tmp / "n", 1), rows


def test_row_selection(cache):
    tmp, _, _, rows = cache
    table = pa.Table.from_pylist(rows, schema=ROI_CACHE_SCHEMA)
    assert ev.localization_rows(table).column("image_id").to_pylist() == ["e0", "e1", "e2", "e3", "e4"]
    assert ev.localization_rows(table, "test").column("image_id").to_pylist() == ["e0", "e1", "e2", "e4", "d0"]
    assert ev.attribute_rows(table).column("image_id").to_pylist() == ["e0", "e1", "e2", "e3", "e4"]
    base = ev.baseline_predictions(table)
    assert base[1][0].tolist() == GT and len(base[3]) == 0  # sorted by score; no detections = no box
    assert ev.case_study_ids(table) == ["e0", "e1"]


def _est(loc, method, t):
    return loc[method][f"hit_iou{int(t * 100):02d}"]["estimate"]


def test_exact_hit_rates_cis_and_outputs(cache, tmp_path):
    tmp, model, no_cls, _ = cache
    hist = tmp_path / "metrics.jsonl"
    hist.write_text("".join(json.dumps({"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1)}) + "\n"
                            for e in range(3)))
    settings = EvalSettings(bootstrap_samples=200, cam_epochs=1, cam_input_size=32)
    out = tmp_path / "eval"
    m = run_evaluation(str(tmp / "rois"), model, str(out), settings, checkpoint_no_cls=no_cls,
                       histories=[str(hist)])
    loc = m["localization"]
    expected = {"retinanet": (0.25, 0.25, 0.25), "proposed_no_cls": (0.0, 0.0, 0.0), "proposed": (0.75, 0.5, 0.25)}
    for method, values in expected.items():
        for t, v in zip((0.25, 0.5, 0.75), values):
            cell = loc[method][f"hit_iou{int(t * 100):02d}"]
            assert cell["estimate"] == pytest.approx(v), (method, t)
            assert cell["n"] == 4  # e4 has an annotation with zero boxes: excluded
            assert cell["low"] <= cell["estimate"] <= cell["high"]
    assert loc["proposed"]["mean_best_iou"] == pytest.approx((1.0 + 0.6 + 0.3 / 0.7 + 0.0) / 4, abs=1e-3)
    comp = m["comparisons"]
    assert comp["proposed - retinanet, IoU 0.25"]["estimate"] == pytest.approx(0.5)
    assert comp["proposed - retinanet, IoU 0.75"]["estimate"] == pytest.approx(0.0)
    assert comp["proposed - proposed_no_cls, IoU 0.5"]["estimate"] == pytest.approx(0.5)
    assert m["attributes"]["per_attribute"]["left"]["n"] == 5 and m["attributes"]["per_attribute"]["left"]["n_positive"] == 2
    assert "cam" not in loc and any("CAM" in n for n in m["notes"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["localization"]["proposed"]["hit_iou50"]["estimate"] == 0.5
    report = (out / "report.md").read_text()
    for label in ("Supervised RetinaNet (baseline)", "Proposed (L_trip + L_BCE)", "Proposed without classification"):
        assert label in report
    assert "| Proposed (L_trip + L_BCE) | 75.0 [" in report
    assert (out / "figures" / "curves_0.png").stat().st_size > 1000
    preds = pq.read_table(out / "predictions.parquet")
    assert preds.column("image_id").to_pylist() == ["e0", "e1", "e2", "e3", "e4"]
    assert preds.column("iou_proposed").to_pylist()[:2] == pytest.approx([1.0, 0.6])


def test_no_bootstrap_gives_point_estimates_and_cam_rows(cache, tmp_path):
    tmp, model, _, rows = cache
    prepared = _prepared(tmp_path, rows)
    settings = EvalSettings(bootstrap_samples=0, cam_epochs=1, cam_input_size=32)
    m = run_evaluation(str(tmp / "rois"), model, str(tmp_path / "eval"), settings, prepared=prepared)
    loc = m["localization"]
    assert _est(loc, "proposed", 0.5) == 0.5 and math.isnan(loc["proposed"]["hit_iou50"]["low"])
    assert set(loc) == {"retinanet", "proposed", "cam", "gradcam"}
    assert loc["cam"]["hit_iou25"]["n"] == 4 and m["counts"]["cam"]["train_images"] == 9  # t0-t7 + g0
    # GAP + linear head: Grad-CAM and CAM give the same box (grounding.detection.cam)
    assert all(loc["cam"][k]["estimate"] == loc["gradcam"][k]["estimate"] for k in ("hit_iou25", "hit_iou50"))
    figs = tmp_path / "eval" / "figures"
    assert (figs / "boxes_grid.png").exists() and (figs / "case_study.png").exists()
    assert "comparisons" in m and m["comparisons"]["proposed - retinanet, IoU 0.25"]["estimate"] == pytest.approx(0.5)


def test_cli_no_ray_and_missing_rows(cache, tmp_path):
    from rayjobs.evaluate import main

    tmp, model, _, _ = cache
    rc = main(["--rois", str(tmp / "rois"), "--checkpoint", model, "--out", str(tmp_path / "cli"), "--no-ray",
               "--set", "eval.bootstrap_samples=50", "--subset", "test"])
    assert rc == 0
    m = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert m["subset"] == "test" and m["localization"]["proposed"]["hit_iou25"]["n"] == 4  # e0 e1 e2 d0
    empty = tmp_path / "empty"
    empty.mkdir()
    rows = [r for r in _cache_rows() if r["purpose"] != "eval"]
    write_table(pa.Table.from_pylist(rows, schema=ROI_CACHE_SCHEMA), str(empty / "r.parquet"))
    assert main(["--rois", str(empty), "--checkpoint", model, "--out", str(tmp_path / "x"), "--no-ray"]) == 2


@pytest.mark.ray
@pytest.mark.slow
def test_ray_evaluation_matches_in_process(cache, tmp_path, ray_local):
    from grounding.distributed.evaluate import run_evaluation_ray

    tmp, model, no_cls, _ = cache
    settings = EvalSettings(bootstrap_samples=100)
    a = run_evaluation(str(tmp / "rois"), model, str(tmp_path / "a"), EvalSettings(bootstrap_samples=100),
                       checkpoint_no_cls=no_cls)
    b = run_evaluation_ray(str(tmp / "rois"), model, str(tmp_path / "b"), settings, checkpoint_no_cls=no_cls)
    assert a["localization"] == b["localization"] and a["comparisons"] == b["comparisons"]
    assert a["attributes"]["mean_auc"] == pytest.approx(b["attributes"]["mean_auc"])


def test_pool_diagnostics_on_the_hand_made_cache(cache, tmp_path):
    tmp, model, no_cls, rows = cache
    prepared = _prepared(tmp_path, rows)
    m = run_evaluation(str(tmp / "rois"), model, str(tmp_path / "eval"), EvalSettings(bootstrap_samples=100,
                       cam_epochs=1, cam_input_size=32), checkpoint_no_cls=no_cls, prepared=prepared)
    pd = m["pool_diagnostics"]
    # every image has the same pool: ROI IoUs 1.0, 0.6, 0.0, 0.43 with its expert box
    assert pd["pool"]["images"] == 4
    assert pd["pool"]["oracle"]["hit_iou75"]["estimate"] == pytest.approx(1.0)
    assert pd["pool"]["random"]["hit_iou50"]["estimate"] == pytest.approx(0.5)
    pool_mean = (1.0 + 0.6 + 0.0 + 0.3 / 0.7) / 4
    assert pd["pool"]["pool_mean_iou"]["estimate"] == pytest.approx(pool_mean, abs=1e-3)
    assert pd["detector_score_ranking"]["hit_iou75"]["estimate"] == pytest.approx(1.0)  # r0 has the top score
    proposed, blind = pd["methods"]["proposed"], pd["methods"]["proposed_no_cls"]
    assert proposed["alpha_ranking"]["hit_iou50"]["estimate"] == pytest.approx(0.5)  # e0, e1 of 4
    assert blind["weighted_iou"]["estimate"] == pytest.approx(0.0, abs=1e-3)  # alpha ~1 on r2 (IoU 0)
    assert blind["weighted_minus_pool_mean"]["high"] < 0
    assert blind["entropy_ratio"] < 0.05 and blind["report_conditioned_ranking"]["images"] == 3  # e3: no words
    assert "skipped" in pd["probe_ceiling"]  # 4 images, fewer than 5 folds
    assert "## ROI pool diagnostics" in (tmp_path / "eval" / "report.md").read_text()
    assert (tmp_path / "eval" / "figures" / "alpha_pool.png").stat().st_size > 1000
    off = run_evaluation(str(tmp / "rois"), model, str(tmp_path / "off"), EvalSettings(bootstrap_samples=0,
                         pool_diagnostics=False))
    assert "pool_diagnostics" not in off
