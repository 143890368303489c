"""Localization ablation: one change at a time on a finished pipeline's data, Ray-free.

For each variant: the frozen detector's ROI pool for the report-carrying rows (``purpose`` grounding
and eval; extracted once per (pool, features, N) and kept under ``<out>/pools``), a grounding model
trained with the plain loop (``grounding.model.engine``; the same in-memory shard, early stopping and
best-validation-loss weights as the Ray Train job), then on the held-out boxed images: top-1 hits by
alpha with the paired bootstrap against the detector's own top-1 box, and the ROI pool diagnostics
(``grounding.evaluation.pool_eval``).

Honest use (README "Localization"): choose on a development seed of the simulator
(``synth.seed=1``), report on the default seed, keep every row.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from grounding.evaluation import bootstrap
from grounding.model import engine
from grounding.data import storage
from grounding.evaluation import localization as ev
from grounding.evaluation import pool_eval
from grounding.model.batching import TRAIN_COLUMNS, InMemoryShard, select_rows
from grounding.config import GroundingConfig, RoiFeatures, RoiPool, load_config
from grounding.detection.rois import read_roi_cache
from grounding.evaluation.metrics import hit_name
from grounding.model.grounding_model import build_model

THRESHOLDS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class Variant:
    """A named set of ``--set``-style overrides; ``paper`` marks rows that are the paper's method."""

    name: str
    overrides: Mapping[str, object] = field(default_factory=dict)
    paper: bool = True
    note: str = ""


def pool_key(cfg: GroundingConfig) -> str:
    """``<roi_pool>-<roi_features>-<N>``: one ROI cache per key."""
    d = cfg.detector
    return f"{RoiPool(d.roi_pool).value}-{RoiFeatures(d.roi_features).value}-{d.num_rois}"


def extract_pool(cfg: GroundingConfig, prepared: str, detector_path: str, out: str, batch_size: int = 32) -> str:
    """ROI cache of the grounding + eval rows for ``cfg.detector``'s pool settings (skipped if present)."""
    from grounding.detection.detector import load_frozen_detector
    from grounding.data.prepared import read_prepared
    from grounding.detection.rois import rois_for_rows

    path = Path(out) / "rois.parquet"
    if path.exists():
        return str(path)
    table = read_prepared(prepared)
    table = table.filter(pc.is_in(table["purpose"], value_set=pa.array(["grounding", "eval"])))
    detector = load_frozen_detector(detector_path)
    d = cfg.detector
    parts = []
    for start in range(0, table.num_rows, batch_size):
        rows = table.slice(start, batch_size).to_pylist()
        parts.append(rois_for_rows(detector, rows, d.num_rois, pool=d.roi_pool, features=d.roi_features))
    Path(out).mkdir(parents=True, exist_ok=True)
    storage.write_table(pa.concat_tables(parts), str(path))
    return str(path)


