"""Evaluation report: ``metrics.json`` (atomic, NaN -> null) and a Markdown report with the paper's tables.

``metrics`` layout (every section optional):

* ``"localization"``: ``{method key: {hit_name(t): cell}}`` where a cell is a float or a
  ``grounding.evaluation.bootstrap.Interval`` dict (``estimate``, ``low``, ``high``, ``n``...). Method keys
  in ``METHOD_LABELS`` are shown in the paper's Table 1 order and with its names; other keys follow.
* ``"comparisons"``: ``{label: PairedInterval dict}`` (e.g. "proposed - RetinaNet, IoU 0.5").
* ``"attributes"``: the output of ``attribute_metrics``.
* ``"severity"``: the output of ``grounding.evaluation.severity.severity_cv`` (Table 2).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from grounding.data import storage
from grounding.evaluation.metrics import hit_name

METHOD_LABELS = {
    "retinanet": "Supervised RetinaNet (baseline)",
    "proposed_no_cls": "Proposed without classification (L_trip only)",
    "proposed": "Proposed (L_trip + L_BCE)",
    "cam": "CAM",
    "gradcam": "Grad-CAM",
}
SEVERITY_LABELS = {"p_severe": "P(severe)", "p_mild": "P(mild)"}
SEVERITY_ROWS = (("pearson_r", "Pearson r"), ("pearson_p", "Pearson p-value"), ("spearman_rho", "Spearman rho"),
                 ("spearman_p", "Spearman p-value"), ("r2", "R^2"), ("mae", "MAE"), ("mse", "MSE"))


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types: NaN/inf -> None, numpy scalars/arrays -> Python, tuples -> lists."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    return obj


def write_metrics_json(path: str, metrics: Mapping[str, Any]) -> str:
    """Strict JSON (no NaN tokens), sorted keys, written atomically."""
    storage.atomic_write_text(path, json.dumps(to_jsonable(metrics), indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def attribute_metrics(y_true: np.ndarray, y_prob: np.ndarray, names: Sequence[str],
                      threshold: float = 0.5) -> dict:
    """Per-attribute AUC and accuracy of the attribute classifier on held-out studies.

    Args:
        y_true: (N, A) multi-hot targets (0/1).
        y_prob: (N, A) probabilities.
        names: A attribute names (``grounding.text.vocabulary.ATTRIBUTES``).
        threshold: probability cut for accuracy.

    Returns:
        ``{"per_attribute": {name: {"auc", "accuracy", "n_positive", "n"}}, "mean_auc",
        "n_auc_defined", "mean_accuracy"}``. AUC is NaN (and left out of ``mean_auc``) for an
        attribute with only one class among the targets.
    """
    from sklearn.metrics import roc_auc_score

    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_prob, dtype=np.float64)
    if t.shape != p.shape or t.ndim != 2 or t.shape[1] != len(names):
        raise ValueError(f"attribute_metrics: shapes {t.shape} / {p.shape} for {len(names)} attributes")
    per = {}
    for j, name in enumerate(names):
        pos = int(t[:, j].sum())
        auc = float(roc_auc_score(t[:, j], p[:, j])) if 0 < pos < len(t) else math.nan
        acc = float(((p[:, j] >= threshold) == (t[:, j] > 0.5)).mean()) if len(t) else math.nan
        per[name] = {"auc": auc, "accuracy": acc, "n_positive": pos, "n": int(len(t))}
    aucs = np.array([v["auc"] for v in per.values()])
    accs = np.array([v["accuracy"] for v in per.values()])
    ok = np.isfinite(aucs)
    return {"per_attribute": per, "mean_auc": float(aucs[ok].mean()) if ok.any() else math.nan,
            "n_auc_defined": int(ok.sum()),
            "mean_accuracy": float(np.nanmean(accs)) if np.isfinite(accs).any() else math.nan}


def _pct_cell(cell: Any) -> str:
    if cell is None:
        return "-"
    if isinstance(cell, Mapping):
        est, lo, hi = cell.get("estimate"), cell.get("low"), cell.get("high")
        if est is None or not math.isfinite(est):
            return "n/a"
        if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
            return f"{100 * est:.1f}"
        return f"{100 * est:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{100 * float(cell):.1f}" if math.isfinite(float(cell)) else "n/a"


def _num(v: Any, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return format(float(v), fmt)


def localization_table(loc: Mapping[str, Mapping[str, Any]], thresholds: Sequence[float] = (0.25, 0.5, 0.75)) -> str:
    """Table 1 Markdown: rows = methods, columns = hit@IoU t in % with 95 % CI."""
    keys = [k for k in METHOD_LABELS if k in loc] + [k for k in loc if k not in METHOD_LABELS]
    head = "| Method | " + " | ".join(f"IoU >= {t:g} (%)" for t in thresholds) + " | n images |"
    lines = [head, "|" + " --- |" * (len(thresholds) + 2)]
    for k in keys:
        row = loc[k]
        cells = [_pct_cell(row.get(hit_name(t))) for t in thresholds]
        first = row.get(hit_name(thresholds[0]))
        n = first.get("n") if isinstance(first, Mapping) else row.get("num_images_with_boxes")
        lines.append(f"| {METHOD_LABELS.get(k, k)} | " + " | ".join(cells) + f" | {'-' if n is None else int(n)} |")
    return "\n".join(lines)


def comparisons_table(comp: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| Comparison | difference (pp) | 95 % CI (pp) | P*(diff > 0) | n |", "| --- | --- | --- | --- | --- |"]
    for label, c in comp.items():
        lines.append(f"| {label} | {_num(100 * c['estimate'] if c.get('estimate') is not None else None, '+.1f')} | "
                     f"[{_num(100 * c['low'] if c.get('low') is not None else None, '+.1f')}, "
                     f"{_num(100 * c['high'] if c.get('high') is not None else None, '+.1f')}] | "
                     f"{_num(c.get('fraction_positive'), '.3f')} | {c.get('n', '-')} |")
    return "\n".join(lines)


def attribute_table(attr: Mapping[str, Any]) -> str:
    lines = ["| Attribute | AUC | Accuracy | positives / n |", "| --- | --- | --- | --- |"]
    for name, v in attr["per_attribute"].items():
        lines.append(f"| {name} | {_num(v.get('auc'))} | {_num(v.get('accuracy'))} | {v.get('n_positive')} / {v.get('n')} |")
    lines.append(f"| **mean** | **{_num(attr.get('mean_auc'))}** (over {attr.get('n_auc_defined')} defined) | "
                 f"{_num(attr.get('mean_accuracy'))} | |")
    return "\n".join(lines)


def severity_table(sev: Mapping[str, Any]) -> str:
    """Table 2 Markdown: rows = statistics, columns = P(severe), P(mild): mean +/- std over folds."""
    cols = list(sev["columns"])
    lines = ["| Statistic | " + " | ".join(SEVERITY_LABELS.get(c, c) for c in cols) + " |",
             "|" + " --- |" * (len(cols) + 1)]
    for key, label in SEVERITY_ROWS:
        cells = []
        for c in cols:
            a = sev["columns"][c]["metrics"][key]
            fmt = ".2e" if key.endswith("_p") else ".3f"
            cell = f"{_num(a['mean'], fmt)} +/- {_num(a['std'], fmt)}"
            if a.get("n_nan_folds"):
                cell += f" ({a['n_valid_folds']}/{a['n_valid_folds'] + a['n_nan_folds']} folds valid)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    notes = [f"{sev['folds_used']}-fold CV grouped by patient ({sev['n_patients']} patients, "
             f"{sev['n_scored']} scored images; {sev['n_missing_score']} without a score excluded)."]
    for c in cols:
        miss = sev["columns"][c].get("n_missing_probability")
        if miss:
            notes.append(f"{SEVERITY_LABELS.get(c, c)}: {miss} images without a probability excluded.")
    notes += [f"Warning: {w}" for w in sev.get("warnings", [])]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


POOL_EXPLANATION = (
    "Every method below picks one box from the frozen detector's ROI pool, so the pool bounds it. "
    "**Oracle**: some ROI reaches IoU >= t (the ceiling of any re-ranking). **Random ROI**: the expected "
    "hit rate of a uniformly random pick; a ranking that does not beat it carries no localization "
    "signal. **Probe ceiling**: a logistic regression trained on these held-out expert boxes themselves "
    "(cross-validated by image): whether the ROI features hold the signal at all; a ceiling, never a "
    "method. **Report-conditioned**: ROIs ranked by R_roi_i computed with the image's own report: "
    "whether the cross-attention learned which regions the words describe. **Alpha-weighted IoU** "
    "above the **pool mean IoU** means alpha puts its mass on the right ROIs; the entropy ratio is "
    "H(alpha) / log N (1 = uniform); Spearman is alpha against the detector score per image; the area "
    "ratio is the chosen box over the expert box it overlaps (median).")


def _hits_row(label: str, hits: Mapping[str, Any], thresholds: Sequence[float]) -> str:
    return f"| {label} | " + " | ".join(_pct_cell(hits.get(hit_name(t), {})) for t in thresholds) + " |"


def pool_diagnostics_section(pd: Mapping[str, Any], thresholds: Sequence[float] = (0.25, 0.5, 0.75)) -> str:
    """Markdown for ``metrics["pool_diagnostics"]`` (``grounding.evaluation.pool_eval.diagnose``)."""
    head = "| ranking of the ROI pool | " + " | ".join(f"IoU >= {t:g}" for t in thresholds) + " |"
    lines = [POOL_EXPLANATION, "", head, "| --- |" + " --- |" * len(thresholds)]
    pool = pd["pool"]
    lines.append(_hits_row(f"oracle: best ROI of the pool ({pool['rois_per_image']:.0f} ROIs/image)",
                           pool["oracle"], thresholds))
    lines.append(_hits_row("random ROI (expectation)", pool["random"], thresholds))
    lines.append(_hits_row("detector score, top-1 of the pool", pd["detector_score_ranking"], thresholds))
    probe = pd.get("probe_ceiling", {})
    if "hits" in probe:
        lines.append(_hits_row(f"probe ceiling (supervised on these boxes, ROC AUC {probe['auc']:.2f}; "
                               "not a method)", probe["hits"], thresholds))
    for name, m in pd.get("methods", {}).items():
        lines.append(_hits_row(f"{name}: alpha, top-1 of the pool", m["alpha_ranking"], thresholds))
        rc = m["report_conditioned_ranking"]
        lines.append(_hits_row(f"{name}: report-conditioned R_roi ({rc['images']} images with attributes)",
                               rc["hits"], thresholds))
        lines.append(_hits_row("random ROI on those images", rc["random"], thresholds))
    lines += ["", "| method | alpha-weighted IoU | pool mean IoU | difference [95 % CI] | alpha top-1 - random ROI "
              "at IoU 0.5, pp [95 % CI] | entropy ratio | Spearman(alpha, score) | chosen / expert area |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in pd.get("methods", {}).items():
        d = m["weighted_minus_pool_mean"]
        r = m.get("alpha_vs_random", {}).get(hit_name(0.5))
        vs_random = (f"{100 * r['estimate']:+.1f} [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]" if r else "-")
        lines.append(f"| {name} | {_num(m['weighted_iou']['estimate'])} | {_num(d['mean_b'])} | "
                     f"{_num(d['estimate'], '+.3f')} [{_num(d['low'], '+.3f')}, {_num(d['high'], '+.3f')}] | {vs_random} | "
                     f"{_num(m['entropy_ratio'], '.2f')} | {_num(m['spearman_alpha_score'], '+.2f')} | "
                     f"{_num(m['chosen_to_expert_area'], '.2f')} |")
    if "skipped" in probe:
        lines += ["", f"- Probe ceiling skipped: {probe['skipped']}."]
    return "\n".join(lines)


def render_markdown(metrics: Mapping[str, Any], figures: Mapping[str, str], base_dir: str | None = None) -> str:
    parts = ["# Evaluation report", ""]
    if "localization" in metrics:
        parts += ["## Table 1: localization accuracy", "",
                  "Fraction of images with expert boxes whose top-1 predicted box reaches IoU >= t with any "
                  "expert box (`grounding.evaluation.metrics`), in %, with a 95 % percentile bootstrap CI over images.", "",
                  localization_table(metrics["localization"], metrics.get("iou_thresholds", (0.25, 0.5, 0.75))), ""]
    if metrics.get("comparisons"):
        parts += ["### Paired comparisons (same images)", "", comparisons_table(metrics["comparisons"]), ""]
    if metrics.get("pool_diagnostics"):
        parts += ["## ROI pool diagnostics", "",
                  pool_diagnostics_section(metrics["pool_diagnostics"], metrics.get("iou_thresholds", (0.25, 0.5, 0.75))),
                  ""]
    if "attributes" in metrics:
        parts += ["## Attribute classifier (held-out studies)", "", attribute_table(metrics["attributes"]), ""]
    if "severity" in metrics:
        parts += ["## Table 2: severity", "",
                  "Correlations are between the probability and the expert score on each test fold; R^2, MAE "
                  "and MSE are of the linear map fitted on the training folds. Mean +/- std over folds.", "",
                  severity_table(metrics["severity"]), ""]
    if figures:
        parts += ["## Figures", ""]
        for name, path in figures.items():
            rel = os.path.relpath(path, base_dir) if base_dir and not storage.is_uri(path) else path
            parts += [f"### {name}", "", f"![{name}]({rel})", ""]
    return "\n".join(parts)


def write_report(out_dir: str, metrics: Mapping[str, Any], figures: Mapping[str, str] | None = None) -> str:
    """Write ``<out_dir>/metrics.json`` and ``<out_dir>/report.md`` atomically; returns the report path."""
    storage.makedirs(out_dir)
    write_metrics_json(storage.join(out_dir, "metrics.json"), metrics)
    path = storage.join(out_dir, "report.md")
    storage.atomic_write_text(path, render_markdown(metrics, figures or {}, out_dir))
    return path


def write_severity_outputs(out_dir: str, summary: Mapping[str, Any], oof) -> dict[str, str]:
    """The severity-cv job's outputs: metrics.json, severity.md, severity_scatter.png, severity_oof.parquet.

    The scatter shows every scored image and the least-squares line fitted on ALL of them
    (the per-fold lines are in metrics.json).
    """
    from grounding.evaluation import figures as figs
    from grounding.evaluation.severity import fit_line

    storage.makedirs(out_dir)
    paths = {"metrics": write_metrics_json(storage.join(out_dir, "metrics.json"), {"severity": summary})}
    paths["table"] = storage.join(out_dir, "severity.md")
    storage.atomic_write_text(paths["table"], "# Table 2: severity\n\n" + severity_table(summary) + "\n")
    y = oof["score"].to_numpy(zero_copy_only=False).astype(float)
    panels = {}
    for col in summary["columns"]:
        x = oof[col].to_numpy(zero_copy_only=False).astype(float)
        ok = np.isfinite(x) & np.isfinite(y)
        slope, icpt = fit_line(x[ok], y[ok]) if ok.any() else (math.nan, math.nan)
        r = summary["columns"][col]["metrics"]["pearson_r"]
        panels[SEVERITY_LABELS.get(col, col)] = (x, y, slope, icpt,
                                                 f"n = {int(ok.sum())}, fold mean r = {_num(r['mean'], '.2f')}")
    paths["scatter"] = figs.severity_scatter(panels, storage.join(out_dir, "severity_scatter.png"))
    paths["oof"] = storage.join(out_dir, "severity_oof.parquet")
    storage.write_table(oof, paths["oof"])
    return paths
