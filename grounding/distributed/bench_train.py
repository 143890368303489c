"""Training throughput: Ray Train vs the plain PyTorch loop (``grounding.bench.train``) over the same ROIs.

:func:`bench_train` reports steady-state samples/s (epochs after the first) for both, and Ray's fixed
costs separately: start-up (``fit()`` called -> first optimizer step) and teardown (last report ->
``fit()`` returned). :func:`cache_vs_streaming` compares training from the ROI cache with the frozen
detector in the loop.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from grounding.bench.train import plain_train, synthetic_roi_table, synthetic_vectors
from grounding.config import GroundingConfig
from grounding.data.storage import read_table, write_table
from grounding.model import engine
from grounding.model.batching import select_rows


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
    from grounding.distributed.runtime import init_ray
    from grounding.distributed.train import run_training
    from grounding.detection.rois import roi_feature_dim

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
    from grounding.distributed.train import run_training

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
