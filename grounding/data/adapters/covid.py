"""COVID-19 image data collection: ``metadata.csv`` + ``images/`` (+ severity and box tables).

- Only X-ray rows whose file is in ``images/`` are kept (others are counted).
- ``clinical_notes`` becomes the report text; ``offset`` the days since the patient's first image.
- Severity: any table with a ``filename`` column and a score column (comment lines ``#`` allowed),
  e.g. geographic extent 0-8 or Brixia ``S-Global`` 0-18; normalised by ``score_max`` to [0, 1].
- Boxes: the radiologist table ``generalblockchain-structure.csv`` (Top/Left/Width/Height, original
  pixels); only opacity-like classes count. Images without any listed box keep ``has_boxes`` False.
Purpose ``eval``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from grounding.data import boxes as box_ops
from grounding.data.adapters.common import ids, normalise_view, read_csv_commented
from grounding.data.schema import manifest_table

OPACITY_CLASSES = ("ground glass", "consolidation", "opacit", "infiltrat")


def load_severity(path: str, score_column: str, score_max: float) -> dict[str, tuple[float, float]]:
    """``{filename: (raw score, score / score_max)}``; rows with a missing score are skipped."""
    table = read_csv_commented(path)
    if "filename" not in table.columns or score_column not in table.columns:
        raise ValueError(f"{path}: needs columns 'filename' and '{score_column}' (has {list(table.columns)})")
    out = {}
    for name, score in zip(table["filename"].astype(str), pd.to_numeric(table[score_column], errors="coerce")):
        if np.isfinite(score):
            out[name] = (float(score), float(score) / float(score_max))
    return out


def load_radiologist_boxes(path: str) -> dict[str, list[float]]:
    table = pd.read_csv(path)
    cls = table["Class"].astype(str).str.lower()
    table = table[cls.apply(lambda c: any(k in c for k in OPACITY_CLASSES))]
    out: dict[str, list[float]] = {}
    for name, group in table.groupby("Filename"):
        xywh = group[["Left", "Top", "Width", "Height"]].to_numpy(dtype=np.float64)
        out[str(name)] = box_ops.flatten(box_ops.xywh_to_xyxy(xywh))
    return out


def covid_manifest(root: str, severity_csv: str | None = None, score_column: str = "score",
                   score_max: float = 8.0, boxes_csv: str | None = None,
                   split_fractions=(0.9, 0.05, 0.05), split_seed: int = 0):
    base = Path(root)
    meta = pd.read_csv(base / "metadata.csv")
    severity = load_severity(severity_csv, score_column, score_max) if severity_csv else {}
    default_boxes = base / "annotations" / "generalblockchain-structure.csv"
    boxes_path = boxes_csv or (str(default_boxes) if default_boxes.exists() else None)
    boxes = load_radiologist_boxes(boxes_path) if boxes_path else {}
    rows, not_xray, no_file = [], 0, 0
    for rec in meta.to_dict("records"):
        if str(rec.get("modality", "X-ray")) != "X-ray":
            not_xray += 1
            continue
        name = str(rec["filename"])
        path = base / str(rec.get("folder") or "images") / name
        if not path.exists():
            no_file += 1
            continue
        offset = rec.get("offset")
        sev = severity.get(name)
        notes = rec.get("clinical_notes")
        rows.append({
            **ids("covid", str(rec["patientid"]), f"{rec['patientid']}:{offset}:{name}", name,
                  split_fractions, split_seed),
            "dataset": "covid", "site": "covid", "image_uri": str(path.resolve()), "purpose": "eval",
            "view": normalise_view(rec.get("view")), "has_boxes": name in boxes, "boxes": boxes.get(name, []),
            "pneumonia_label": 1 if "pneumonia" in str(rec.get("finding", "")).lower() else -1,
            "report_text": "" if not isinstance(notes, str) else notes,
            "severity_raw": sev[0] if sev else None, "severity": sev[1] if sev else None,
            "offset_days": int(offset) if pd.notna(offset) else None,
        })
    stats = {"metadata_rows": int(len(meta)), "rows": len(rows), "not_xray": not_xray, "file_missing": no_file,
             "with_severity": sum(r["severity"] is not None for r in rows),
             "with_boxes": sum(r["has_boxes"] for r in rows)}
    return manifest_table(rows), stats
