"""Evaluation pieces (paper Table 1 and the attribute metrics), pure: tables and arrays in, dicts out.

Which rows count:

* **Localization** (:func:`localization_rows`): ROI-cache rows with an expert box annotation
  (``has_boxes``) in the held-out subset: ``purpose == "eval"`` (default; never trained on) or
  ``split == "test"``. Images whose annotation has zero boxes are then excluded by the metric
  itself (``grounding.evaluation.metrics`` rule: top-1 predicted box hits at t if IoU >= t with ANY expert
  box; images without expert boxes are not in the denominator).
* **Attributes** (:func:`attribute_rows`): held-out studies, ``split == "test"`` or
  ``purpose == "eval"``, from the report-carrying purposes (``grounding``/``eval``; the
  box-only detector site has no reports). Targets are the report's multi-hot attributes.

Methods and their top-1 box per image (all xyxy in ORIGINAL pixels):

* ``retinanet``: the frozen detector's own post-NMS detections in the cache, highest score first.
* ``proposed`` / ``proposed_no_cls``: the grounding model on the cached ROIs, ROIs ranked by alpha,
  NMS, the top box mapped from normalised [0, 1] with the row's width/height (:func:`score_table`).
* ``cam`` / ``gradcam``: ``grounding.detection.cam`` boxes (trained elsewhere; see ``grounding.evaluation.run``).
"""

from __future__ import annotations

import enum
import math
from typing import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from grounding.evaluation import bootstrap
from grounding.model.batching import iter_table_batches
from grounding.data.boxes import unflatten
from grounding.evaluation.metrics import best_iou, hit_name, validate_boxes
from grounding.model.grounding_model import localize
from grounding.text.vocabulary import ATTRIBUTE_INDEX, ATTRIBUTES, NUM_ATTRIBUTES

METHOD_ORDER = ("retinanet", "proposed_no_cls", "proposed", "cam", "gradcam")
# The paper's claims, as paired comparisons (method A - method B) on the same images.
CLAIMS = (("proposed", "retinanet"), ("proposed", "proposed_no_cls"))
SCORE_COLUMNS = ("image_id", "pred_boxes", "pred_scores", "probabilities")


class Subset(str, enum.Enum):
    """Which held-out rows Table 1 uses."""

    EVAL = "eval"  # purpose == eval: the report-only site's held-out expert boxes
    TEST = "test"  # split == test (any purpose): e.g. a box-labelled dataset's test patients


def _bool_col(table: pa.Table, name: str) -> pa.ChunkedArray:
    return pc.fill_null(table[name], False)


def localization_rows(table: pa.Table, subset: Subset | str = Subset.EVAL) -> pa.Table:
    """Rows with an expert box annotation in the held-out ``subset`` (module docstring)."""
    subset = Subset(subset)
    held = pc.equal(table["purpose"], "eval") if subset is Subset.EVAL else pc.equal(table["split"], "test")
    return table.filter(pc.and_(pc.fill_null(held, False), _bool_col(table, "has_boxes")))


def attribute_rows(table: pa.Table) -> pa.Table:
    """Held-out studies with reports: (split test or purpose eval) and purpose in (grounding, eval)."""
    held = pc.or_(pc.equal(table["split"], "test"), pc.equal(table["purpose"], "eval"))
    reported = pc.is_in(table["purpose"], value_set=pa.array(["grounding", "eval"]))
    return table.filter(pc.fill_null(pc.and_(held, reported), False))


def gt_boxes(table: pa.Table) -> list[np.ndarray]:
    """Per row (M_i, 4) expert boxes xyxy, original pixels."""
    return [unflatten(b) for b in table.column("boxes").to_pylist()]


def baseline_predictions(table: pa.Table) -> list[np.ndarray]:
    """Per row the detector's cached post-NMS boxes, sorted by descending score (top-1 first)."""
    out = []
    columns = (table.column("detector_boxes").to_pylist(), table.column("detector_scores").to_pylist())
    for boxes, scores in zip(*columns):
        b = unflatten(boxes)
        s = np.asarray(scores or [], dtype=np.float64)
        if len(s) != len(b):
            raise ValueError(f"detector_boxes ({len(b)}) and detector_scores ({len(s)}) disagree")
        out.append(b[np.argsort(-s, kind="stable")])
    return out


