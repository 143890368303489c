"""CAM / Grad-CAM baseline: box rule, the GAP identity, training on a blob set, checkpoint round trip."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from grounding.detection.cam import (CamClassifier, CamMethod, box_from_heatmap, cam_boxes, normalise_map,
                           raw_heatmaps, to_input)
from grounding.detection.cam_train import (load_cam_classifier, pneumonia_targets, save_cam_classifier,
                                 train_cam_classifier, train_cam_classifier_arrays)
from grounding.evaluation.metrics import box_iou
from grounding.data.prepared import pixels_to_bytes, prepared_table


def blob_set(n: int, size: int = 64, seed: int = 0):
    """Noise images; positives carry one bright square blob (its box returned)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(60, 12, (n, size, size)).clip(0, 255)
    labels = np.arange(n) % 2
    boxes = np.zeros((n, 4))
    for i in np.flatnonzero(labels):
        s = int(rng.integers(14, 22))
        x, y = rng.integers(2, size - s - 2, 2)
        images[i, y:y + s, x:x + s] += 120
        boxes[i] = [x, y, x + s, y + s]
    return images.clip(0, 255).astype(np.uint8), labels, boxes


def test_box_rule_on_hand_made_map():
    heat = np.zeros((10, 12))
    heat[2:5, 3:7] = 1.0  # 3 rows x 4 cols at max
    heat[6, 1] = 0.9  # a single bright pixel: a smaller component above the threshold
    heat[8:10, 9:12] = 0.4  # below 0.5 * max
    np.testing.assert_array_equal(box_from_heatmap(heat, 0.5), [[3, 2, 7, 5]])
    # threshold 0.3 lets the 2 x 3 block in, still smaller than the 12-pixel component
    np.testing.assert_array_equal(box_from_heatmap(heat, 0.3), [[3, 2, 7, 5]])
    # scaling the map does not change the box (the threshold is relative to the max)
    np.testing.assert_array_equal(box_from_heatmap(heat * 7.0, 0.5), [[3, 2, 7, 5]])
    # diagonal neighbours are NOT connected (4-connectivity): two 1-pixel components, first wins
    diag = np.zeros((4, 4))
    diag[1, 1] = diag[2, 2] = 1.0
    np.testing.assert_array_equal(box_from_heatmap(diag, 0.5), [[1, 1, 2, 2]])
    assert box_from_heatmap(np.zeros((5, 5)), 0.5).shape == (0, 4)
    assert box_from_heatmap(-np.ones((5, 5)), 0.5).shape == (0, 4)
    with pytest.raises(ValueError):
        box_from_heatmap(heat, 0.0)


def test_gradcam_equals_relu_cam_over_hw_for_gap_linear():
    torch.manual_seed(0)
    model = CamClassifier((4, 8), input_size=32).eval()
    with torch.no_grad():
        for m in model.modules():  # non-trivial BN statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 1, 32, 32)
    cam, logits_a = raw_heatmaps(model, x, CamMethod.CAM)
    grad, logits_b = raw_heatmaps(model, x, CamMethod.GRADCAM)
    h, w = cam.shape[-2:]
    assert (cam < 0).any() and (cam > 0).any()  # the identity is not trivially about zeros
    torch.testing.assert_close(grad, torch.relu(cam) / (h * w), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logits_a, logits_b)
    torch.testing.assert_close(normalise_map(grad), normalise_map(cam), rtol=1e-5, atol=1e-6)


def test_to_input_rejects_colour():
    with pytest.raises(ValueError, match="grey"):
        to_input(np.zeros((2, 8, 8, 3), dtype=np.uint8), 8)


def test_pneumonia_targets():
    rows = [{"pneumonia_label": 1, "boxes": []}, {"pneumonia_label": -1, "boxes": [1.0, 2, 3, 4]},
            {"pneumonia_label": 0, "boxes": []}, {"pneumonia_label": -1, "has_boxes": True, "boxes": []},
            {"pneumonia_label": -1, "has_boxes": False, "boxes": None}]
    np.testing.assert_array_equal(pneumonia_targets(rows), [1, 1, 0, 0, -1])


def test_training_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        train_cam_classifier_arrays(np.zeros((4, 16, 16), np.uint8), np.ones(4), epochs=1)


