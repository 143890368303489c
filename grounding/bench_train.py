"""Training throughput: Ray Train vs a plain PyTorch loop over the same cached ROIs.

``bench_train`` reports steady-state samples/s (epochs after the first) for both, and Ray's fixed
costs separately: start-up (``fit()`` called -> first optimizer step) and teardown (last report ->
``fit()`` returned). Also holds :func:`synthetic_roi_table`, a tiny learnable ROI cache for tests
and for benchmarking without a detector run.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from grounding import engine
from grounding.batching import TRAIN_COLUMNS, InMemoryShard, select_rows
from grounding.config import GroundingConfig
from grounding.model import build_model
from grounding.schema import MANIFEST_SCHEMA, ROI_EXTRA
from grounding.storage import read_table, write_table
from grounding.vocabulary import ATTRIBUTES, NUM_ATTRIBUTES, VOCABULARY_VERSION

ROI_CACHE_SCHEMA = pa.schema([f for f in MANIFEST_SCHEMA if f.name != "report_text"] + [pa.field(n, t) for n, t in ROI_EXTRA])


@dataclass
class SyntheticVectors:
    """Stand-in for ``grounding.word_vectors.AttributeVectors``."""

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


def bench_train(
    cfg: GroundingConfig, rois: str | None = None, vectors: Any = None, epochs: int = 3,
    num_workers: int = 1, synthetic_rows: int = 512, address: str | None = None,
) -> dict:
    """Samples/s of training through Ray Train vs a plain loop over the same ROI cache.

    Args:
        cfg: base config (model, loss, optim.batch_size are used; max_epochs is set to ``epochs``).
        rois: ROI cache path; None = a synthetic cache of ``synthetic_rows`` rows (detector-shaped:
            ``detector.num_rois`` ROIs of ``roi_feature_dim`` features: ``detector.fpn_channels``, x4
            for ``roi_align``) in a temp folder.
        vectors: AttributeVectors-like; None = random vectors.
        epochs: epochs per run (>= 2 so a steady state exists).
        num_workers: Ray Train workers (0 = local mode).
        address: Ray address (None = local Ray).

    Returns:
        dict with ``plain`` and ``ray`` sections (samples/s, start-up and teardown seconds).
    """
    from grounding.ray_runtime import init_ray
    from grounding.ray_train import run_training
    from grounding.rois import roi_feature_dim

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    if rois is None:
        rois = str(tmp / "rois.parquet")
        # detector-shaped ROIs: N = detector.num_rois, C = the width detector.roi_features gives
        width = roi_feature_dim(cfg.detector.fpn_channels, cfg.detector.roi_features)
        write_table(synthetic_roi_table(synthetic_rows, num_rois=cfg.detector.num_rois,
                                        feature_dim=width, splits=(0.9, 0.1)), rois)
    table = read_table(rois)
    if vectors is None:
        vectors = synthetic_vectors(cfg.word_vectors.vector_size)
    cfg = cfg.with_overrides({
        "optim.max_epochs": epochs, "train.num_workers": num_workers, "run.work_dir": str(tmp / "work"),
        "run.storage_path": "", "train.tensorboard": False, "optim.early_stop_patience": max(epochs, 1),
    })
    # Same intra-op threads as one Ray Train worker (Ray sets OMP_NUM_THREADS = its CPUs), so the
    # comparison is the framework, not the thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    try:
        plain = plain_train(cfg, table, vectors, epochs)
    finally:
        torch.set_num_threads(threads)
    plain["torch_threads"] = max(1, int(cfg.train.cpus_per_worker))
    init_ray(address)
    t_fit = time.time()
    res = run_training(cfg, rois, vectors, run_id=f"bench-{int(t_fit)}")
    t_done = time.time()
    h = res.history
    steady = h[1:] or h
    ray_sps = sum(m["train_samples"] for m in steady) / max(sum(m[engine.EPOCH_SECONDS] for m in steady), 1e-9)
    out = {
        "rows_train": int(select_rows(table, "train").num_rows), "batch_size": cfg.optim.batch_size,
        "epochs": epochs, "num_workers": num_workers, "plain": plain,
        "ray": {
            "samples_per_s": ray_sps,  # per worker x workers = shard sizes are summed on rank 0 only
            "startup_s": (h[0]["first_step_time"] - t_fit) if h else None,
            "teardown_s": (t_done - h[-1]["report_time"]) if h else None,
            "fit_s": res.fit_seconds,
        },
    }
    if num_workers > 1:
        out["ray"]["samples_per_s"] = ray_sps * num_workers  # rank 0 saw 1/num_workers of each epoch
    out["ray_over_plain"] = out["ray"]["samples_per_s"] / max(plain["samples_per_s"], 1e-9)
    (tmp / "bench_train.json").write_text(json.dumps(out, indent=2))
    return out


def cache_vs_streaming(cfg: GroundingConfig, rois: str, vectors: Any, prepared: str, detector: str,
                       epochs: int) -> dict:
    """Steady-state epoch time of the same training from the ROI cache and with the detector in the loop."""
    import uuid

    from grounding.config import TrainMode, replace
    from grounding.ray_train import run_training

    out = {}
    for mode in (TrainMode.CACHE, TrainMode.STREAMING):
        run_cfg = replace(cfg, train=replace(cfg.train, mode=mode, num_workers=1),
                          optim=replace(cfg.optim, max_epochs=epochs, early_stop_patience=epochs + 1))
        res = run_training(run_cfg, rois, vectors, run_id=f"bench-{mode.value}-{uuid.uuid4().hex[:6]}",
                           prepared=prepared, detector_weights=detector)
        steady = [h["epoch_seconds"] for h in res.history[1:]] or [h["epoch_seconds"] for h in res.history]
        out[mode.value] = {"epoch_s": round(sum(steady) / max(len(steady), 1), 3), "fit_s": round(res.fit_seconds, 1),
                           "epochs": len(res.history)}
    out["streaming_over_cache"] = round(out["streaming"]["epoch_s"] / max(out["cache"]["epoch_s"], 1e-9), 1)
    return out


__all__ = ["ROI_CACHE_SCHEMA", "SyntheticVectors", "bench_train", "cache_vs_streaming", "plain_train", "synthetic_roi_table", "synthetic_vectors"]
