"""Dataset adapters -> one manifest schema; boxes xyxy in original pixels; ids are pseudonyms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from grounding.data import boxes as box_ops
from grounding.data.adapters.chestxray8 import chestxray8_manifest
from grounding.data.adapters.common import read_csv_commented
from grounding.data.adapters.covid import covid_manifest
from grounding.data.adapters.mimic import mimic_manifest
from grounding.data.adapters.registry import build_manifest
from grounding.data.adapters.rsna import rsna_manifest
from grounding.data.schema import MANIFEST_SCHEMA


def _write_rsna(tmp_path):
    (tmp_path / "stage_2_train_images").mkdir()
    for pid in ("pa", "pb", "pc"):
        (tmp_path / "stage_2_train_images" / f"{pid}.dcm").write_bytes(b"x")
    pd.DataFrame({
        "patientId": ["pa", "pa", "pb", "pc", "pmissing"],
        "x": [10, 100, np.nan, 5, 1], "y": [20, 200, np.nan, 5, 1],
        "width": [30, 50, np.nan, 0, 1], "height": [40, 60, np.nan, 10, 1],
        "Target": [1, 1, 0, 1, 1],
    }).to_csv(tmp_path / "stage_2_train_labels.csv", index=False)


def test_rsna_boxes_become_xyxy_and_missing_images_are_counted(tmp_path):
    _write_rsna(tmp_path)
    table, stats = rsna_manifest(str(tmp_path))
    assert table.schema == MANIFEST_SCHEMA
    assert stats == {"label_images": 4, "rows": 3, "labels_without_image": 1, "images_without_labels": 0}
    rows = {r["image_uri"].rsplit("/", 1)[1]: r for r in table.to_pylist()}
    np.testing.assert_allclose(box_ops.unflatten(rows["pa.dcm"]["boxes"]), [[10, 20, 40, 60], [100, 200, 150, 260]])
    assert rows["pb.dcm"]["boxes"] == [] and rows["pb.dcm"]["pneumonia_label"] == 0
    assert rows["pc.dcm"]["boxes"] == []  # zero-width box is rejected at ingest
    assert all(r["purpose"] == "detector" and r["has_boxes"] for r in rows.values())
    # raw patient ids never reach the manifest
    flat = " ".join(str(v) for r in table.to_pylist() for k, v in r.items() if k != "image_uri")
    assert "pa" not in flat.split() and "pmissing" not in flat


def test_rsna_real_labels(shared_data):
    table, stats = rsna_manifest(str(shared_data / "rsna"))
    assert stats["rows"] == 16
    labels = pd.read_csv(shared_data / "rsna" / "stage_2_train_labels.csv")
    on_disk = {p.stem for p in (shared_data / "rsna" / "stage_1_train_images").glob("*.dcm")}
    labels = labels[labels["patientId"].isin(on_disk)]
    positives = [r for r in table.to_pylist() if r["pneumonia_label"] == 1]
    assert len(positives) == labels[labels["Target"] == 1]["patientId"].nunique() > 0
    assert sum(len(r["boxes"]) for r in positives) == 4 * int((labels["Target"] == 1).sum())
    for r in positives:
        b = box_ops.unflatten(r["boxes"])
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all() and b.max() <= 1024


def test_chestxray8_real_box_list(shared_data):
    table, stats = chestxray8_manifest(str(shared_data / "nih"), require_images=False)
    assert stats["box_rows"] == 120 and table.num_rows == 120
    first = pd.read_csv(shared_data / "nih" / "BBox_List_2017.csv")
    row = first[first["Finding Label"] == "Pneumonia"].iloc[0]
    x, y, w, h = row.iloc[2:6].astype(float)
    name_rows = [r for r in table.to_pylist() if r["image_uri"].endswith(row["Image Index"])]
    np.testing.assert_allclose(box_ops.unflatten(name_rows[0]["boxes"])[0], [x, y, x + w, y + h])
    # images are absent here: with require_images they are counted, not silently dropped
    _, strict = chestxray8_manifest(str(shared_data / "nih"))
    assert strict["rows"] == 0 and strict["boxes_without_image"] == 120


def test_mimic_fake_tree(tmp_path):
    study = tmp_path / "files" / "p10" / "p10000032" / "s50414267"
    study.mkdir(parents=True)
    (study / "02aa804e.dcm").write_bytes(b"x")
    (study / "174413ec.dcm").write_bytes(b"x")
    (study.parent / "s50414267.txt").write_text("FINDINGS: Patchy opacity at the right base.")
    other = tmp_path / "files" / "p10" / "p10000032" / "s53189527"
    other.mkdir()
    (other / "2a2277a9.dcm").write_bytes(b"x")
    pd.DataFrame({"dicom_id": ["02aa804e", "174413ec", "2a2277a9"], "ViewPosition": ["PA", "LATERAL", "AP"]}) \
        .to_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv", index=False)
    table, stats = mimic_manifest(str(tmp_path))
    assert stats == {"rows": 2, "studies_without_report": 1, "other_views_skipped": 1}
    rows = table.to_pylist()
    assert {r["view"] for r in rows} == {"PA", "AP"}
    assert rows[0]["patient_id"] == rows[1]["patient_id"] and rows[0]["study_id"] != rows[1]["study_id"]
    assert any("Patchy opacity" in r["report_text"] for r in rows)
    assert not any("10000032" in r["patient_id"] + r["study_id"] for r in rows)


def test_covid_real_collection_with_brixia(shared_data):
    root = shared_data / "covid"
    table, stats = covid_manifest(str(root), str(root / "annotations" / "brixia-public-annotations.csv"),
                                  score_column="S-Global", score_max=18)
    assert stats["rows"] == table.num_rows > 100
    sev = [r["severity"] for r in table.to_pylist() if r["severity"] is not None]
    assert len(sev) == stats["with_severity"] > 50 and 0 <= min(sev) and max(sev) <= 1
    boxed = [r for r in table.to_pylist() if r["has_boxes"]]
    assert boxed and all(len(r["boxes"]) % 4 == 0 and len(r["boxes"]) > 0 for r in boxed)
    # several images per patient, with day offsets
    per_patient = pd.Series([r["patient_id"] for r in table.to_pylist()]).value_counts()
    assert per_patient.max() >= 3
    assert any(r["offset_days"] for r in table.to_pylist())


def test_severity_table_with_comments(tmp_path):
    path = tmp_path / "sev.csv"
    path.write_text("# geographic extent, 0-8\nfilename,score\n# a comment row\na.png,4\nb.png,\n")
    df = read_csv_commented(path)
    assert list(df["filename"]) == ["a.png", "b.png"]


def test_registry_rejects_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'foo'"):
        build_manifest("foo", ".")
