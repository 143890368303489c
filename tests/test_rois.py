from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from grounding import detector as det
from grounding import storage
from grounding.bench_rois import blob_prepared_table
from grounding.config import GroundingConfig
from grounding.rois import anchor_locations, extract_rois, read_roi_cache, roi_arrays, roi_columns

S = 64
N = 6


@pytest.fixture(scope="module")
def frozen():
    torch.manual_seed(0)
    model = det.build_retinanet("resnet18", 16, S, score_thresh=0.0, nms_thresh=1.0, detections_per_img=20)
    with torch.no_grad():  # an untrained head scores every anchor ~0.01; spread the scores out
        model.head.classification_head.cls_logits.weight.normal_(0, 0.5)
        model.head.regression_head.bbox_reg.weight.normal_(0, 0.05)
    return det.FrozenDetector(model)


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 1, S, S, generator=torch.Generator().manual_seed(1))


def test_shapes_and_ordering(frozen, images):
    r = extract_rois(frozen, images, N)
    assert r.features.shape == (3, N, 16) and r.neg_features.shape == (3, N, 16)
    assert r.scores.shape == (3, N) and r.boxes.shape == (3, N, 4) and r.neg_boxes.shape == (3, N, 4)
    assert (r.scores[:, :-1] >= r.scores[:, 1:]).all()  # positives: descending
    assert (r.neg_scores[:, :-1] <= r.neg_scores[:, 1:]).all()  # negatives: ascending
    assert (r.neg_scores.max(1).values <= r.scores.min(1).values).all()
    for b in (r.boxes, r.neg_boxes):
        assert (b >= 0).all() and (b <= 1).all()
        assert (b[..., 2] >= b[..., 0]).all() and (b[..., 3] >= b[..., 1]).all()
    assert len(r.detections) == 3


def test_top_roi_matches_the_models_own_postprocess(frozen, images):
    """score_thresh=0, nms 1.0: the top detection is the top anchor (same score, same box)."""
    r = extract_rois(frozen, images, N)
    dets = frozen(images)
    for i in range(3):
        assert r.scores[i, 0].item() == pytest.approx(dets[i]["scores"][0].item(), rel=1e-5)
        torch.testing.assert_close(r.boxes[i, 0] * S, dets[i]["boxes"][0], atol=1e-3, rtol=0)
        torch.testing.assert_close(r.detections[i]["boxes"], dets[i]["boxes"])


def test_anchor_index_maps_to_level_y_x(frozen, images):
    """r_i is the classification tower output at the anchor's (level, y, x), and the anchor's
    logit sits at (a, y, x) of that level's raw cls_logits conv map."""
    m = frozen.model
    r = extract_rois(frozen, images, N)
    with torch.no_grad():
        il, _ = m.transform(det.to_three_channels(images))
        feats = list(m.backbone(il.tensors).values())
        towers = [m.head.classification_head.conv(f) for f in feats]
        raw = [m.head.classification_head.cls_logits(t) for t in towers]  # (B, A*K, H, W), K=1
    shapes = [(f.shape[2], f.shape[3]) for f in feats]
    a = m.anchor_generator.num_anchors_per_location()[0]
    level, ys, xs, _ = anchor_locations(shapes, a)
    starts = np.cumsum([0] + [h * w * a for h, w in shapes])
    for i in range(3):
        for n in range(N):
            idx = int(r.anchor_index[i, n])
            lv, y, x = int(level[idx]), int(ys[idx]), int(xs[idx])
            torch.testing.assert_close(r.features[i, n], towers[lv][i, :, y, x])
            anchor_in_loc = (idx - starts[lv]) % a
            assert raw[lv][i, anchor_in_loc, y, x].sigmoid().item() == pytest.approx(r.scores[i, n].item(), rel=1e-5)


