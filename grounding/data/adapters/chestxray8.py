"""ChestX-ray8 (NIH): ``images/*.png`` + ``BBox_List_2017.csv`` (x, y, w, h in image pixels).

Only rows of ``finding`` (default Pneumonia) become boxes. The patient is the image-name prefix
(``00013118_008.png`` -> ``00013118``); ``Data_Entry_2017.csv``, when present, gives the view.
Purpose ``eval``: these are expert boxes for localization tests.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from grounding.data.adapters.common import ids, normalise_view, xywh_rows_to_flat_xyxy
from grounding.data.schema import manifest_table


def chestxray8_manifest(root: str, finding: str = "Pneumonia", split_fractions=(0.9, 0.05, 0.05),
                        split_seed: int = 0, require_images: bool = True):
    base = Path(root)
    bbox_path = next((p for p in (base / "BBox_List_2017.csv", base / "BBox_List_2017.csv.gz") if p.exists()), None)
    if bbox_path is None:
        raise FileNotFoundError(f"{root}: BBox_List_2017.csv not found")
    df = pd.read_csv(bbox_path)
    # The header is "Image Index,Finding Label,Bbox [x,y,w,h],,," : the box sits in columns 2-5.
    df = df.iloc[:, :6]
    df.columns = ["image", "finding", "x", "y", "w", "h"]
    df = df[df["finding"].str.lower() == finding.lower()]
    views = {}
    entry = base / "Data_Entry_2017.csv"
    if entry.exists():
        e = pd.read_csv(entry, usecols=["Image Index", "View Position"])
        views = dict(zip(e["Image Index"], e["View Position"]))
    rows, without_image = [], 0
    for name, group in df.groupby("image", sort=True):
        path = base / "images" / name
        if require_images and not path.exists():
            without_image += 1
            continue
        patient = name.split("_")[0]
        rows.append({
            **ids("chestxray8", patient, name, name, split_fractions, split_seed),
            "dataset": "chestxray8", "site": "nih", "image_uri": str(path.resolve()), "purpose": "eval",
            "view": normalise_view(views.get(name, "")), "has_boxes": True,
            "boxes": xywh_rows_to_flat_xyxy(group, "x", "y", "w", "h"), "pneumonia_label": 1,
        })
    stats = {"box_rows": int(len(df)), "rows": len(rows), "boxes_without_image": without_image}
    return manifest_table(rows), stats
