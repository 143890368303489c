"""``grounding bench rois``: time ROI extraction and size the ROI cache, plus a tiny blob dataset.

``blob_prepared_table`` builds a prepared-image table of bright ellipses on noise with their boxes
(the detector's smallest honest task); tests and this benchmark use it so they do not depend on
the synthetic-data or prepare jobs.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from grounding.data.boxes import flatten, scale_boxes
from grounding.config import Backbone, RoiFeatures, RoiPool
from grounding.detection.detector import FrozenDetector, build_retinanet
from grounding.data.prepared import pixels_to_bytes, prepared_table
from grounding.detection.rois import extract_rois, roi_columns
from grounding.data.schema import empty_manifest_row


def blob_image(rng: np.random.Generator, size: int, n_blobs: int) -> tuple[np.ndarray, np.ndarray]:
    """(size, size) uint8 noise with ``n_blobs`` bright ellipses; (n_blobs, 4) xyxy boxes in px."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = rng.normal(0.3, 0.08, (size, size)).astype(np.float32)
    boxes = []
    for _ in range(n_blobs):
        rx, ry = rng.uniform(0.08, 0.2, 2) * size
        cx = rng.uniform(rx + 1, size - rx - 1)
        cy = rng.uniform(ry + 1, size - ry - 1)
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        img[inside] += rng.uniform(0.35, 0.55)
        boxes.append([cx - rx, cy - ry, cx + rx, cy + ry])
    pixels = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return pixels, np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def blob_prepared_table(
    n: int,
    image_size: int = 64,
    seed: int = 0,
    positive_fraction: float = 0.75,
    original_size: tuple[int, int] = (512, 480),
    split_fractions: tuple[float, float] = (0.7, 0.15),
    purpose: str = "detector",
) -> pa.Table:
    """``n`` prepared rows (PREPARED_SCHEMA) of blob images; negatives have zero boxes.

    Boxes are stored both in prepared px (``boxes_prepared``) and original px (``boxes``, an
    original image of ``original_size`` = (height, width)). Splits: train, val, test by fraction.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = int(rng.integers(1, 3)) if rng.random() < positive_fraction else 0
        pixels, boxes = blob_image(rng, image_size, k)
        u = i / max(n, 1)
        split = "train" if u < split_fractions[0] else "val" if u < sum(split_fractions) else "test"
        row = empty_manifest_row()
        del row["report_text"]
        row.update(
            image_id=f"i{seed:03d}{i:05d}", study_id=f"s{i:05d}", patient_id=f"p{i:05d}", dataset="synthetic",
            site="A", image_uri=f"blob://{i}", split=split, purpose=purpose,
            width=original_size[1], height=original_size[0], has_boxes=True,
            boxes=flatten(scale_boxes(boxes, (image_size, image_size), original_size)),
            pneumonia_label=int(k > 0), pneumonia_positive=k > 0,
            pixels=pixels_to_bytes(pixels), image_size=image_size, boxes_prepared=flatten(boxes),
        )
        rows.append(row)
    return prepared_table(rows)


def bench_rois(
    backbone: Backbone | str = Backbone.RESNET18,
    fpn_channels: int = 128,
    image_size: int = 256,
    num_rois: int = 32,
    batch_size: int = 8,
    n_images: int = 32,
    num_threads: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    pool: RoiPool | str = RoiPool.TOP_ANCHORS,
    features: RoiFeatures | str = RoiFeatures.TOWER,
) -> dict:
    """Time ROI extraction (frozen, random-init detector) and measure ROI cache bytes per image.

    ``pool`` and ``features`` are ``detector.roi_pool`` and ``detector.roi_features``.

    Returns:
        ``{"backbone", "fpn_channels", "image_size", "num_rois", "roi_pool", "roi_features",
        "feature_dim", "batch_size", "images", "device", "threads", "seconds_per_image", "images_per_second",
        "roi_columns_bytes_per_image" (raw ROI_EXTRA payload), "roi_parquet_bytes_per_image"
        (compressed Parquet of ROI_EXTRA columns)}``.
    """
    if num_threads:
        torch.set_num_threads(num_threads)
    gen = torch.Generator().manual_seed(seed)
    model = build_retinanet(backbone, fpn_channels, image_size)
    det = FrozenDetector(model).to(device)
    images = torch.rand((n_images, 1, image_size, image_size), generator=gen)
    # Warm up on every batch shape the timed loop will see: the first call of a shape selects
    # kernels (cuDNN autotuning on a GPU) and grows the allocator.
    for shape in {min(batch_size, n_images), n_images % batch_size or batch_size}:
        extract_rois(det, images[:shape].to(device), num_rois, pool=pool, features=features)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    rows = []
    t0 = time.perf_counter()
    for i in range(0, n_images, batch_size):
        rois = extract_rois(det, images[i : i + batch_size].to(device), num_rois,
                            pool=pool, features=features)
        rows += roi_columns(rois)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    table = pa.Table.from_pylist(rows)
    raw = sum(len(r["roi_features"]) + len(r["neg_roi_features"]) + 4 * (
        len(r["roi_scores"]) + len(r["roi_boxes"]) + len(r["neg_roi_scores"]) + len(r["neg_roi_boxes"])
    ) for r in rows) / len(rows)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return {
        "backbone": Backbone(backbone).value,
        "fpn_channels": fpn_channels,
        "image_size": image_size,
        "num_rois": num_rois,
        "roi_pool": RoiPool(pool).value,
        "roi_features": RoiFeatures(features).value,
        "feature_dim": int(rows[0]["feature_dim"]),
        "batch_size": batch_size,
        "images": n_images,
        "device": device,
        "threads": torch.get_num_threads(),
        "seconds_per_image": seconds / n_images,
        "images_per_second": n_images / seconds,
        "roi_columns_bytes_per_image": raw,
        "roi_parquet_bytes_per_image": buf.getbuffer().nbytes / n_images,
    }


def bench_rois_for(cfg, n_images: int, device: str) -> dict:
    """:func:`bench_rois` with the detector and image size of a ``GroundingConfig``."""
    d = cfg.detector
    return bench_rois(backbone=d.backbone.value, fpn_channels=d.fpn_channels, image_size=cfg.data.image_size,
                      num_rois=d.num_rois, batch_size=d.extract_batch_size, n_images=n_images, device=device,
                      seed=0, pool=d.roi_pool, features=d.roi_features)
