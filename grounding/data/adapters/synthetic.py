"""The built-in synthetic dataset (``grounding.synth``) -> manifest.

Reads ``<root>/index.parquet`` (the generator's truth) and the report files; never a DICOM header.
- ids: salted pseudonyms of the generator's own keys (never the fake PatientName/PatientID);
  split by patient (``schema.split_for_patient``).
- boxes (xyxy, stored pixels) and ``has_boxes`` only for site A (detector training) and the
  site-B images kept for evaluation; other site-B boxes stay hidden (report-only site).
- ``pneumonia_label`` known (0/1) where boxes are exposed and for site C (finding: COVID-19
  pneumonia); -1 for the report-only site-B images.
- severity (geographic extent 0-8, normalised by 8) only for site C, as for the real collection.
- attribute columns are left empty: the attributes stage fills them from ``report_text``.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from grounding.data import storage
from grounding.data.adapters.common import ids
from grounding.data.schema import manifest_table

SEVERITY_MAX = 8.0


def _uri(root: str, rel: str) -> str:
    if storage.is_uri(root):
        return storage.join(root, *rel.split("/"))
    return str(Path(root, rel).resolve())


def _read_text(root: str, rel: str) -> str:
    if not rel:
        return ""
    fs, path = storage.resolve(_uri(root, rel))
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def synthetic_manifest(root: str, split_fractions=(0.9, 0.05, 0.05), split_seed: int = 0) -> pa.Table:
    """Manifest (``schema.MANIFEST_SCHEMA``) of a dataset written by ``grounding.synth.generate``.

    Args:
        root: the generator's output folder (local path or pyarrow URI).
        split_fractions: train/val/test fractions, assigned by patient.
        split_seed: seed of the patient split.
    """
    fs, index_path = storage.resolve(storage.join(root, "index.parquet"))
    index = pq.read_table(index_path, filesystem=fs).to_pylist()
    rows = []
    for rec in index:
        site = rec["site"]
        exposed = site == "A" or (site == "B" and rec["purpose"] == "eval")
        label = int(rec["positive"]) if exposed else (1 if site == "C" else -1)
        severity = float(rec["severity"]) if site == "C" else None
        rows.append({
            **ids("synthetic", rec["patient_key"], rec["study_key"], rec["image_key"], split_fractions, split_seed),
            "dataset": "synthetic", "site": site, "image_uri": _uri(root, rec["file"]),
            "purpose": rec["purpose"], "view": rec["view"], "width": rec["width"], "height": rec["height"],
            "has_boxes": exposed, "boxes": list(rec["boxes"]) if exposed else [], "pneumonia_label": label,
            "report_text": _read_text(root, rec["report_file"]),
            "severity": None if severity is None else severity / SEVERITY_MAX, "severity_raw": severity,
            "offset_days": rec["offset_days"],
        })
    return manifest_table(rows)