def train_plain(cfg: GroundingConfig, table: pa.Table, vectors, log=print) -> tuple[torch.nn.Module, list[dict]]:
    """The Ray Train job's loop without Ray: AdamW, early stopping, best-validation-loss weights."""
    train, val = select_rows(table, "train"), select_rows(table, "val")
    cols = [c for c in TRAIN_COLUMNS if c in table.column_names]
    torch.manual_seed(cfg.optim.seed)
    np.random.seed(cfg.optim.seed % 2**32)
    model = build_model(int(train["feature_dim"][0].as_py()), vectors.vectors, vectors.negative_vectors, cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    train_rows, val_rows = InMemoryShard([train.select(cols)]), InMemoryShard([val.select(cols)])
    history: list[dict] = []
    best, best_loss = None, math.inf
    kw = dict(beta=cfg.loss.beta, use_classification=cfg.loss.use_classification, bce_weight=cfg.loss.bce_weight,
              negative_rois=cfg.loss.negative_rois, alpha_distill=cfg.loss.alpha_distill,
              alpha_distill_temperature=cfg.loss.alpha_distill_temperature)
    for epoch in range(cfg.optim.max_epochs):
        if engine.should_stop([h[engine.VAL_LOSS] for h in history], cfg.optim.early_stop_patience,
                              cfg.optim.early_stop_min_rel_change):
            break
        tr = engine.train_one_epoch(model, opt, train_rows.batches(cfg.optim.batch_size, cfg.optim.seed + 1000 * epoch),
                                    grad_clip=cfg.optim.grad_clip, **kw)
        va = engine.evaluate_epoch(model, (b for b in val_rows.batches(cfg.optim.batch_size) if b is not None), **kw)
        history.append(engine.epoch_metrics(epoch, tr, va))
        if math.isfinite(va.loss) and va.loss < best_loss:
            best_loss, best = va.loss, copy.deepcopy(model.state_dict())
    if best is not None:
        model.load_state_dict(best)
    log(f"  trained {len(history)} epochs, best val loss {best_loss:.4f}, "
        f"val AUC {history[-1][engine.VAL_AUC] if history else float('nan'):.3f}")
    return model.eval(), history


def evaluate_variant(model: torch.nn.Module, table: pa.Table, n_resamples: int, seed: int = 0) -> dict:
    """Top-1 hits by alpha vs the detector (paired), and the pool diagnostics, on the held-out boxed rows."""
    loc = ev.localization_rows(table)
    gt = ev.gt_boxes(loc)
    keep = [j for j, g in enumerate(gt) if len(g)]
    loc = loc.take(pa.array(keep, pa.int64()))
    gt = [gt[j] for j in keep]
    pool = pool_eval.read_pool(loc, gt)
    outs = pool_eval.model_pool_outputs(model, loc)
    chosen = [pool.boxes[i][int(np.argmax(outs[pid]["alpha"]))][None] if pid in outs else np.zeros((0, 4))
              for i, pid in enumerate(pool.image_ids)]
    retina = [b[:1] for b in ev.baseline_predictions(loc)]
    diag = pool_eval.diagnose(pool, {"proposed": model}, {"proposed": chosen}, loc, THRESHOLDS, n_resamples,
                              seed=seed)
    result = {"images": len(gt), "hits": {}, "vs_retinanet": {}, "retinanet": {}, "diagnostics": diag}
    for t in THRESHOLDS:
        ours = bootstrap.per_image_hits(chosen, gt, t)
        base = bootstrap.per_image_hits(retina, gt, t)
        result["hits"][hit_name(t)] = bootstrap.bootstrap_ci(ours, n_resamples, seed=seed).to_dict()
        result["retinanet"][hit_name(t)] = bootstrap.bootstrap_ci(base, n_resamples, seed=seed).to_dict()
        result["vs_retinanet"][hit_name(t)] = bootstrap.paired_bootstrap(ours, base, n_resamples, seed=seed).to_dict()
    return result


def run_ablation(work_dir: str, variants: Sequence[Variant], out: str, base_overrides: Sequence[str] = (),
                 n_resamples: int = 1000, log=print, pools_dir: str = "") -> list[dict]:
    """Every variant on ``work_dir`` (a pipeline run with prepared, detector, word_vectors, config.yaml).

    ``pools_dir`` (default ``<out>/pools``) holds the extracted ROI pools; runs over several training
    seeds share one, since the pool depends on the frozen detector only.
    """
    from grounding.text.word_vectors import load_attribute_vectors

    work = Path(work_dir)
    base = load_config(str(work / "config.yaml"), list(base_overrides))
    vectors = load_attribute_vectors(str(work / "word_vectors"))
    Path(out).mkdir(parents=True, exist_ok=True)
    saved = Path(out) / "ablation.json"
    done = {r["variant"]: r for r in json.loads(saved.read_text())} if saved.exists() else {}
    results = []
    for v in variants:
        if v.name in done and done[v.name]["overrides"] == {k: str(x) for k, x in v.overrides.items()}:
            results.append(done.pop(v.name))  # a rerun resumes: finished variants are kept, not redone
            log(f"[ablation] {v.name}: done already")
            continue
        cfg = base.with_overrides(dict(v.overrides))
        key = pool_key(cfg)
        log(f"[ablation] {v.name}: pool {key}")
        t0 = time.perf_counter()
        if key == pool_key(base) and (work / "rois" / "_DONE.json").exists():
            table = read_roi_cache(str(work / "rois"))  # the pipeline's own cache has this pool
        else:
            table = read_roi_cache(extract_pool(cfg, str(work / "prepared"), str(work / "detector" / "detector.pt"),
                                                str(Path(pools_dir or Path(out) / "pools") / key)))
        model, history = train_plain(cfg, table, vectors, log)
        row = {"variant": v.name, "paper": v.paper, "note": v.note, "overrides": {k: str(x) for k, x in v.overrides.items()},
               "pool": key, "epochs": len(history),
               "val_attribute_auc": history[-1][engine.VAL_AUC] if history else math.nan,
               **evaluate_variant(model, table, n_resamples), "seconds": round(time.perf_counter() - t0, 1)}
        results.append(row)
        log("  " + summary_line(row))
        storage.atomic_write_text(str(saved), json.dumps(results + list(done.values()), indent=1, default=str))
    storage.atomic_write_text(str(Path(out) / "ablation.md"), markdown_table(results))
    return results


def seed_table(by_seed: Mapping[int, Sequence[Mapping]], reference: str = "") -> list[dict]:
    """Across training seeds (one ablation run per ``optim.seed``): per variant, hit@0.5 and alpha's
    weighted IoU minus the pool mean per seed, their mean and sample sd, and, with ``reference``, the
    mean and sd of the per-seed difference to that variant (paired by seed).

    Only variants present for every seed are summarised (a row never mixes seed sets).
    """
    seeds = sorted(by_seed)
    rows_by_seed = {s: {r["variant"]: r for r in by_seed[s]} for s in seeds}
    names = [r["variant"] for r in by_seed[seeds[0]]] if seeds else []
    names = [n for n in names if all(n in rows_by_seed[s] for s in seeds)]

    def hit50(row: Mapping) -> float:
        return float(row["hits"]["hit_iou50"]["estimate"])

    def widen(row: Mapping) -> float:
        return float(row["diagnostics"]["methods"]["proposed"]["weighted_minus_pool_mean"]["estimate"])

    def stats(values: Sequence[float]) -> tuple[float, float]:
        v = np.asarray(values, dtype=np.float64)
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan

    out = []
    for name in names:
        rows = [rows_by_seed[s][name] for s in seeds]
        hits, widths = [hit50(r) for r in rows], [widen(r) for r in rows]
        row = {"variant": name, "paper": rows[0]["paper"], "seeds": seeds, "hit_iou50": hits,
               "hit_iou50_mean_sd": stats(hits), "weighted_minus_pool": widths,
               "weighted_minus_pool_mean_sd": stats(widths),
               "retinanet_hit_iou50": hit50({"hits": rows[0]["retinanet"]})}
        if reference and name != reference and reference in names:
            diffs = [h - hit50(rows_by_seed[s][reference]) for h, s in zip(hits, seeds)]
            row["minus_reference"] = diffs
            row["minus_reference_mean_sd"] = stats(diffs)
        out.append(row)
    return out


def seed_markdown(rows: Sequence[Mapping], reference: str = "") -> str:
    if not rows:
        return "no variant ran on every seed\n"
    seeds = rows[0]["seeds"]
    head = (f"| variant | paper's model | IoU>=0.5 per seed ({', '.join(map(str, seeds))}) | mean +/- sd | "
            f"minus {reference or '-'} (mean +/- sd) | alpha-weighted IoU - pool mean, mean +/- sd |")
    lines = [head, "|" + " --- |" * 6]
    for r in rows:
        m, sd = r["hit_iou50_mean_sd"]
        wm, wsd = r["weighted_minus_pool_mean_sd"]
        ref = (f"{100 * r['minus_reference_mean_sd'][0]:+.1f} +/- {100 * r['minus_reference_mean_sd'][1]:.1f}"
               if "minus_reference" in r else "-")
        lines.append(f"| {r['variant']} | {'yes' if r['paper'] else 'extension'} | "
                     f"{' / '.join(f'{100 * h:.1f}' for h in r['hit_iou50'])} | {100 * m:.1f} +/- {100 * sd:.1f} | "
                     f"{ref} | {wm:+.3f} +/- {wsd:.3f} |")
    lines += ["", f"RetinaNet top-1 at IoU>=0.5 on the same images: {100 * rows[0]['retinanet_hit_iou50']:.1f} %."]
    return "\n".join(lines) + "\n"


def _pct(cell: Mapping) -> str:
    return f"{100 * cell['estimate']:.1f}"


def _diff(cell: Mapping) -> str:
    return f"{100 * cell['estimate']:+.1f} [{100 * cell['low']:+.1f}, {100 * cell['high']:+.1f}]"


def summary_line(row: Mapping) -> str:
    d = row["diagnostics"]
    m = d["methods"]["proposed"]
    w = m["weighted_minus_pool_mean"]
    return (f"{row['variant']}: hit@.25 {_pct(row['hits']['hit_iou25'])} hit@.5 {_pct(row['hits']['hit_iou50'])} "
            f"(RetinaNet {_pct(row['retinanet']['hit_iou50'])}, diff {_diff(row['vs_retinanet']['hit_iou50'])}); "
            f"alpha-wIoU {m['weighted_iou']['estimate']:.3f} vs pool {w['mean_b']:.3f}; "
            f"oracle@.5 {_pct(d['pool']['oracle']['hit_iou50'])}, random@.5 {_pct(d['pool']['random']['hit_iou50'])}")


def markdown_table(rows: Sequence[Mapping]) -> str:
    head = ("| variant | paper's model | IoU>=0.25 | IoU>=0.5 | vs RetinaNet @0.5 (pp, 95 % CI) | vs random ROI @0.5 "
            "(pp, CI) | alpha-weighted IoU - pool mean [CI] | report-conditioned @0.5 | pool oracle @0.5 | "
            "random ROI @0.5 | probe ceiling @0.5 | epochs |")
    lines = [head, "|" + " --- |" * 12]
    for r in rows:
        d = r["diagnostics"]
        m = d["methods"]["proposed"]
        w = m["weighted_minus_pool_mean"]
        probe = d["probe_ceiling"]
        probe_cell = _pct(probe["hits"]["hit_iou50"]) if "hits" in probe else "-"
        lines.append(
            f"| {r['variant']} | {'yes' if r['paper'] else 'extension'} | {_pct(r['hits']['hit_iou25'])} | "
            f"{_pct(r['hits']['hit_iou50'])} | {_diff(r['vs_retinanet']['hit_iou50'])} | "
            f"{_diff(m['alpha_vs_random']['hit_iou50']) if 'alpha_vs_random' in m else '-'} | "
            f"{w['estimate']:+.3f} [{w['low']:+.3f}, {w['high']:+.3f}] | "
            f"{_pct(m['report_conditioned_ranking']['hits']['hit_iou50'])} | {_pct(d['pool']['oracle']['hit_iou50'])} | "
            f"{_pct(d['pool']['random']['hit_iou50'])} | {probe_cell} | {r['epochs']} |")
    if rows:
        r = rows[0]
        lines.append("")
        lines.append(f"RetinaNet top-1 on the same {r['images']} images: IoU>=0.25 {_pct(r['retinanet']['hit_iou25'])} %, "
                     f"IoU>=0.5 {_pct(r['retinanet']['hit_iou50'])} %.")
    return "\n".join(lines) + "\n"


__all__ = ["Variant", "evaluate_variant", "extract_pool", "markdown_table", "run_ablation", "seed_markdown",
           "seed_table", "train_plain"]
