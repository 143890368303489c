"""The plain PyTorch training loop over cached ROIs (the baseline Ray Train is measured against in
``grounding.distributed.bench_train``), and :func:`synthetic_roi_table`, a tiny learnable ROI cache for
tests and for benchmarking without a detector run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from grounding.model import engine
from grounding.model.batching import TRAIN_COLUMNS, InMemoryShard, select_rows
from grounding.config import GroundingConfig
from grounding.model.grounding_model import build_model
from grounding.data.schema import MANIFEST_SCHEMA, ROI_EXTRA
from grounding.text.vocabulary import ATTRIBUTES, NUM_ATTRIBUTES, VOCABULARY_VERSION

ROI_CACHE_SCHEMA = pa.schema([f for f in MANIFEST_SCHEMA if f.name != "report_text"] + [pa.field(n, t) for n, t in ROI_EXTRA])


@dataclass
class SyntheticVectors:
    """Stand-in for ``grounding.text.word_vectors.AttributeVectors``."""

    vectors: np.ndarray  # (22, d)
    negative_vectors: np.ndarray  # (22, d)
    negative_words: tuple[str, ...]
    vocabulary_version: str = VOCABULARY_VERSION
    attributes: tuple[str, ...] = ATTRIBUTES


def synthetic_vectors(dim: int = 8, seed: int = 0) -> SyntheticVectors:
    rng = np.random.default_rng(seed)
    vec = rng.standard_normal((NUM_ATTRIBUTES, dim)).astype(np.float32)
    neg = rng.standard_normal((NUM_ATTRIBUTES, dim)).astype(np.float32)
    return SyntheticVectors(vec, neg, tuple(f"neg_{a}" for a in ATTRIBUTES))


def synthetic_roi_table(
    n: int = 64, num_rois: int = 6, feature_dim: int = 12, num_used_attributes: int = 4,
    splits: tuple[float, float] = (0.7, 0.15), seed: int = 0, empty_fraction: float = 0.1,
) -> pa.Table:
    """A tiny ROI cache in which attributes are learnable from the ROI features.

    Each of the first ``num_used_attributes`` attributes has a fixed feature pattern; a study's top two
    ROIs carry the patterns of its attributes plus noise, the others and the negative ROIs only noise.
    About ``empty_fraction`` of studies have no attributes (negative reports). Splits are by row.
    """
    rng = np.random.default_rng(seed)
    patterns = rng.standard_normal((num_used_attributes, feature_dim)) * 2.0
    rows = []
    for i in range(n):
        present = rng.random(num_used_attributes) < 0.45
        if rng.random() < empty_fraction:
            present[:] = False
        feats = rng.standard_normal((num_rois, feature_dim)) * 0.5
        feats[:2] += present.astype(float) @ patterns
        neg = rng.standard_normal((num_rois, feature_dim)) * 0.5
        boxes = np.sort(rng.random((num_rois, 2, 2)), axis=1).transpose(0, 2, 1).reshape(num_rois, 4)
        u = rng.random()
        split = "train" if u < splits[0] else ("val" if u < splits[0] + splits[1] else "test")
        rows.append({
            "image_id": f"i{seed:03d}{i:05d}", "study_id": f"s{i:05d}", "patient_id": f"p{i:05d}",
            "dataset": "synthetic", "site": "B", "image_uri": "", "split": split, "purpose": "grounding",
            "view": "PA", "width": 256, "height": 256, "has_boxes": False, "boxes": [], "pneumonia_label": int(present.any()),
            "severity": None, "severity_raw": None, "offset_days": None,
            "attributes": [ATTRIBUTES[j] for j in np.flatnonzero(present)], "uncertain_attributes": [],
            "negated_findings": [], "pneumonia_positive": bool(present.any()),
            "roi_features": feats.astype(np.float16).tobytes(),
            "roi_scores": np.sort(rng.random(num_rois))[::-1].astype(np.float32).tolist(),
            "roi_boxes": boxes.astype(np.float32).reshape(-1).tolist(),
            "neg_roi_features": neg.astype(np.float16).tobytes(),
            "neg_roi_scores": (rng.random(num_rois) * 0.01).astype(np.float32).tolist(),
            "neg_roi_boxes": boxes[::-1].astype(np.float32).reshape(-1).tolist(),
            "num_rois": num_rois, "feature_dim": feature_dim, "detector_boxes": [], "detector_scores": [],
        })
    return pa.Table.from_pylist(rows, schema=ROI_CACHE_SCHEMA)


def plain_train(cfg: GroundingConfig, table: pa.Table, vectors: Any, epochs: int, device: str = "cpu") -> dict:
    """Plain PyTorch loop (no Ray) over the train rows, collating each batch as the Ray path does."""
    train = select_rows(table, "train")
    feature_dim = int(train["feature_dim"][0].as_py())
    torch.manual_seed(cfg.optim.seed)
    model = build_model(feature_dim, vectors.vectors, vectors.negative_vectors, cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    # The same data path as a Ray Train worker with train.shard_in_memory: one in-memory shard,
    # reshuffled per epoch with the same seeds, so the comparison is the framework alone.
    shard = InMemoryShard([train.select([c for c in TRAIN_COLUMNS if c in train.column_names])], device=device)
    shuffle = cfg.train.shuffle_buffer_batches > 0
    per_epoch = []
    for epoch in range(epochs):
        t = time.perf_counter()
        seed = cfg.optim.seed + 1000 * epoch if shuffle else None
        stats = engine.train_one_epoch(
            model, opt, shard.batches(cfg.optim.batch_size, seed), beta=cfg.loss.beta,
            use_classification=cfg.loss.use_classification, bce_weight=cfg.loss.bce_weight,
            negative_rois=cfg.loss.negative_rois, grad_clip=cfg.optim.grad_clip, device=torch.device(device),
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        per_epoch.append((stats.samples, time.perf_counter() - t))
    steady = per_epoch[1:] or per_epoch
    return {"samples_per_s": sum(s for s, _ in steady) / max(sum(t for _, t in steady), 1e-9),
            "first_epoch_s": per_epoch[0][1], "epochs": epochs}


__all__ = ["ROI_CACHE_SCHEMA", "SyntheticVectors", "plain_train", "synthetic_roi_table", "synthetic_vectors"]
