"""MIMIC-CXR: ``files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.dcm`` (MIMIC-CXR) or ``.jpg`` (MIMIC-CXR-JPG),
with the report at ``.../pXXXXXXXX/sXXXXXXXX.txt``.

Patient and study come from the folder names (then pseudonymised). A study without its report keeps
an empty ``report_text`` and is counted. ``mimic-cxr-2.0.0-metadata.csv`` (``dicom_id``,
``ViewPosition``) filters views when present. Purpose ``grounding``.

Boxes (``boxes=``): an MS-CXR-style table, one row per box with ``dicom_id, x, y, w, h`` in original
pixels and optionally ``category_name``; only pneumonia-like categories count. Images with a counted
box become purpose ``eval`` (held out, never trained on); ``boxed_only`` keeps just those.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from grounding.data.adapters.common import ids, normalise_view, xywh_rows_to_flat_xyxy
from grounding.data.schema import manifest_table

IMAGE_SUFFIXES = (".dcm", ".jpg", ".jpeg", ".png")
BOX_COLUMNS = ("dicom_id", "x", "y", "w", "h")
BOX_CATEGORIES = ("pneumonia", "consolidation", "opacit", "infiltrat", "ground glass")


def image_files(files: Path) -> list[Path]:
    """Every image of the tree (``p*/p*/s*/*``), DICOM or JPG, sorted."""
    return sorted(p for p in files.glob("p*/p*/s*/*") if p.suffix.lower() in IMAGE_SUFFIXES)


def load_box_table(path: str) -> dict[str, list[float]]:
    """``{dicom_id: flat xyxy}`` from an MS-CXR-style table (pneumonia-like categories only)."""
    table = pd.read_csv(path)
    missing = [c for c in BOX_COLUMNS if c not in table.columns]
    if missing:
        needed = ", ".join(BOX_COLUMNS)
        raise ValueError(f"{path}: box table needs columns {needed} (missing {', '.join(missing)})")
    if "category_name" in table.columns:
        category = table["category_name"].astype(str).str.lower()
        table = table[category.apply(lambda c: any(k in c for k in BOX_CATEGORIES))]
    out = {}
    for dicom_id, group in table.groupby(table["dicom_id"].astype(str), sort=True):
        flat = xywh_rows_to_flat_xyxy(group, "x", "y", "w", "h")
        if flat:
            out[dicom_id] = flat
    return out


def mimic_manifest(root: str, views: tuple[str, ...] = ("PA", "AP"), split_fractions=(0.9, 0.05, 0.05),
                   split_seed: int = 0, boxes: str | None = None, boxed_only: bool = False):
    base = Path(root)
    files = base / "files" if (base / "files").is_dir() else base
    view_of = {}
    for meta_name in ("mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-metadata.csv.gz"):
        if (base / meta_name).exists():
            meta = pd.read_csv(base / meta_name, usecols=["dicom_id", "ViewPosition"])
            view_of = {str(k): normalise_view(v) for k, v in zip(meta["dicom_id"], meta["ViewPosition"])}
    boxes_of = load_box_table(boxes) if boxes else {}
    rows, no_report, other_view, unboxed, seen = [], 0, 0, 0, set()
    for image in image_files(files):
        seen.add(image.stem)
        study_dir, patient_dir = image.parent, image.parent.parent
        view = view_of.get(image.stem, "")
        if view_of and views and view not in views:
            other_view += 1
            continue
        flat = boxes_of.get(image.stem)
        if boxed_only and flat is None:
            unboxed += 1
            continue
        report = patient_dir / f"{study_dir.name}.txt"
        text = report.read_text(encoding="utf-8", errors="replace") if report.exists() else ""
        no_report += not report.exists()
        boxed = {"purpose": "eval", "has_boxes": True, "boxes": flat, "pneumonia_label": 1} if flat else {}
        rows.append({
            **ids("mimic", patient_dir.name, study_dir.name, image.stem, split_fractions, split_seed),
            "dataset": "mimic", "site": "mimic", "image_uri": str(image.resolve()), "purpose": "grounding",
            "view": view, "report_text": text, **boxed,
        })
    stats = {"rows": len(rows), "studies_without_report": no_report, "other_views_skipped": other_view}
    if boxes:
        stats["with_boxes"] = sum(1 for r in rows if r.get("has_boxes"))
        stats["box_images_not_found"] = len(set(boxes_of) - seen)
    if boxed_only:
        stats["images_without_boxes_skipped"] = unboxed
    return manifest_table(rows), stats
