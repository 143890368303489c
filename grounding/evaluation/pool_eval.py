"""ROI-pool diagnostics of the held-out boxed images, from an ROI cache and exported models.

Glue between the cache / models and :mod:`grounding.evaluation.pool_diagnostics` (the math). Used by
``grounding evaluate`` (section "ROI pool diagnostics" of report.md, key ``pool_diagnostics`` of
metrics.json) and by the localization ablation script. Ray-free; the held-out boxed subset is a few
hundred rows, so one process is enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch

from grounding.evaluation import pool_diagnostics as pdx
from grounding.model.batching import iter_table_batches
from grounding.model.grounding_model import GroundingModel, roi_relevance
from grounding.detection.rois import roi_arrays


@dataclass
class Pool:
    """The held-out images' ROI pools, aligned with ``image_ids``; boxes in original pixels."""

    image_ids: list[str]
    boxes: list[np.ndarray]  # (N_i, 4) xyxy original px
    scores: list[np.ndarray]  # (N_i,) detector scores
    probe_inputs: list[np.ndarray]  # (N_i, C + 5): r_i, normalised g_i, s_i (what the model sees)
    ious: list[np.ndarray]  # (N_i,) best IoU with an expert box
    gt: list[np.ndarray]


def read_pool(loc: pa.Table, gt: Sequence[np.ndarray]) -> Pool:
    """ROI pools of the localization rows ``loc`` (ROI-cache rows with width/height) and their IoUs."""
    cols = ["image_id", "width", "height", "roi_features", "roi_scores", "roi_boxes", "neg_roi_features",
            "neg_roi_scores", "neg_roi_boxes", "num_rois", "feature_dim", "detector_boxes", "detector_scores"]
    pool = Pool([], [], [], [], [], list(gt))
    for row, g in zip(loc.select(cols).to_pylist(), gt):
        a = roi_arrays(row)
        w, h = float(row["width"]), float(row["height"])
        boxes = a["boxes"].astype(np.float64) * np.array([w, h, w, h])
        pool.image_ids.append(row["image_id"])
        pool.boxes.append(boxes)
        pool.scores.append(a["scores"])
        pool.probe_inputs.append(np.hstack([a["features"], a["boxes"], a["scores"][:, None]]))
        pool.ious.append(pdx.roi_ious(boxes, g))
    return pool


@torch.no_grad()
def model_pool_outputs(model: GroundingModel, table: pa.Table, batch_size: int = 64) -> dict[str, dict]:
    """Per image id: ``alpha`` (N,) and, when the report has attributes, ``relevance`` (N,) = R_roi_i
    with the study's own report (:func:`grounding.model.grounding_model.roi_relevance`)."""
    model = model.eval()
    out: dict[str, dict] = {}
    for b in iter_table_batches(table, batch_size):
        o = model(b.roi_features, b.roi_boxes, b.roi_scores, b.roi_mask)
        rel = roi_relevance(model, o, b.roi_mask, b.attribute_ids, b.attribute_mask)
        has_text = b.attribute_mask.any(1)
        for i, image_id in enumerate(b.image_ids):
            n = int(b.roi_mask[i].sum())
            out[image_id] = {"alpha": o.alpha[i, :n].double().numpy(),
                             "relevance": rel[i, :n].double().numpy() if bool(has_text[i]) else None}
    return out


def diagnose(pool: Pool, models: Mapping[str, GroundingModel], chosen: Mapping[str, Sequence[np.ndarray]],
             table: pa.Table, thresholds: Sequence[float], n_resamples: int = 1000, confidence: float = 0.95,
             seed: int = 0, probe_folds: int = 5, outputs: dict | None = None) -> dict:
    """Every diagnostic of :mod:`grounding.evaluation.pool_diagnostics` for the pool and each model.

    Args:
        pool: :func:`read_pool` of the localization rows.
        models: method name -> loaded model (e.g. ``proposed``, ``proposed_no_cls``).
        chosen: method name -> per image its top-1 box (original px), aligned with ``pool.image_ids``.
        table: ROI-cache rows of ``pool.image_ids`` (the models' input, with attributes).
        outputs: if given, filled with method name -> :func:`model_pool_outputs` (reused by the figure).

    Returns:
        ``{"pool": ..., "detector_score_ranking": ..., "probe_ceiling": ..., "methods": {name: {...}}}``.
    """
    kw = dict(n_resamples=n_resamples, confidence=confidence, seed=seed)
    result: dict = {
        "pool": pdx.pool_summary(pool.ious, thresholds, **kw),
        "detector_score_ranking": pdx.ranking_hits(pool.scores, pool.ious, thresholds, **kw),
        "probe_ceiling": pdx.probe_ceiling(pool.probe_inputs, pool.ious, thresholds, folds=probe_folds, **kw),
        "methods": {},
    }
    for name, model in models.items():
        outs = model_pool_outputs(model, table)
        if outputs is not None:
            outputs[name] = outs
        idx = [i for i, image_id in enumerate(pool.image_ids) if image_id in outs
               and len(outs[image_id]["alpha"]) == len(pool.ious[i])]
        alphas = [outs[pool.image_ids[i]]["alpha"] for i in idx]
        sub = lambda xs: [xs[i] for i in idx]  # noqa: E731 - images the model scored
        entry = pdx.attention_summary(alphas, sub(pool.ious), sub(pool.scores), sub(list(chosen[name])),
                                      sub(pool.gt), **kw)
        entry["alpha_ranking"] = pdx.ranking_hits(alphas, sub(pool.ious), thresholds, **kw)
        entry["alpha_vs_random"] = pdx.ranking_vs_random(alphas, sub(pool.ious), thresholds, **kw)
        with_text = [i for i in idx if outs[pool.image_ids[i]]["relevance"] is not None]
        entry["report_conditioned_ranking"] = {
            "images": len(with_text),
            "hits": pdx.ranking_hits([outs[pool.image_ids[i]]["relevance"] for i in with_text],
                                     [pool.ious[i] for i in with_text], thresholds, **kw),
            # the same images' random expectation, so the two are comparable
            "random": pdx.pool_summary([pool.ious[i] for i in with_text], thresholds, **kw)["random"],
        }
        result["methods"][name] = entry
    return result


def alpha_figure_inputs(pool: Pool, alphas: Mapping[str, np.ndarray], k: int) -> list[int]:
    """Indices of up to ``k`` images for the alpha-over-the-pool figure: those with the largest oracle
    IoU first (where selection could matter), ties by order."""
    order = sorted(range(len(pool.ious)), key=lambda i: -(pool.ious[i].max() if len(pool.ious[i]) else 0.0))
    return [i for i in order if pool.image_ids[i] in alphas][:k]


__all__ = ["Pool", "alpha_figure_inputs", "diagnose", "model_pool_outputs", "read_pool"]
