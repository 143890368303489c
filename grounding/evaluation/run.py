"""The ``grounding evaluate`` run: ROI cache + checkpoints (+ prepared images) -> metrics, report, figures.

Ray-free: model scoring and the bootstrap are injectable (``score_fn``, ``cis_fn``) so
``grounding.distributed.evaluate`` can fan them out on Ray with identical results.

CAM / Grad-CAM baseline: one ``grounding.detection.cam.CamClassifier`` is trained on the prepared images of
the **grounding training rows** (``purpose == grounding``, ``split == train``: the images the
proposed model trained on) with the **report-derived** label ``pneumonia_positive`` (the same weak,
report-level supervision; never the expert boxes), then CAM and Grad-CAM boxes are taken on the
held-out images. With GAP + one linear unit, Grad-CAM = ReLU(CAM) / (h w), so both give the same
box (``grounding.detection.cam``); both rows are reported as the paper does.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from grounding.evaluation import localization as ev
from grounding.data import storage
from grounding.data.boxes import scale_boxes
from grounding.detection.rois import read_roi_cache
from grounding.text.vocabulary import ATTRIBUTES

log = logging.getLogger(__name__)

# Metric columns of metrics.jsonl worth a curve (when present); the rest are timings and counters.
CURVE_KEYS = ("train_loss", "val_loss", "train_trip", "val_trip", "train_bce", "val_bce", "val_attribute_auc",
              "val_auc", "lr")


@dataclass
class EvalSettings:
    """What one evaluation run needs (the config's ``eval`` section is unpacked into it once)."""

    iou_thresholds: tuple[float, ...] = (0.25, 0.5, 0.75)
    bootstrap_samples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    cam_threshold: float = 0.5
    cam_epochs: int = 5
    cam_input_size: int = 64  # = EvalConfig.cam_input_size
    subset: ev.Subset = ev.Subset.EVAL
    nms_iou: float = 0.5
    batch_size: int = 64
    figure_images: int = 8
    pool_diagnostics: bool = True  # the "ROI pool diagnostics" section (grounding.evaluation.pool_eval)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, eval_cfg, **kw) -> "EvalSettings":
        return cls(iou_thresholds=tuple(eval_cfg.iou_thresholds),
                   bootstrap_samples=eval_cfg.bootstrap_samples, confidence=eval_cfg.confidence,
                   seed=eval_cfg.seed, cam_threshold=eval_cfg.cam_threshold,
                   cam_epochs=eval_cfg.cam_epochs, cam_input_size=eval_cfg.cam_input_size,
                   pool_diagnostics=eval_cfg.pool_diagnostics, **kw)


def score_checkpoint(model_path: str, table: pa.Table, nms_iou: float = 0.5,
                     batch_size: int = 64) -> pa.Table:
    """In-process scoring: load the exported model and ``evaluation.score_table`` on ``table``."""
    from grounding.model.checkpoint import load_model

    model, _, _ = load_model(model_path)
    return ev.score_table(model, table, top_k=1, nms_iou=nms_iou, batch_size=batch_size)


def _take(table: pa.Table, ids: list[str]) -> pa.Table:
    return table.filter(pc.is_in(table["image_id"], value_set=pa.array(ids, pa.string())))


def _cam_methods(prepared: str, loc: pa.Table, s: EvalSettings) -> tuple[dict, dict]:
    """CAM and Grad-CAM top-1 boxes (original px) for the rows of ``loc``; (methods, info)."""
    from grounding.detection.cam import CamMethod, cam_boxes
    from grounding.detection.cam_train import train_cam_classifier_arrays
    from grounding.data.prepared import bytes_to_pixels, read_prepared

    cols = ["image_id", "purpose", "split", "pneumonia_positive", "pixels", "image_size"]
    table = read_prepared(prepared, columns=cols)
    train = table.filter(pc.fill_null(pc.and_(pc.equal(table["purpose"], "grounding"),
                                              pc.equal(table["split"], "train")), False))
    labels = ev.report_labels(train.column("pneumonia_positive").to_pylist())
    info = {"train_images": int(train.num_rows), "train_positive": int((labels == 1).sum())}
    if train.num_rows == 0 or len(set(labels[labels >= 0].tolist())) < 2:
        raise ValueError(f"{prepared}: the grounding training rows need both report labels to train the CAM "
                         f"classifier (got {info['train_positive']} positive of {info['train_images']})")
    images = np.stack([bytes_to_pixels(p, n) for p, n in zip(train.column("pixels").to_pylist(),
                                                             train.column("image_size").to_pylist())])
    model = train_cam_classifier_arrays(images, labels, epochs=s.cam_epochs, seed=s.seed,
                                        input_size=s.cam_input_size)
    del images
    ids = loc.column("image_id").to_pylist()
    ev_rows = {r["image_id"]: r
               for r in _take(table, ids).select(["image_id", "pixels", "image_size"]).to_pylist()}
    have = [i for i in ids if i in ev_rows]
    info["eval_images_without_pixels"] = len(ids) - len(have)
    sizes = dict(zip(ids, zip(loc.column("height").to_pylist(), loc.column("width").to_pylist())))
    methods = {}
    for method in (CamMethod.CAM, CamMethod.GRADCAM):
        by_id = {}
        if have:
            px = np.stack([bytes_to_pixels(ev_rows[i]["pixels"], ev_rows[i]["image_size"]) for i in have])
            preds = cam_boxes(model, px, method, s.cam_threshold, [sizes[i] for i in have])
            by_id = {i: p.boxes for i, p in zip(have, preds)}
        methods[method.value] = [by_id.get(i, np.zeros((0, 4))) for i in ids]
    return methods, info


def _extensions(model_path: str) -> list[str]:
    """Non-paper switches recorded in an exported model's config ([] without a readable config)."""
    from grounding.model.checkpoint import CheckpointError, load_model
    from grounding.config import paper_extensions

    if not model_path:
        return []
    try:
        return paper_extensions(load_model(model_path)[1])
    except (OSError, ValueError, CheckpointError):
        return []


def _pool_diagnostics(loc: pa.Table, gt: list, methods: dict, checkpoints: dict[str, str], prepared: str,
                      out: str, s: EvalSettings) -> tuple[dict, dict[str, str]]:
    """``pool_eval.diagnose`` for every model that picks from the pool, and the alpha figure."""
    from grounding.evaluation import pool_eval
    from grounding.model.checkpoint import load_model

    pool = pool_eval.read_pool(loc, gt)
    keep = [j for j, g in enumerate(gt) if len(g)]  # images with expert boxes, as Table 1 counts them
    pool = pool_eval.Pool(*([getattr(pool, f)[j] for j in keep] for f in
                            ("image_ids", "boxes", "scores", "probe_inputs", "ious", "gt")))
    models = {name: load_model(path)[0] for name, path in checkpoints.items() if path}
    chosen = {name: [methods[name][j][:1] for j in keep] for name in models}
    rows = _take(loc, pool.image_ids)
    outputs: dict = {}
    result = pool_eval.diagnose(pool, models, chosen, rows, s.iou_thresholds, s.bootstrap_samples or 1,
                                s.confidence, s.seed, outputs=outputs)
    figures: dict[str, str] = {}
    if prepared and "proposed" in models and pool.image_ids:
        from grounding.evaluation import figures as figs
        from grounding.data.prepared import bytes_to_pixels, read_prepared

        alphas = {i: o["alpha"] for i, o in outputs["proposed"].items()}  # computed once, by diagnose
        pick = pool_eval.alpha_figure_inputs(pool, alphas, s.figure_images)
        ids = [pool.image_ids[i] for i in pick]
        px_rows = _take(read_prepared(prepared, columns=["image_id", "pixels", "image_size"]), ids).to_pylist()
        px = {r["image_id"]: bytes_to_pixels(r["pixels"], r["image_size"]) for r in px_rows}
        sizes = dict(zip(loc.column("image_id").to_pylist(),
                         zip(loc.column("height").to_pylist(), loc.column("width").to_pylist())))
        pick = [i for i in pick if pool.image_ids[i] in px]
        if pick:
            def prep(boxes, image_id):
                n = px[image_id].shape[0]
                return scale_boxes(boxes, sizes[image_id], (n, n))

            figures["Alpha over the ROI pool (proposed)"] = figs.alpha_over_pool(
                [px[pool.image_ids[i]] for i in pick], [prep(pool.boxes[i], pool.image_ids[i]) for i in pick],
                [alphas[pool.image_ids[i]] for i in pick], [prep(pool.gt[i], pool.image_ids[i]) for i in pick],
                storage.join(out, "figures", "alpha_pool.png"), titles=[pool.image_ids[i][:10] for i in pick])
    return result, figures


def _read_history(path: str) -> list[dict]:
    """metrics.jsonl (one JSON object per epoch) or a CSV (``figures.read_history``)."""
    from grounding.evaluation.figures import read_history

    fs, p = storage.resolve(path)
    with fs.open_input_stream(p) as f:
        text = f.read().decode("utf-8")
    if text.lstrip().startswith("{"):
        return read_history([json.loads(line) for line in text.splitlines() if line.strip()])
    return read_history(path)


def _figures(out: str, loc: pa.Table, table: pa.Table, gt: list, scored: dict, prepared: str,
             histories: list[str], manifest: str, s: EvalSettings) -> dict[str, str]:
    from grounding.evaluation import figures as figs
    from grounding.data.prepared import bytes_to_pixels, read_prepared

    paths: dict[str, str] = {}
    fig_dir = storage.join(out, "figures")
    storage.makedirs(fig_dir)
    for k, h in enumerate(histories):
        try:
            rows = _read_history(h)
            keys = [c for c in CURVE_KEYS if any(c in r for r in rows)] or None
            name = PurePosixPath(h).parent.name or f"run{k}"
            paths[f"Training curves ({name})"] = figs.training_curves(
                rows, storage.join(fig_dir, f"curves_{k}.png"), keys=keys)
        except (OSError, ValueError) as err:
            s.notes.append(f"training curves of {h} skipped: {err}")
    if not prepared:
        s.notes.append("boxes grid and case study skipped: no --prepared images (pixels needed)")
        return paths
    with_gt = [j for j, g in enumerate(gt) if len(g)][: s.figure_images]
    case_ids = ev.case_study_ids(ev.attribute_rows(table)) or ev.case_study_ids(table)
    want = [loc.column("image_id")[j].as_py() for j in with_gt] + case_ids
    pixel_rows = _take(read_prepared(prepared, columns=["image_id", "pixels", "image_size"]), want)
    pixel_rows = pixel_rows.to_pylist()
    px = {r["image_id"]: bytes_to_pixels(r["pixels"], r["image_size"]) for r in pixel_rows}
    rows = {r["image_id"]: r
            for r in table.select(["image_id", "width", "height", "offset_days"]).to_pylist()}

    def to_prepared(boxes, image_id):
        r, n = rows[image_id], px[image_id].shape[0]
        return scale_boxes(boxes, (r["height"], r["width"]), (n, n))

    grid = [j for j in with_gt if loc.column("image_id")[j].as_py() in px]
    if grid:
        ids = [loc.column("image_id")[j].as_py() for j in grid]
        empty = (np.zeros((0, 4)), np.zeros(0), np.full(len(ATTRIBUTES), math.nan))
        paths["Expert (green) vs proposed (red) boxes"] = figs.boxes_grid(
            [px[i] for i in ids], [to_prepared(gt[j], i) for j, i in zip(grid, ids)],
            [to_prepared(scored.get(i, empty)[0], i) for i in ids], storage.join(fig_dir, "boxes_grid.png"),
            attribute_probs=[dict(zip(ATTRIBUTES, scored[i][2])) if i in scored else {} for i in ids],
            titles=[i[:10] for i in ids])
    case_ids = [i for i in case_ids if i in px and i in scored]
    if len(case_ids) >= 2:
        texts = _report_texts(manifest, case_ids)
        paths["Case study: one patient over time"] = figs.case_study(
            [px[i] for i in case_ids], [to_prepared(scored[i][0], i) for i in case_ids],
            [dict(zip(ATTRIBUTES, scored[i][2])) for i in case_ids], [texts.get(i, "") for i in case_ids],
            [rows[i]["offset_days"] for i in case_ids], storage.join(fig_dir, "case_study.png"))
    else:
        s.notes.append("case study skipped: no patient with >= 2 dated images (offset_days) in the cache")
    return paths


def _report_texts(manifest: str, ids: list[str]) -> dict[str, str]:
    if not manifest:
        return {}
    t = storage.read_table(manifest, columns=["image_id", "report_text"])
    t = _take(t, ids)
    return dict(zip(t.column("image_id").to_pylist(), t.column("report_text").to_pylist()))


def run_evaluation(rois: str, checkpoint: str, out: str, settings: EvalSettings, checkpoint_no_cls: str = "",
                   prepared: str = "", histories: tuple[str, ...] | list[str] = (), manifest: str = "",
                   score_fn: Optional[Callable[..., pa.Table]] = None,
                   cis_fn: Optional[Callable[..., dict]] = None) -> dict:
    """Table 1, paired comparisons, attribute metrics, figures -> ``out``; returns the metrics dict.

    Args:
        rois: ROI cache folder. checkpoint / checkpoint_no_cls: exported ``model.pt`` files.
        prepared: prepared-image cache (CAM/Grad-CAM and figures need pixels); "" skips them.
        histories: ``metrics.jsonl`` files of training runs (curves).
        manifest: optional manifest Parquet (report texts for the case study).
        score_fn: ``(model_path, table, nms_iou, batch_size) -> score table``; default in-process.
        cis_fn: all-methods bootstrap (``grounding.distributed.tasks.localization_cis_ray``); default in-process.
    """
    s = settings
    score_fn = score_fn or score_checkpoint
    table = read_roi_cache(rois)
    loc = ev.localization_rows(table, s.subset)
    if loc.num_rows == 0:
        raise ValueError(f"{rois}: no ROI rows with expert boxes in subset '{s.subset.value}' "
                         f"({table.num_rows} rows in the cache); try --subset test")
    attr = ev.attribute_rows(table)
    case_ids = (ev.case_study_ids(attr) or ev.case_study_ids(table)) if prepared else []
    case = _take(table, case_ids)
    ids_all = sorted(set(loc.column("image_id").to_pylist()) | set(attr.column("image_id").to_pylist())
                     | set(case.column("image_id").to_pylist()))
    scored = ev.scores_by_id(score_fn(checkpoint, _take(table, ids_all), s.nms_iou, s.batch_size))
    ids = loc.column("image_id").to_pylist()
    gt = ev.gt_boxes(loc)
    methods: dict[str, list] = {"retinanet": ev.baseline_predictions(loc)}
    counts = {"rois_rows": table.num_rows, "localization_rows": loc.num_rows,
              "images_with_expert_boxes": int(sum(len(g) > 0 for g in gt)), "attribute_rows": attr.num_rows}
    if checkpoint_no_cls:
        no_cls = ev.scores_by_id(score_fn(checkpoint_no_cls, loc, s.nms_iou, s.batch_size))
        methods["proposed_no_cls"], counts["proposed_no_cls_missing"] = ev.aligned_boxes(ids, no_cls)
    else:
        s.notes.append("proposed without classification skipped: no --checkpoint-no-cls")
    methods["proposed"], counts["proposed_missing"] = ev.aligned_boxes(ids, scored)
    if prepared:
        try:
            cam, info = _cam_methods(prepared, loc, s)
            methods.update(cam)
            counts["cam"] = info
        except (ValueError, OSError) as err:
            s.notes.append(f"CAM / Grad-CAM skipped: {err}")
    else:
        s.notes.append("CAM / Grad-CAM skipped: no --prepared images")
    metrics: dict = {
        "iou_thresholds": list(s.iou_thresholds), "subset": s.subset.value,
        "localization": ev.localization_table(methods, gt, s.iou_thresholds, s.bootstrap_samples,
                                              s.confidence, s.seed, cis_fn),
        "comparisons": ev.comparisons(methods, gt, s.iou_thresholds, ev.CLAIMS, s.bootstrap_samples,
                                      s.confidence, s.seed),
        "counts": counts,
    }
    for name, path in (("proposed", checkpoint), ("proposed_no_cls", checkpoint_no_cls)):
        ext = _extensions(path)
        if ext:
            s.notes.append(f"{name} uses extensions beyond the paper's model: {', '.join(ext)} (README "
                           "\"Localization\").")
    attr_metrics = ev.attribute_evaluation(attr, scored)
    if attr_metrics is not None:
        metrics["attributes"] = attr_metrics
    s.notes.append(f"Attributes: {attr.num_rows} held-out studies (split test or purpose eval, "
                   "purposes grounding/eval), targets = report attributes.")
    if "cam" in methods:
        s.notes.append("CAM / Grad-CAM: one classifier trained on the grounding training images with the "
                       "report-derived label pneumonia_positive (same images and weak supervision as the "
                       "proposed model); with GAP + linear head both give the same box.")
    storage.makedirs(out)
    pool_figures: dict[str, str] = {}
    if s.pool_diagnostics:
        try:
            metrics["pool_diagnostics"], pool_figures = _pool_diagnostics(
                loc, gt, methods, {"proposed_no_cls": checkpoint_no_cls, "proposed": checkpoint}, prepared, out, s)
        except (ValueError, OSError) as err:
            s.notes.append(f"ROI pool diagnostics skipped: {err}")
    ious = ev.per_image_ious(methods, gt)
    top1 = {f"box_{m}": [b[:1].reshape(-1).tolist() for b in p] for m, p in methods.items()}
    storage.write_table(pa.table({"image_id": ids, **{f"iou_{m}": v for m, v in ious.items()}, **top1}),
                        storage.join(out, "predictions.parquet"))
    figures = {**_figures(out, loc, table, gt, scored, prepared, list(histories), manifest, s), **pool_figures}
    metrics["notes"] = list(s.notes)
    from grounding.evaluation.report import write_report

    path = write_report(out, metrics, figures)
    fs, p = storage.resolve(path)
    with fs.open_input_stream(p) as f:
        text = f.read().decode("utf-8")
    storage.atomic_write_text(path, text + "\n## Notes\n\n" + "".join(f"- {n}\n" for n in s.notes))
    return metrics


__all__ = ["EvalSettings", "run_evaluation", "score_checkpoint"]