def test_cam_box_finds_the_blob_after_short_training(tmp_path):
    images, labels, boxes = blob_set(96, 64, seed=1)
    history: list[dict] = []
    model = train_cam_classifier_arrays(images, labels, epochs=6, lr=3e-3, seed=0, input_size=64,
                                        batch_size=16, channels=(8, 16, 32), history=history)
    assert history[-1]["loss"] < history[0]["loss"]
    test_images, test_labels, test_boxes = blob_set(16, 64, seed=2)
    pos = np.flatnonzero(test_labels)
    for method in CamMethod:
        preds = cam_boxes(model, test_images[pos], method, threshold=0.5)
        ious = [box_iou(p.boxes, test_boxes[i][None])[0, 0] if len(p.boxes) else 0.0
                for p, i in zip(preds, pos)]
        assert np.median(ious) > 0.3, (method, ious)
        assert np.mean([p.score for p in preds]) > 0.5
    # boxes map to original pixels: a 64 px prepared image of a 640 x 320 (h x w) original
    scaled = cam_boxes(model, test_images[pos[:2]], CamMethod.CAM, 0.5, original_sizes=[(640, 320)] * 2)
    plain = cam_boxes(model, test_images[pos[:2]], CamMethod.CAM, 0.5)
    np.testing.assert_allclose(scaled[0].boxes, plain[0].boxes * [5, 10, 5, 10])
    # checkpoint round trip gives the same boxes
    save_cam_classifier(model, str(tmp_path / "cam.pt"))
    again = load_cam_classifier(str(tmp_path / "cam.pt"))
    np.testing.assert_allclose(cam_boxes(again, test_images[pos[:2]])[1].boxes, plain[1].boxes)


def test_train_from_prepared_table_is_deterministic():
    images, labels, boxes = blob_set(12, 32, seed=3)
    rows = [{"image_id": f"i{i:02d}", "pneumonia_label": int(labels[i]), "has_boxes": True,
             "boxes": boxes[i].tolist() if labels[i] else [], "pixels": pixels_to_bytes(images[i]),
             "image_size": 32, "width": 32, "height": 32} for i in range(12)]
    table = prepared_table(rows)
    assert isinstance(table, pa.Table)
    a = train_cam_classifier(table, epochs=1, seed=5, input_size=32, channels=(4, 8))
    b = train_cam_classifier(table, epochs=1, seed=5, input_size=32, channels=(4, 8))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(va, vb, msg=ka)


def test_default_classifier_separates_blobs_and_its_cam_box_lands_on_the_blob():
    """The settings ``grounding evaluate`` uses (function defaults + epochs/seed/input_size): the
    classifier learns blob vs no blob, eval-mode outputs agree (BatchNorm statistics recomputed after
    only 2 steps per epoch), the CAM box overlaps the blob, and torch's thread count is restored."""
    threads = torch.get_num_threads()
    images, labels, boxes = blob_set(128, 64, seed=4)
    history: list[dict] = []
    model = train_cam_classifier_arrays(images, labels, epochs=5, seed=0, input_size=64, history=history)
    assert torch.get_num_threads() == threads
    assert model.stem_stride == 2 and not model.training
    assert history[-1]["loss"] < history[0]["loss"] and history[-1]["accuracy"] >= 0.95, history
    test_images, test_labels, test_boxes = blob_set(32, 64, seed=5)
    preds = cam_boxes(model, test_images, CamMethod.CAM)
    assert np.mean([(p.score > 0.5) == bool(y) for p, y in zip(preds, test_labels)]) >= 0.95
    pos = np.flatnonzero(test_labels)
    ious = [box_iou(preds[i].boxes, test_boxes[i][None])[0, 0] if len(preds[i].boxes) else 0.0 for i in pos]
    assert np.median(ious) > 0.3 and min(ious) > 0.1, ious
    # determinism for a seed, including the recomputed BatchNorm statistics
    again = train_cam_classifier_arrays(images, labels, epochs=5, seed=0, input_size=64)
    for (ka, va), (kb, vb) in zip(model.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=ka)


def test_stem_keeps_the_feature_map_size_and_old_checkpoints_load(tmp_path):
    x = torch.randn(2, 1, 64, 64)
    for stem in (1, 2):
        model = CamClassifier((4, 8, 16), input_size=64, stem_stride=stem).eval()
        assert model.features(x).shape == (2, 16, 16, 16)
    assert CamClassifier((4,), input_size=64).features(x).shape[-1] == 64  # one block never halves
    with pytest.raises(ValueError, match="stem_stride"):
        CamClassifier((4, 8), stem_stride=3)
    # a checkpoint written before the stem (no stem_stride in its config) loads as stride 1 + max-pool
    old = CamClassifier((4, 8), input_size=32, stem_stride=1).eval()
    save_cam_classifier(old, str(tmp_path / "old.pt"))
    blob = torch.load(tmp_path / "old.pt", weights_only=True)
    cfg = json.loads(blob["config_json"])
    del cfg["stem_stride"]
    blob["config_json"] = json.dumps(cfg)
    torch.save(blob, tmp_path / "old.pt")
    loaded = load_cam_classifier(str(tmp_path / "old.pt"))
    assert loaded.stem_stride == 1
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), old(x))


def test_to_input_in_chunks_equals_one_pass():
    images = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    torch.testing.assert_close(to_input(images, 32, chunk=2), to_input(images, 32, chunk=64))
    assert to_input(images, 32).shape == (5, 1, 32, 32)
