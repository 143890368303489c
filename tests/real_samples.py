"""A MIMIC-CXR-JPG-layout tree built from the real COVID-19 collection sample (../shared/data/covid)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def build_mimic_tree(covid: Path, out: Path) -> tuple[Path, Path, int]:
    """Real COVID images + their clinical notes as ``files/pXX/p<id>/s<id>/<dicom_id>.<ext>`` (symlinks);
    the radiologist boxes as an MS-CXR-style ``dicom_id, category_name, x, y, w, h`` table."""
    meta = pd.read_csv(covid / "metadata.csv")
    meta = meta[(meta["modality"] == "X-ray") & meta["clinical_notes"].notna()]
    meta = meta[[(covid / "images" / f).exists() for f in meta["filename"]]]
    patients = {p: 10000000 + i for i, p in enumerate(sorted(meta["patientid"].astype(str).unique()))}
    dicom_of = {}
    for n, rec in enumerate(meta.to_dict("records")):
        patient = f"p{patients[str(rec['patientid'])]}"
        study = out / "files" / patient[:3] / patient / f"s{50000000 + n}"
        study.mkdir(parents=True)
        dicom_id = f"{n:08x}-real"
        suffix = Path(rec["filename"]).suffix.lower()
        (study / f"{dicom_id}{suffix}").symlink_to(covid / "images" / rec["filename"])
        (study.parent / f"{study.name}.txt").write_text(f"FINDINGS: {rec['clinical_notes']}")
        dicom_of[rec["filename"]] = dicom_id
    boxes = pd.read_csv(covid / "annotations" / "generalblockchain-structure.csv")
    boxes = boxes[boxes["Filename"].isin(dicom_of)]
    table = pd.DataFrame({"dicom_id": boxes["Filename"].map(dicom_of), "category_name": boxes["Class"],
                          "x": boxes["Left"], "y": boxes["Top"], "w": boxes["Width"], "h": boxes["Height"]})
    table.to_csv(out / "ms_cxr_boxes.csv", index=False)
    return out, out / "ms_cxr_boxes.csv", len(dicom_of)