def test_detections_in_original_pixels(frozen, images):
    sizes = [(2 * S, 3 * S)] * 3
    r0 = extract_rois(frozen, images, N)
    r1 = extract_rois(frozen, images, N, original_sizes=sizes)
    scale = torch.tensor([3.0, 2.0, 3.0, 2.0])
    torch.testing.assert_close(r1.detections[0]["boxes"], r0.detections[0]["boxes"] * scale, atol=1e-3, rtol=0)


def test_too_many_rois_is_a_clear_error(frozen, images):
    with pytest.raises(ValueError, match="exceeds"):
        extract_rois(frozen, images, 10**6)


def test_cache_row_round_trip(frozen, images):
    r = extract_rois(frozen, images, N, original_sizes=[(S, S)] * 3)
    rows = roi_columns(r)
    arr = roi_arrays({**rows[1], "image_id": "x"})
    np.testing.assert_allclose(arr["features"], r.features[1].numpy(), rtol=1e-3, atol=1e-3)  # float16
    np.testing.assert_allclose(arr["boxes"], r.boxes[1].numpy(), rtol=1e-6)
    np.testing.assert_allclose(arr["neg_scores"], r.neg_scores[1].numpy(), rtol=1e-6)
    assert arr["detector_boxes"].shape == (len(r.detections[1]["boxes"]), 4)
    assert len(rows[0]["roi_features"]) == N * 16 * 2
    with pytest.raises(ValueError, match="roi_features"):
        roi_arrays({**rows[0], "num_rois": N + 1})


def test_read_roi_cache_drops_duplicate_ids(tmp_path):
    t = pa.table({"image_id": ["b", "a", "b"], "v": [1, 2, 3]})
    storage.write_table(t, str(tmp_path / "x.parquet"))
    out = read_roi_cache(str(tmp_path))
    assert out.column("image_id").to_pylist() == ["a", "b"]


def _export_random_detector(folder, num_rois=N):
    torch.manual_seed(0)
    cfg = GroundingConfig().with_overrides({"detector.fpn_channels": 16, "detector.num_rois": num_rois,
                                            "detector.extract_batch_size": 4})
    model = det.build_retinanet("resnet18", 16, S)
    det.export_detector(model, str(folder), det.detector_meta("resnet18", 16, S, cfg.to_dict()["detector"]))
    return cfg, str(folder / det.DETECTOR_FILE)


@pytest.mark.ray
@pytest.mark.slow  # ~1.5 min on 2 shared cores: actor start + torch import dominate
def test_extract_rois_job_one_row_per_image(tmp_path, ray_local):
    from grounding.ray_detector import ROI_SCHEMA, run_extract_rois

    table = blob_prepared_table(10, S, seed=3)
    prepared = tmp_path / "prepared"
    storage.write_table(table.slice(0, 6), str(prepared / "a.parquet"))
    # the same images again in a second shard (a retried prepare): still one ROI row per image_id
    storage.write_table(table.slice(4, 6), str(prepared / "b.parquet"))
    cfg, weights = _export_random_detector(tmp_path / "det")
    out = str(tmp_path / "rois")
    first = run_extract_rois(cfg, str(prepared), weights, out, rows_per_shard=4)
    assert first["images"] == 10 and first["rows_in_cache"] == 10 and first["missing"] == 0
    cache = read_roi_cache(out)
    assert cache.schema.equals(ROI_SCHEMA, check_metadata=False)
    raw = storage.read_table(out)
    assert raw.num_rows == 10 and len(set(raw.column("image_id").to_pylist())) == 10
    row = cache.to_pylist()[0]
    a = roi_arrays(row)
    assert a["features"].shape == (N, 16) and (np.diff(a["scores"]) <= 0).all()
    assert "pixels" not in cache.column_names and "boxes_prepared" not in cache.column_names
    # rerun into the same folder: nothing recomputed, nothing duplicated
    again = run_extract_rois(cfg, str(prepared), weights, out, rows_per_shard=4)
    assert again["written"] == 0 and again["already_done"] == 10 and storage.read_table(out).num_rows == 10