@torch.no_grad()
def score_table(model: torch.nn.Module, table: pa.Table, top_k: int = 1, nms_iou: float = 0.5,
                batch_size: int = 64, device: str | torch.device = "cpu") -> pa.Table:
    """Run the grounding model on cached ROIs: alpha-ranked, NMS'd boxes and 22 probabilities.

    Args:
        model: a ``GroundingModel`` in eval mode.
        table: ROI-cache rows (needs the ROI columns and ``width``/``height``).

    Returns:
        ``pa.Table[image_id, pred_boxes (flat xyxy ORIGINAL px, <= top_k boxes), pred_scores (alpha),
        probabilities (22)]``; rows ``collate_rois`` drops (corrupt features) are absent.
    """
    model = model.to(device).eval()
    sizes = dict(zip(table.column("image_id").to_pylist(),
                     zip(table.column("width").to_pylist(), table.column("height").to_pylist())))
    ids, boxes_out, scores_out, probs_out = [], [], [], []
    for b in iter_table_batches(table, batch_size):
        b = b.to(device)
        out = model(b.roi_features, b.roi_boxes, b.roi_scores, b.roi_mask)
        loc = localize(out, b.roi_boxes, iou_threshold=nms_iou, top_k=top_k, roi_mask=b.roi_mask)
        probs = out.probabilities.float().cpu().numpy()
        for i, image_id in enumerate(b.image_ids):
            w, h = sizes[image_id]
            if not (w and h):
                raise ValueError(f"image {image_id}: width/height unknown in the ROI cache; cannot map boxes")
            ids.append(image_id)
            boxes_out.append((loc.boxes[i].astype(np.float64) * np.array([w, h, w, h])).reshape(-1).tolist())
            scores_out.append(loc.scores[i].astype(np.float64).tolist())
            probs_out.append(probs[i].astype(np.float64).tolist())
    return pa.table({"image_id": pa.array(ids, pa.string()),
                     "pred_boxes": pa.array(boxes_out, pa.list_(pa.float64())),
                     "pred_scores": pa.array(scores_out, pa.list_(pa.float64())),
                     "probabilities": pa.array(probs_out, pa.list_(pa.float64()))})


