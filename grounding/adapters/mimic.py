"""MIMIC-CXR: ``files/pXX/pXXXXXXXX/sXXXXXXXX/*.dcm`` with the report at ``.../pXXXXXXXX/sXXXXXXXX.txt``.

Patient and study come from the folder names (then pseudonymised). A study without its report keeps
an empty ``report_text`` and is counted. ``mimic-cxr-2.0.0-metadata.csv`` (``dicom_id``,
``ViewPosition``) filters views when present. Purpose ``grounding``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from grounding.adapters.common import ids, normalise_view
from grounding.schema import manifest_table


def mimic_manifest(root: str, views: tuple[str, ...] = ("PA", "AP"), split_fractions=(0.9, 0.05, 0.05),
                   split_seed: int = 0):
    base = Path(root)
    files = base / "files" if (base / "files").is_dir() else base
    view_of = {}
    for meta_name in ("mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-metadata.csv.gz"):
        if (base / meta_name).exists():
            meta = pd.read_csv(base / meta_name, usecols=["dicom_id", "ViewPosition"])
            view_of = {str(k): normalise_view(v) for k, v in zip(meta["dicom_id"], meta["ViewPosition"])}
    rows, no_report, other_view = [], 0, 0
    for dcm in sorted(files.glob("p*/p*/s*/*.dcm")):
        study_dir, patient_dir = dcm.parent, dcm.parent.parent
        view = view_of.get(dcm.stem, "")
        if view_of and views and view not in views:
            other_view += 1
            continue
        report = patient_dir / f"{study_dir.name}.txt"
        text = report.read_text(encoding="utf-8", errors="replace") if report.exists() else ""
        no_report += not report.exists()
        rows.append({
            **ids("mimic", patient_dir.name, study_dir.name, dcm.stem, split_fractions, split_seed),
            "dataset": "mimic", "site": "mimic", "image_uri": str(dcm.resolve()), "purpose": "grounding",
            "view": view, "report_text": text,
        })
    stats = {"rows": len(rows), "studies_without_report": no_report, "other_views_skipped": other_view}
    return manifest_table(rows), stats
