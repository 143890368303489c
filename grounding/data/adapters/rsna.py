"""RSNA Pneumonia Detection: ``stage_2_train_labels.csv`` + ``stage_*_train_images/*.dcm``.

One label row per box (x, y, width, height in image pixels; NaN and Target 0 = no box). Rows for
images that are not on disk are counted, not silently dropped. Purpose ``detector``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from grounding.data.adapters.common import ids, xywh_rows_to_flat_xyxy
from grounding.data.schema import manifest_table

LABEL_FILES = ("stage_2_train_labels.csv", "stage_1_train_labels.csv", "example_train_labels.csv")
IMAGE_DIRS = ("stage_2_train_images", "stage_1_train_images")


def rsna_manifest(root: str, split_fractions=(0.9, 0.05, 0.05), split_seed: int = 0, labels: str | None = None):
    base = Path(root)
    label_path = Path(labels) if labels else next((base / n for n in LABEL_FILES if (base / n).exists()), None)
    if label_path is None or not label_path.exists():
        raise FileNotFoundError(f"{root}: no RSNA label file ({', '.join(LABEL_FILES)})")
    images = {}
    for d in IMAGE_DIRS:
        for p in sorted((base / d).glob("*.dcm")):
            images.setdefault(p.stem, p)
    df = pd.read_csv(label_path)
    missing = {"patientId", "x", "y", "width", "height", "Target"} - set(df.columns)
    if missing:
        raise ValueError(f"{label_path}: missing columns {sorted(missing)}")
    rows, without_image = [], 0
    for pid, group in df.groupby("patientId", sort=True):
        path = images.get(str(pid))
        if path is None:
            without_image += 1
            continue
        positive = int(group["Target"].max() == 1)
        rows.append({
            **ids("rsna", str(pid), str(pid), str(pid), split_fractions, split_seed),
            "dataset": "rsna", "site": "rsna", "image_uri": str(path.resolve()), "purpose": "detector",
            "has_boxes": True, "boxes": xywh_rows_to_flat_xyxy(group, "x", "y", "width", "height") if positive else [],
            "pneumonia_label": positive,
        })
    stats = {"label_images": int(df["patientId"].nunique()), "rows": len(rows), "labels_without_image": without_image,
             "images_without_labels": len(set(images) - set(df["patientId"].astype(str)))}
    return manifest_table(rows), stats