def scores_by_id(scored: pa.Table) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``score_table`` output -> {image_id: (boxes (k, 4), scores (k,), probabilities (22,))}."""
    return {i: (unflatten(b), np.asarray(s, dtype=np.float64), np.asarray(p, dtype=np.float64))
            for i, b, s, p in zip(*(scored.column(c).to_pylist() for c in SCORE_COLUMNS))}


def aligned_boxes(ids: Sequence[str], scored: Mapping[str, tuple]) -> tuple[list[np.ndarray], int]:
    """Per id the scored boxes; an id without a prediction gets no box (a miss).

    Returns:
        (boxes per id, number of ids without a prediction).
    """
    out, missing = [], 0
    for i in ids:
        if i in scored:
            out.append(scored[i][0])
        else:
            out.append(np.zeros((0, 4)))
            missing += 1
    return out, missing


# -- Table 1 ------------------------------------------------------------------------------------
def _point_cells(pred: Sequence[np.ndarray], gt: Sequence[np.ndarray], thresholds: Sequence[float],
                 confidence: float) -> dict[str, dict]:
    ious = bootstrap.per_image_best_iou(pred, gt)
    n = len(ious)
    return {hit_name(t): bootstrap.Interval(float((ious >= t).mean()) if n else math.nan, math.nan, math.nan,
                                            n, 0, 0, confidence).to_dict() for t in thresholds}


def localization_table(methods: Mapping[str, Sequence[np.ndarray]], gt: Sequence[np.ndarray],
                       thresholds: Sequence[float] = (0.25, 0.5, 0.75), n_resamples: int = 1000,
                       confidence: float = 0.95, seed: int = 0,
                       cis_fn: Callable[..., dict] | None = None) -> dict[str, dict]:
    """``{method: {hit_name(t): Interval dict, ..., "mean_best_iou": float}}`` (report layout).

    ``n_resamples == 0`` gives point estimates (low/high NaN). ``cis_fn`` (e.g.
    ``grounding.distributed.tasks.localization_cis_ray``) computes all methods at once; default in-process.
    Every method uses the same seed, so all are resampled on the same image sets.
    """
    if n_resamples == 0:
        out = {m: _point_cells(p, gt, thresholds, confidence) for m, p in methods.items()}
    elif cis_fn is not None:
        out = cis_fn(dict(methods), list(gt), thresholds=tuple(thresholds), n_resamples=n_resamples,
                     confidence=confidence, seed=seed)
    else:
        out = {m: bootstrap.localization_cis(p, gt, thresholds, 1, n_resamples, confidence, seed)
               for m, p in methods.items()}
    for m, p in methods.items():
        ious = bootstrap.per_image_best_iou(p, gt)
        out[m]["mean_best_iou"] = float(ious.mean()) if len(ious) else math.nan
    return out


def comparisons(methods: Mapping[str, Sequence[np.ndarray]], gt: Sequence[np.ndarray],
                thresholds: Sequence[float] = (0.25, 0.5, 0.75), pairs: Sequence[tuple[str, str]] = CLAIMS,
                n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, dict]:
    """Paired differences of hit rates, ``{"proposed - retinanet, IoU 0.5": PairedInterval dict}``.

    Pairs whose methods are not both present are skipped. ``n_resamples == 0``: estimate only.
    """
    out = {}
    for a, b in pairs:
        if a not in methods or b not in methods:
            continue
        for t in thresholds:
            ha = bootstrap.per_image_hits(methods[a], gt, t)
            hb = bootstrap.per_image_hits(methods[b], gt, t)
            label = f"{a} - {b}, IoU {t:g}"
            if n_resamples:
                out[label] = bootstrap.paired_bootstrap(ha, hb, n_resamples, confidence, seed).to_dict()
            else:
                n = len(ha)
                est = float(ha.mean() - hb.mean()) if n else math.nan
                out[label] = bootstrap.PairedInterval(
                    est, math.nan, math.nan, n, 0, 0, confidence, mean_a=float(ha.mean()) if n else math.nan,
                    mean_b=float(hb.mean()) if n else math.nan).to_dict()
    return out


def per_image_ious(methods: Mapping[str, Sequence[np.ndarray]], gt: Sequence[np.ndarray]) -> dict[str, list]:
    """Per method, per row the top-1 IoU (NaN for rows without expert boxes), for the predictions file."""
    return {m: [best_iou(p, g) if len(validate_boxes(g)) else math.nan for p, g in zip(preds, gt)]
            for m, preds in methods.items()}


# -- attributes -----------------------------------------------------------------------------------
def attribute_targets(attributes: Sequence[Sequence[str] | None]) -> np.ndarray:
    """(N, 22) multi-hot from per-row attribute name lists (names outside the vocabulary ignored)."""
    t = np.zeros((len(attributes), NUM_ATTRIBUTES), dtype=np.float64)
    for i, names in enumerate(attributes):
        for a in names or []:
            if a in ATTRIBUTE_INDEX:
                t[i, ATTRIBUTE_INDEX[a]] = 1.0
    return t


def attribute_evaluation(table: pa.Table, scored: Mapping[str, tuple], threshold: float = 0.5) -> dict | None:
    """``grounding.evaluation.report.attribute_metrics`` on the scored rows of ``table``; None without rows."""
    from grounding.evaluation.report import attribute_metrics

    ids = [i for i in table.column("image_id").to_pylist() if i in scored]
    if not ids:
        return None
    by_id = dict(zip(table.column("image_id").to_pylist(), table.column("attributes").to_pylist()))
    y_true = attribute_targets([by_id[i] for i in ids])
    y_prob = np.stack([scored[i][2] for i in ids])
    return attribute_metrics(y_true, y_prob, ATTRIBUTES, threshold)


# -- CAM labels and case study --------------------------------------------------------------------
def report_labels(values: Sequence[bool | None]) -> np.ndarray:
    """Report-derived pneumonia labels (``pneumonia_positive``): 1 / 0, unknown (None) -> -1."""
    return np.array([-1 if v is None else int(bool(v)) for v in values], dtype=np.int8)


def case_study_ids(table: pa.Table, min_images: int = 2, max_images: int = 4) -> list[str]:
    """Image ids of the patient with the most dated images (``offset_days``), in time order.

    Ties go to the smallest patient pseudonym (deterministic). [] when no patient has
    ``min_images`` dated images.
    """
    if "offset_days" not in table.column_names or table.num_rows == 0:
        return []
    rows = [r for r in table.select(["image_id", "patient_id", "offset_days"]).to_pylist()
            if r["offset_days"] is not None]
    by_patient: dict[str, list[tuple[int, str]]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], []).append((int(r["offset_days"]), r["image_id"]))
    if not by_patient:
        return []
    patient = min(by_patient, key=lambda p: (-len(by_patient[p]), p))
    images = sorted(by_patient[patient])
    if len(images) < min_images:
        return []
    return [i for _, i in images[:max_images]]


__all__ = ["CLAIMS", "METHOD_ORDER", "SCORE_COLUMNS", "Subset", "aligned_boxes", "attribute_evaluation",
           "attribute_rows", "attribute_targets", "baseline_predictions", "case_study_ids", "comparisons",
           "gt_boxes", "localization_rows", "localization_table", "per_image_ious", "report_labels",
           "score_table", "scores_by_id"]
