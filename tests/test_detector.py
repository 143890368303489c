from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from torch import nn

from grounding.detection import detector as det
from grounding.detection import engine as eng
from grounding.bench.rois import blob_prepared_table
from grounding.data.boxes import flatten, scale_boxes, xywh_to_xyxy, xyxy_to_xywh
from grounding.config import ConfigError, GroundingConfig
from grounding.data.prepared import pixels_to_bytes, prepared_table
from grounding.data.schema import empty_manifest_row

S = 64


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return det.build_retinanet("resnet18", 16, S, score_thresh=0.0, detections_per_img=5)


def test_builders_keep_input_size_and_never_download():
    small = det.build_retinanet("resnet18", 32, 128)
    assert small.transform.min_size == (128,) and small.transform.max_size == 128
    assert small.backbone.out_channels == 32 and small.head.classification_head.num_classes == 1
    paper = det.build_retinanet("resnet50", 256, 512, trainable_backbone_layers=3)
    assert paper.backbone.out_channels == 256
    frozen = [n for n, p in paper.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("backbone.body.") and "layer2" not in n for n in frozen)


def test_frozen_detector_stays_frozen_inside_a_trained_module(tiny):
    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.detector = det.FrozenDetector(tiny)
            self.head = nn.Linear(16, 2)

    outer = Outer()
    outer.train()
    assert outer.head.training
    assert not outer.detector.training
    assert not any(m.training for m in outer.detector.modules())
    assert not any(p.requires_grad for p in outer.detector.parameters())
    opt = eng.make_optimizer(outer.parameters(), "adamw", 1e-3, 0.0)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 16 * 2 + 2
    bn = next(m for m in tiny.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    out = outer.detector(torch.rand(2, 1, S, S))
    assert len(out) == 2 and out[0]["boxes"].grad_fn is None
    assert torch.equal(bn.running_mean, before)  # eval-mode BN: running stats never move


def test_export_and_load_with_checksum(tmp_path, tiny):
    meta = det.detector_meta("resnet18", 16, S, GroundingConfig().to_dict()["detector"])
    digest = det.export_detector(tiny, str(tmp_path), meta)
    assert (tmp_path / "detector.pt.sha256").read_text().split()[0] == digest
    loaded = det.load_frozen_detector(str(tmp_path / "detector.pt"), score_thresh=0.0, detections_per_img=5)
    x = torch.rand(1, 1, S, S)
    a, b = det.FrozenDetector(tiny)(x)[0], loaded(x)[0]
    assert torch.allclose(a["scores"], b["scores"]) and torch.allclose(a["boxes"], b["boxes"])
    with pytest.raises(det.WeightsError, match="sha256 mismatch"):
        det.load_state_dict(str(tmp_path / "detector.pt"), "0" * 64)
    data = bytearray((tmp_path / "detector.pt").read_bytes())
    data[-10] ^= 0xFF  # one tampered byte
    (tmp_path / "detector.pt").write_bytes(bytes(data))
    with pytest.raises(det.WeightsError, match="detector.pt: sha256 mismatch"):
        det.load_frozen_detector(str(tmp_path / "detector.pt"))


def test_weights_of_another_architecture_are_refused(tmp_path, tiny):
    other = det.build_retinanet("resnet18", 32, S)
    torch.save(other.state_dict(), tmp_path / "w.pt")
    state = det.load_state_dict(str(tmp_path / "w.pt"), det.sha256_file(tmp_path / "w.pt"))
    with pytest.raises(det.WeightsError, match="do not fit"):
        det.apply_weights(tiny, state, strict=True)
    assert det.apply_weights(det.build_retinanet("resnet18", 16, S), state, strict=False) > 0  # backbone fits


def test_config_validation():
    with pytest.raises(ConfigError, match="detector.optimizer"):
        GroundingConfig().with_overrides({"detector.optimizer": "rmsprop"})
    with pytest.raises(ConfigError, match="detector.weights_sha256"):
        GroundingConfig().with_overrides({"detector.weights_path": "/x.pt"})


def test_rsna_box_round_trip():
    xywh = np.array([[264.0, 152.0, 213.0, 379.0]])  # an RSNA row, 1024 px
    xyxy = xywh_to_xyxy(xywh)
    np.testing.assert_allclose(xyxy, [[264, 152, 477, 531]])
    prep = scale_boxes(xyxy, (1024, 1024), (S, S))
    np.testing.assert_allclose(prep, xyxy * S / 1024)
    back = scale_boxes(prep, (S, S), (1024, 1024))
    np.testing.assert_allclose(xyxy_to_xywh(back), xywh)
    # non-square original: the actual size ratio, never a hard-coded 1024
    np.testing.assert_allclose(scale_boxes(xyxy, (2000, 1000), (S, S))[0], [264 * S / 1000, 152 * S / 2000,
                                                                          477 * S / 1000, 531 * S / 2000])


def _row(i, boxes_prepared, split="train", purpose="detector", has_boxes=True):
    row = empty_manifest_row()
    del row["report_text"]
    row.update(image_id=f"i{i}", split=split, purpose=purpose, has_boxes=has_boxes, width=S, height=S,
               pixels=pixels_to_bytes(np.full((S, S), 40, np.uint8)), image_size=S,
               boxes_prepared=flatten(np.asarray(boxes_prepared, float).reshape(-1, 4)))
    return row


def test_detector_rows_and_degenerate_boxes():
    t = prepared_table([
        _row(0, [[5, 5, 30, 30], [10, 10, 10, 40], [70, 70, 90, 90], [-5, 2, 3, 20]]),
        _row(1, []),  # a negative: kept, zero boxes
        _row(2, [[1, 1, 9, 9]], purpose="grounding"),
        _row(3, [[1, 1, 9, 9]], has_boxes=False),
        _row(4, [[1, 1, 9, 9]], split="val"),
    ])
    train = eng.samples_from_table(eng.detector_rows(t, "train"))
    assert [s.image_id for s in train] == ["i0", "i1"]
    np.testing.assert_allclose(train[0].boxes.numpy(), [[5, 5, 30, 30], [0, 2, 3, 20]])  # clipped; 2 dropped
    assert train[1].boxes.shape == (0, 4)
    assert [s.image_id for s in eng.samples_from_table(eng.detector_rows(t, "val"))] == ["i4"]


def test_zero_box_images_train_with_finite_loss(tiny):
    model = det.build_retinanet("resnet18", 16, S)
    samples = eng.samples_from_table(eng.detector_rows(blob_prepared_table(6, S, positive_fraction=0.5), None))
    assert any(len(s.boxes) == 0 for s in samples) and any(len(s.boxes) for s in samples)
    opt = eng.make_optimizer(model.parameters(), "sgd", 0.01, 1e-4)
    negatives = [[s for s in samples if len(s.boxes) == 0]]
    stats = eng.train_one_epoch(model, opt, negatives + [samples], grad_clip=10.0)
    assert stats["steps"] == 2 and math.isfinite(stats["loss"]) and stats["loss_box"] >= 0


def test_non_finite_loss_raises_and_skips_the_step():
    model = det.build_retinanet("resnet18", 16, S)
    samples = eng.samples_from_table(eng.detector_rows(blob_prepared_table(2, S, positive_fraction=1.0), None))
    with torch.no_grad():
        model.head.classification_head.cls_logits.bias.fill_(float("nan"))
    opt = eng.make_optimizer(model.parameters(), "sgd", 0.01, 0.0)
    w = model.head.regression_head.bbox_reg.weight.clone()
    with pytest.raises(eng.NonFiniteLossError, match="non-finite detector loss at step 0"):
        eng.train_one_epoch(model, opt, [samples])
    assert torch.equal(w, model.head.regression_head.bbox_reg.weight)


def test_rank_batches_equal_steps_and_full_coverage():
    samples = [eng.Sample(f"i{i}", torch.zeros(1, 2, 2, dtype=torch.uint8), torch.zeros(0, 4)) for i in range(11)]
    per_rank = [eng.rank_batches(samples, r, 3, 2, seed=0, epoch=1) for r in range(3)]
    assert len({len(b) for b in per_rank}) == 1  # same number of steps on every rank
    seen = {s.image_id for b in per_rank for batch in b for s in batch}
    assert seen == {s.image_id for s in samples}
    again = eng.rank_batches(samples, 0, 3, 2, seed=0, epoch=1)
    assert [s.image_id for b in again for s in b] == [s.image_id for b in per_rank[0] for s in b]
    other = eng.rank_batches(samples, 0, 3, 2, seed=0, epoch=2)
    assert [s.image_id for b in other for s in b] != [s.image_id for b in again for s in b]


def test_evaluate_reports_metric_names(tiny):
    samples = eng.samples_from_table(eng.detector_rows(blob_prepared_table(4, S, positive_fraction=1.0), None))
    out = eng.evaluate(tiny, samples, (0.25, 0.5))
    assert set(out) == {"hit_iou25", "hit_iou50", "ap50", "num_images_with_boxes", "mean_best_iou"}
    assert out["num_images_with_boxes"] == 4 and 0.0 <= out["hit_iou25"] <= 1.0
    assert eng.evaluate(tiny, []) == {}


@pytest.mark.slow
def test_real_rsna_dicoms_train_one_tiny_epoch(shared_data):
    from grounding.data.imaging import decode_file, resize_uint8

    root = shared_data / "rsna"
    boxes: dict[str, list] = {}
    with open(root / "stage_2_train_labels.csv") as f:
        for r in csv.DictReader(f):
            boxes.setdefault(r["patientId"], [])
            if r["Target"] == "1":
                boxes[r["patientId"]].append([float(r[k]) for k in ("x", "y", "width", "height")])
    files = sorted((root / "stage_1_train_images").glob("*.dcm"))
    with_boxes = [p for p in files if boxes.get(p.stem)][:2]
    without = [p for p in files if p.stem in boxes and not boxes[p.stem]][:1]
    rows = []
    size = 128
    for i, path in enumerate(with_boxes + without):
        img = decode_file(str(path), max_pixels=8192 * 8192, low_percentile=0.5, high_percentile=99.5)
        h, w = img.pixels.shape
        xyxy = xywh_to_xyxy(np.asarray(boxes[path.stem], float).reshape(-1, 4))
        row = _row(i, scale_boxes(xyxy, (h, w), (size, size)))
        row.update(pixels=pixels_to_bytes(resize_uint8(img.pixels, size)), image_size=size, width=w, height=h,
                   boxes=flatten(xyxy))
        rows.append(row)
    samples = eng.samples_from_table(eng.detector_rows(prepared_table(rows), "train"))
    assert len(samples) == 3 and sum(len(s.boxes) for s in samples) >= 2
    model = det.build_retinanet("resnet18", 32, size)
    opt = eng.make_optimizer(model.parameters(), "sgd", 0.01, 1e-4)
    stats = eng.train_one_epoch(model, opt, [samples[:2], samples[2:]], grad_clip=10.0)
    assert stats["steps"] == 2 and math.isfinite(stats["loss"])


@pytest.mark.ray
@pytest.mark.slow  # two TorchTrainer fits: ~20 s fixed cost each
def test_train_detector_job_checkpoints_resumes_and_exports(tmp_path, ray_local):
    from grounding.data import storage
    from grounding.distributed.detector import run_train_detector

    prepared = tmp_path / "prepared"
    storage.write_table(blob_prepared_table(12, S, seed=5, split_fractions=(0.75, 0.25)), str(prepared / "p.parquet"))
    base = {"detector.fpn_channels": 16, "detector.batch_size": 4, "detector.optimizer": "adamw",
            "detector.lr": 1e-3, "detector.epochs": 1, "run.work_dir": str(tmp_path / "work")}
    out = str(tmp_path / "det")
    first = run_train_detector(GroundingConfig().with_overrides(base), str(prepared), out, "det-test")
    assert first["epoch"] == 0 and math.isfinite(first["train_loss"]) and "val_hit_iou50" in first
    ckpts = sorted(p for p in (tmp_path / "work" / "ray_storage" / "det-test").glob("checkpoint_*") if p.is_dir())
    assert len(ckpts) == 1
    state = torch.load(ckpts[0] / "state.pt", weights_only=True)
    assert state["epoch"] == 0 and "optimizer" in state and state["config"]["detector"]["fpn_channels"] == 16
    # same run id, more epochs: continues from epoch 0's checkpoint, runs only epoch 1
    second = run_train_detector(GroundingConfig().with_overrides({**base, "detector.epochs": 2}),
                                str(prepared), out, "det-test")
    assert second["epoch"] == 1
    loaded = det.load_frozen_detector(out + "/detector.pt")
    assert loaded.image_size == S and loaded.feature_dim == 16


def test_augmentation_moves_boxes_with_the_pixels():
    img = torch.zeros(1, 1, S, S)
    img[0, 0, 10:20, 30:50] = 1.0  # a bright block; its box is [30, 10, 50, 20]
    boxes = [torch.tensor([[30.0, 10.0, 50.0, 20.0]])]
    g = torch.Generator().manual_seed(0)
    flipped = 0
    for _ in range(12):
        out, b = eng.augment_batch(img, boxes, g, hflip=True, photometric=0.0, scale_jitter=0.2)
        ys, xs = torch.nonzero(out[0, 0] > 0.5, as_tuple=True)
        np.testing.assert_allclose(b[0][0].numpy(), [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.0)
        flipped += int(b[0][0, 0] < S / 2 - 10)
    assert 0 < flipped < 12  # some flipped, some not
    assert torch.equal(img[0, 0, 10:20, 30:50], torch.ones(10, 20))  # the input is not modified
    # a box zoomed/shifted out of the image is dropped, not kept as a sliver
    edge = [torch.tensor([[0.0, 0.0, 4.0, 4.0]])]
    _, b = eng._zoom_shift(img[0], edge[0], 1.0, -0.5, -0.5)
    assert b.shape == (0, 4)


def test_cosine_schedule_warms_up_then_decays():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = eng.make_scheduler(opt, total_steps=20, warmup_steps=4)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[1] < lrs[3] < lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] < 0.05


def test_detections_never_empty_and_anchors_follow_config(tmp_path):
    torch.manual_seed(0)
    model = det.build_retinanet("resnet18", 16, S, score_thresh=0.99, anchor_base=4.0,
                                aspect_ratios=(1.0, 2.0), head_groupnorm=True)
    assert model.anchor_generator.sizes[0][0] == 4.0 and model.anchor_generator.num_anchors_per_location()[0] == 6
    frozen = det.FrozenDetector(model)
    dets = frozen(torch.rand(2, 1, S, S))
    assert all(len(d["boxes"]) == 1 for d in dets)  # nothing reaches 0.99: the top box is kept anyway
    samples = eng.samples_from_table(eng.detector_rows(blob_prepared_table(2, S, positive_fraction=1.0), None))
    assert all(len(p["boxes"]) == 1 for p in eng.predict(model, samples))
    det.export_detector(model, str(tmp_path), det.detector_meta("resnet18", 16, S, {}))
    loaded = det.load_frozen_detector(str(tmp_path / "detector.pt"))
    assert det.architecture(loaded.model) == det.architecture(model)
    assert loaded.model.score_thresh == pytest.approx(0.05)  # the meta held no detector config


def test_detector_recipe_config_validation():
    d = GroundingConfig().detector
    assert d.lr_schedule == "cosine" and d.hflip and d.head_groupnorm
    for key, value in (("lr_schedule", "step"), ("anchor_fraction", 0.0), ("aspect_ratios", []),
                       ("scale_jitter", 0.5), ("photometric", -0.1), ("warmup_epochs", -1)):
        with pytest.raises(ConfigError, match=f"detector.{key}"):
            GroundingConfig().with_overrides({f"detector.{key}": value})
