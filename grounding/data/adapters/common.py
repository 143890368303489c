"""Helpers shared by the dataset adapters."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from grounding.data import boxes as box_ops
from grounding.data.schema import pseudonym, split_for_patient


def read_csv_commented(path: str | Path) -> pd.DataFrame:
    """CSV that may carry ``#`` comment lines (severity tables often do)."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    kept = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return pd.read_csv(io.StringIO(kept))


def ids(dataset: str, patient: str, study: str, image: str, fractions, seed: int) -> dict:
    """Pseudonymous ids and the by-patient split for one image."""
    patient_id = pseudonym("patient", patient, dataset)
    return {
        "patient_id": patient_id,
        "study_id": pseudonym("study", study, dataset),
        "image_id": pseudonym("image", image, dataset),
        "split": split_for_patient(patient_id, tuple(fractions), seed),
    }


def xywh_rows_to_flat_xyxy(rows: pd.DataFrame, x: str, y: str, w: str, h: str) -> list[float]:
    """Box rows (NaN = no box) -> flat xyxy list; zero-area boxes are dropped."""
    valid = rows[[x, y, w, h]].dropna()
    if valid.empty:
        return []
    xyxy = box_ops.xywh_to_xyxy(valid.to_numpy(dtype=np.float64))
    keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    return box_ops.flatten(xyxy[keep])


def normalise_view(view: object) -> str:
    text = str(view or "").strip().upper()
    if text in ("", "NAN"):
        return ""
    if text.startswith("AP"):
        return "AP"
    if text.startswith("PA"):
        return "PA"
    if text in ("L", "LL", "LATERAL", "LAT"):
        return "LL"
    return text
