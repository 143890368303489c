"""Column contracts between the stages: manifest -> prepared images -> ROI cache.

Boxes are flat lists of 4N floats, xyxy in pixels of the original image (``grounding.data.boxes``).
No column ever holds a DICOM header identifier: ids are salted pseudonyms (``pseudonym``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import warnings

import pyarrow as pa

# -- manifest: one row per image --------------------------------------------------------------
MANIFEST_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),  # pseudonym, unique per image
        ("study_id", pa.string()),  # pseudonym
        ("patient_id", pa.string()),  # pseudonym; splits are by patient
        ("dataset", pa.string()),  # synthetic | rsna | chestxray8 | mimic | covid
        ("site", pa.string()),  # acquisition site (synthetic: A, B, C)
        ("image_uri", pa.string()),  # local path or URI of the DICOM/PNG/JPEG
        ("split", pa.string()),  # train | val | test (by patient)
        ("purpose", pa.string()),  # detector | grounding | eval (held-out boxes, never trained on)
        ("view", pa.string()),  # PA | AP | LL | "" (unknown)
        ("width", pa.int32()),  # original pixels; 0 = unknown until decoded
        ("height", pa.int32()),
        ("has_boxes", pa.bool_()),  # box annotation exists for this image (possibly zero boxes)
        ("boxes", pa.list_(pa.float64())),  # flat xyxy, original pixels
        ("pneumonia_label", pa.int8()),  # 1 / 0 / -1 unknown
        ("report_text", pa.string()),  # de-identified report text, "" if none
        ("severity", pa.float64()),  # normalised to [0, 1]; null if none
        ("severity_raw", pa.float64()),  # on its own scale (0-8 geographic extent, 0-18 Brixia)
        ("offset_days", pa.int32()),  # days since the patient's first image; null if unknown
        # filled by the attributes stage (grounding.text.reports):
        ("attributes", pa.list_(pa.string())),
        ("uncertain_attributes", pa.list_(pa.string())),
        ("negated_findings", pa.list_(pa.string())),
        ("pneumonia_positive", pa.bool_()),
    ]
)
MANIFEST_COLUMNS = tuple(MANIFEST_SCHEMA.names)

# -- prepared images: manifest columns (minus report text) + pixels -----------------------------
PREPARED_EXTRA = [
    ("pixels", pa.binary()),  # uint8, row-major, image_size x image_size, air dark / bone bright
    ("image_size", pa.int32()),
    ("boxes_prepared", pa.list_(pa.float64())),  # flat xyxy in prepared pixels
]

# -- quarantine: one row per input that could not be used --------------------------------------
QUARANTINE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("image_uri", pa.string()),  # the file, so an operator can find it; never header content
        ("stage", pa.string()),
        ("reason", pa.string()),  # a code from grounding.data.imaging.Reason
        ("message", pa.string()),  # no PHI: built from our own text, never header values
    ]
)

# -- ROI cache: one row per image ---------------------------------------------------------------
ROI_EXTRA = [
    ("roi_features", pa.binary()),  # float16 (N, C) row-major, top-N anchors by score
    ("roi_scores", pa.list_(pa.float32())),  # (N,) pneumonia score s_i
    ("roi_boxes", pa.list_(pa.float32())),  # (N*4,) xyxy normalised to [0, 1]
    ("neg_roi_features", pa.binary()),  # float16 (N, C), the N lowest-scored anchors
    ("neg_roi_scores", pa.list_(pa.float32())),
    ("neg_roi_boxes", pa.list_(pa.float32())),
    ("num_rois", pa.int32()),
    ("feature_dim", pa.int32()),
    ("detector_boxes", pa.list_(pa.float64())),  # supervised baseline: post-NMS xyxy, original px
    ("detector_scores", pa.list_(pa.float32())),
]

SPLITS = ("train", "val", "test")
PURPOSES = ("detector", "grounding", "eval")

SALT_ENV = "GROUNDING_PSEUDONYM_SALT"
_DEFAULT_SALT = "grounding-public-default-salt"
_warned = False


def pseudonym(kind: str, value: str, dataset: str) -> str:
    """Salted, keyed hash of an identifier: stable for a salt, not reversible without it.

    Set ``GROUNDING_PSEUDONYM_SALT`` for real data; the public default is only fit for public or
    synthetic sets.
    """
    global _warned
    salt = os.environ.get(SALT_ENV, "")
    if not salt:
        salt = _DEFAULT_SALT
        if dataset not in ("synthetic",) and not _warned:
            warnings.warn(f"{SALT_ENV} is not set: pseudonyms use the public default salt", stacklevel=2)
            _warned = True
    digest = hmac.new(salt.encode(), f"{dataset}:{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return f"{kind[0]}{digest[:15]}"


def split_for_patient(patient_id: str, fractions: tuple[float, float, float], seed: int) -> str:
    """Deterministic train/val/test assignment of a patient pseudonym."""
    h = int(hashlib.sha256(f"{seed}:{patient_id}".encode()).hexdigest()[:12], 16) / float(16**12)
    if h < fractions[0]:
        return "train"
    if h < fractions[0] + fractions[1]:
        return "val"
    return "test"


def empty_manifest_row() -> dict:
    """A row with every manifest column at its neutral value; adapters fill what they know."""
    return {
        "image_id": "", "study_id": "", "patient_id": "", "dataset": "", "site": "",
        "image_uri": "", "split": "train", "purpose": "grounding", "view": "", "width": 0,
        "height": 0, "has_boxes": False, "boxes": [], "pneumonia_label": -1, "report_text": "",
        "severity": None, "severity_raw": None, "offset_days": None, "attributes": [],
        "uncertain_attributes": [], "negated_findings": [], "pneumonia_positive": False,
    }


def manifest_table(rows: list[dict]) -> pa.Table:
    """Rows -> a table with exactly the manifest schema (missing keys take neutral values)."""
    full = []
    for row in rows:
        base = empty_manifest_row()
        unknown = set(row) - set(base)
        if unknown:
            raise KeyError(f"not manifest columns: {sorted(unknown)}")
        base.update(row)
        full.append(base)
    return pa.Table.from_pylist(full, schema=MANIFEST_SCHEMA)
