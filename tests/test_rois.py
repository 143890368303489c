from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from grounding.detection import detector as det
from grounding.data import storage
from grounding.bench.rois import blob_prepared_table
from grounding.config import ConfigError, DetectorConfig, GroundingConfig, RoiFeatures, RoiPool, load_config
from grounding.detection.rois import (
    ROI_ALIGN_LEVELS, anchor_locations, detector_forward, extract_rois, pool_box_features, read_roi_cache,
    roi_arrays, roi_columns, roi_feature_dim, select_rois,
)

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


# -- detector.roi_pool / detector.roi_features ---------------------------------------------------
MODES = [(pool, features) for pool in RoiPool for features in RoiFeatures]


def _levels(size: int, channels: int, fill=0.0) -> dict[str, torch.Tensor]:
    """FPN-like maps P3-P5 (strides 8, 16, 32) of a (size x size) image, named as the backbone names them."""
    return {str(k): torch.full((1, channels, size // 2 ** (3 + k), size // 2 ** (3 + k)), float(fill))
            for k in range(3)}


def test_pool_box_features_read_the_content_inside_the_box():
    """A P3 map holding 3 in its lower-right 4x4 cells and -1 elsewhere (other levels 100, 200): a small box
    inside the region pools 3 in every bin, one outside pools -1, channel-major (c, y, x)."""
    maps = _levels(64, 2)
    maps["0"][:, 0] = -1.0
    maps["0"][:, 0, 4:, 4:] = 3.0  # cells 4-7 = pixels 32-64 at stride 8
    maps["0"][:, 1] = 5.0
    maps["1"].fill_(100.0)
    maps["2"].fill_(200.0)
    boxes = torch.tensor([[[36.0, 36.0, 60.0, 60.0], [0.0, 0.0, 20.0, 20.0]]])  # small: FPN eq. 1 picks P3
    out = pool_box_features(maps, boxes, [(64, 64)])
    assert out.shape == (1, 2, 2 * 4)
    torch.testing.assert_close(out[0, 0], torch.tensor([3.0] * 4 + [5.0] * 4))
    torch.testing.assert_close(out[0, 1], torch.tensor([-1.0] * 4 + [5.0] * 4))


def test_pool_box_features_pick_the_level_by_box_size_and_keep_the_pixel_frame():
    """512 px image; P4 holds x and y ramps (cell index). A 256 x 320 px box maps to P4
    (floor(4 + log2(sqrt(256 * 320) / 224)) = 4); at stride 16 its 2x2 bins average to the bin centres."""
    maps = _levels(512, 2, fill=-7.0)
    h, w = maps["1"].shape[2:]
    maps["1"][0, 0] = torch.arange(w, dtype=torch.float32).expand(h, w)  # x ramp
    maps["1"][0, 1] = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)  # y ramp
    out = pool_box_features(maps, torch.tensor([[[64.0, 128.0, 320.0, 448.0]]]), [(512, 512)])
    # x: 4..20 cells -> bin centres 8, 16; y: 8..28 cells -> 13, 23; bins (y0x0, y0x1, y1x0, y1x1)
    torch.testing.assert_close(out[0, 0], torch.tensor([8.0, 16.0, 8.0, 16.0, 13.0, 13.0, 23.0, 23.0]))


def test_roi_align_features_pool_the_selected_boxes(frozen, images):
    fwd = detector_forward(frozen, images)
    r = select_rois(fwd, N, RoiPool.TOP_ANCHORS, RoiFeatures.ROI_ALIGN)
    assert r.features.shape == (3, N, 16 * 4) == r.neg_features.shape
    maps = dict(list(fwd.fpn.items())[:ROI_ALIGN_LEVELS])
    for feats, boxes in ((r.features, r.boxes), (r.neg_features, r.neg_boxes)):
        px = boxes * S  # transformed image = the S x S input: g_i * S is the pooled box
        torch.testing.assert_close(feats, pool_box_features(maps, px, fwd.image_sizes))
    tower = select_rois(fwd, N)  # same pool, scores, geometry; only r_i changes
    assert torch.equal(tower.anchor_index, r.anchor_index) and torch.equal(tower.boxes, r.boxes)
    assert torch.equal(tower.neg_scores, r.neg_scores)


def test_per_location_pool_is_one_best_anchor_per_location(frozen, images):
    n = 20
    fwd = detector_forward(frozen, images)
    top, div = select_rois(fwd, n, RoiPool.TOP_ANCHORS), select_rois(fwd, n, RoiPool.PER_LOCATION)
    a = fwd.num_anchors
    _, _, _, loc_of = anchor_locations([(t.shape[2], t.shape[3]) for t in fwd.towers], a)
    shared = 0
    for i in range(3):
        locs = loc_of[div.anchor_index[i]]
        assert len(set(locs.tolist())) == n  # no two ROIs at one location
        shared += n - len(set(loc_of[top.anchor_index[i]].tolist()))
        best = fwd.scores[i].reshape(-1, a).max(dim=1).values  # (L,) each location's best anchor
        torch.testing.assert_close(div.scores[i], best[locs])
        others = torch.ones_like(best, dtype=torch.bool)
        others[locs] = False
        assert best[others].max() <= div.scores[i, -1]  # the N top-scored locations
    assert shared > 0  # here top_anchors does repeat locations, so the two pools differ
    assert (div.scores[:, :-1] >= div.scores[:, 1:]).all()
    assert torch.equal(div.anchor_index[:, 0], top.anchor_index[:, 0])
    for name in ("features", "scores", "boxes"):
        assert torch.equal(getattr(div, name)[:, 0], getattr(top, name)[:, 0])
    for name in ("neg_features", "neg_scores", "neg_boxes"):  # negatives: the N lowest anchors either way
        assert torch.equal(getattr(div, name), getattr(top, name))
    with pytest.raises(ValueError, match="locations"):
        select_rois(fwd, loc_of.max().item() + 2, RoiPool.PER_LOCATION)


@pytest.mark.parametrize("pool, features", MODES)
def test_every_mode_writes_one_cache_row_per_image(frozen, images, pool, features):
    from grounding.detection.rois import ROI_SCHEMA, rois_for_rows

    width = roi_feature_dim(16, features)
    r = extract_rois(frozen, images, N, original_sizes=[(S, S)] * 3, pool=pool.value, features=features.value)
    rows = roi_columns(r)
    assert len(rows) == 3 and all(row["feature_dim"] == width for row in rows)
    for i, row in enumerate(rows):
        arr = roi_arrays({**row, "image_id": str(i)})
        assert arr["features"].shape == (N, width) == arr["neg_features"].shape
        np.testing.assert_allclose(arr["features"], r.features[i].numpy(), rtol=1e-3, atol=1e-3)  # float16
        np.testing.assert_allclose(arr["boxes"], r.boxes[i].numpy(), rtol=1e-6)
    prepared = blob_prepared_table(4, S, seed=5).to_pylist()
    table = rois_for_rows(frozen, prepared, N, pool=pool, features=features)  # the extract-rois job's batch
    assert table.schema.equals(ROI_SCHEMA, check_metadata=False)
    assert table.column("image_id").to_pylist() == [row["image_id"] for row in prepared]
    assert set(table.column("feature_dim").to_pylist()) == {width}


@pytest.mark.parametrize("key", ["detector.roi_pool", "detector.roi_features"])
def test_unknown_roi_mode_is_an_error_naming_the_key(key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}=best_boxes"])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):  # a DetectorConfig built in code
        DetectorConfig(**{key.split(".")[1]: "best_boxes"}).validate("detector")
    d = GroundingConfig().detector
    assert (d.roi_pool, d.roi_features) == (RoiPool.TOP_ANCHORS, RoiFeatures.TOWER)  # today's behaviour
    cfg = load_config(None, ["detector.roi_pool=per_location", "detector.roi_features=roi_align"])
    assert GroundingConfig.from_dict(cfg.to_dict()).detector.roi_features is RoiFeatures.ROI_ALIGN


def test_predictor_extracts_the_rois_its_checkpoint_was_trained_on(tmp_path):
    """A model trained on roi_align ROIs (4 C wide) predicts with them; the width check follows the switch."""
    from grounding.bench.train import synthetic_vectors
    from grounding.model.checkpoint import export_model
    from grounding.model.grounding_model import build_model
    from grounding.model.predict import PredictError, Predictor
    from grounding.text.vocabulary import ATTRIBUTES, VOCABULARY_VERSION

    cfg, weights = _export_random_detector(tmp_path / "det")
    digest = (tmp_path / "det" / (det.DETECTOR_FILE + ".sha256")).read_text().split()[0]
    cfg = cfg.with_overrides({"data.image_size": S, "detector.weights_path": weights,
                              "detector.weights_sha256": digest,
                              "detector.roi_pool": "per_location", "detector.roi_features": "roi_align",
                              "model.roi_hidden": 8, "model.classifier_hidden": [8]})
    v = synthetic_vectors(8)
    for name, width in (("good", 16 * 4), ("bad", 16)):
        model = build_model(width, v.vectors, v.negative_vectors, cfg.model)
        export_model(tmp_path / name, model_state=model.state_dict(), config=cfg.to_dict(),
                     config_yaml=cfg.to_yaml(), vocabulary=ATTRIBUTES, vocabulary_version=VOCABULARY_VERSION,
                     epoch=0)
    predictor = Predictor(str(tmp_path / "good" / "model.pt"), top_k=2)
    assert (predictor.roi_pool, predictor.roi_features) == (RoiPool.PER_LOCATION, RoiFeatures.ROI_ALIGN)
    image = np.random.default_rng(0).integers(0, 255, (S, 2 * S)).astype(np.uint8)
    (result,) = predictor.predict_arrays([image])
    assert result["error"] is None and 1 <= len(result["boxes"]) <= 2
    with pytest.raises(PredictError, match="roi_align"):
        Predictor(str(tmp_path / "bad" / "model.pt"))


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
    from grounding.distributed.detector import ROI_SCHEMA, run_extract_rois

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


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_extract_actor_runs_the_configured_torch_threads(tmp_path, threads):
    """The actor reserves 1 CPU but runs detector.extract_threads threads (Ray would give it 1)."""
    from grounding.distributed.detector import RoiExtractor

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        cfg, weights = _export_random_detector(tmp_path / "det")
        extractor = RoiExtractor(weights, "", N, threads=threads)
        assert torch.get_num_threads() == threads
        rows = extractor(blob_prepared_table(2, S, seed=1))
        assert rows.num_rows == 2
    finally:
        torch.set_num_threads(before)
