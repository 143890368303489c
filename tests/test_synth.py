"""Synthetic dataset: determinism, DICOM formats, photometric polarity, boxes over the opacity,
severity, reports, the manifest adapter, site shift, the privacy canary and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless
from scipy import ndimage

from grounding.config import ConfigError, GroundingConfig, SynthConfig
from grounding.data.schema import MANIFEST_SCHEMA
from grounding.synth import anatomy, generate, lesions, write_canary_dicom
from grounding.synth.contact import load_display
from grounding.synth.render import Acquisition, render_case

TINY = SynthConfig(
    n_site_a=6, n_site_b=8, n_site_b_boxed=3, n_site_c_patients=2, site_c_images_min=2, site_c_images_max=3,
    site_a_size=128, site_b_size=128, site_c_size=96, site_a_positive_fraction=1.0, site_b_positive_fraction=0.6,
    site_b_monochrome1_fraction=0.5, site_b_rle_fraction=0.5, attribute_omission=0.0, workers=1,
    contact_per_site=0,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(TINY, out)
    return out


def _index(root: Path) -> list[dict]:
    return pq.read_table(root / "index.parquet").to_pylist()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_index(tiny, tmp_path):
    generate(TINY, tmp_path / "again")
    first, second = _files(tiny), _files(tmp_path / "again")
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    assert _index(tiny) == _index(tmp_path / "again")
    generate(SynthConfig(**{**TINY.__dict__, "seed": 1}), tmp_path / "other")
    other = _files(tmp_path / "other")
    assert other["site_a/A-000000.dcm"] != first["site_a/A-000000.dcm"]


@pytest.mark.slow
def test_worker_processes_do_not_change_output(tiny, tmp_path):
    generate(SynthConfig(**{**TINY.__dict__, "workers": 2}), tmp_path / "par")
    assert _files(tiny) == _files(tmp_path / "par")


def test_dicoms_decode_with_declared_format(tiny):
    rows = [r for r in _index(tiny) if r["format"] == "dicom"]
    seen_ts, seen_pi = set(), set()
    for r in rows:
        ds = pydicom.dcmread(tiny / r["file"])
        arr = ds.pixel_array
        assert arr.shape == (r["height"], r["width"])
        assert ds.PhotometricInterpretation == r["photometric"]
        assert ds.BitsStored == r["bits_stored"]
        assert ds.file_meta.TransferSyntaxUID == r["transfer_syntax"]
        if r["site"] == "A":
            assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
            assert (ds.BitsAllocated, ds.Modality, arr.dtype) == (8, "CR", np.uint8)
        else:
            assert ds.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, RLELossless)
            assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
            assert arr.dtype == np.uint16 and int(arr.max()) <= 4095
            assert ds.Modality == ("CR" if r["photometric"] == "MONOCHROME1" else "DX")
        seen_ts.add(str(ds.file_meta.TransferSyntaxUID))
        seen_pi.add(ds.PhotometricInterpretation)
    assert {JPEGBaseline8Bit, ExplicitVRLittleEndian, RLELossless} <= seen_ts
    assert seen_pi == {"MONOCHROME1", "MONOCHROME2"}


def test_monochrome1_is_inverted_in_storage(tiny):
    for r in [r for r in _index(tiny) if r["site"] == "B"]:
        arr = pydicom.dcmread(tiny / r["file"]).pixel_array.astype(float)
        h, w = arr.shape
        lung = arr[int(0.3 * h):int(0.5 * h), int(0.18 * w):int(0.3 * w)].mean()
        mediastinum = arr[int(0.2 * h):int(0.4 * h), int(0.47 * w):int(0.53 * w)].mean()
        if r["photometric"] == "MONOCHROME1":
            assert lung > mediastinum, r["file"]  # air bright in stored values
        else:
            assert lung < mediastinum, r["file"]


def test_boxes_inside_image_and_over_the_opacity(tiny):
    diffs = []
    for r in [r for r in _index(tiny) if r["positive"] and r["site"] in ("A", "B")]:
        boxes = np.asarray(r["boxes"]).reshape(-1, 4)
        assert len(boxes) >= 1
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= r["width"]).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= r["height"]).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        if len(r["sides"]) == 1:
            img = load_display(tiny / r["file"]).astype(float)
            mirror = img[:, ::-1]
            for x0, y0, x1, y1 in boxes.round().astype(int):
                diffs.append(img[y0:y1, x0:x1].mean() - mirror[y0:y1, x0:x1].mean())
    assert diffs and np.mean(diffs) > 0 and np.mean(np.array(diffs) > 0) >= 0.6


def test_opacity_lies_inside_its_boxes():
    """Same anatomy and noise with and without the opacity: the difference sits in the boxes."""
    for seed in range(4):
        rng0 = np.random.default_rng(seed)
        patient = anatomy.sample_patient(rng0)
        truth = lesions.sample_truth(rng0)
        acq = Acquisition(noise=0.02)
        with_op = render_case(np.random.default_rng([seed, 1]), 192, 192, acq, patient, truth,
                              lesion_rng=np.random.default_rng([seed, 2]))
        without = render_case(np.random.default_rng([seed, 1]), 192, 192, acq, patient, None)
        diff = with_op.display - without.display
        inside = np.zeros(diff.shape, bool)
        for x0, y0, x1, y1 in with_op.boxes.round().astype(int):
            inside[y0:y1, x0:x1] = True
        assert inside.any()
        assert diff[inside].mean() > 5 * max(diff[~inside].mean(), 1e-4)


def test_severity_is_geographic_extent(tiny):
    assert [lesions.extent_score(f) for f in (0.0, 0.1, 0.25, 0.3, 0.5, 0.6, 0.8, 1.0)] == [0, 1, 2, 2, 3, 3, 4, 4]
    for r in _index(tiny):
        assert 0 <= r["severity"] <= 8
        assert r["severity"] == r["severity_right"] + r["severity_left"]
        assert r["severity_right"] == lesions.extent_score(r["fraction_right"])
        assert r["severity_left"] == lesions.extent_score(r["fraction_left"])
        assert r["positive"] == (r["severity"] > 0)
        if r["positive"] and "severe" in r["attributes"]:
            assert r["severity"] >= 3  # wording noise moves the grade by one step at most


def test_reports_name_the_true_locations_at_zero_omission(tiny):
    rows = [r for r in _index(tiny) if r["report_file"]]
    assert rows and all(r["site"] in ("B", "C") for r in rows)
    positives = [r for r in rows if r["positive"]]
    assert positives
    for r in rows:
        text = (tiny / r["report_file"]).read_text().lower()
        assert "findings:" in text and "impression:" in text
        if not r["positive"]:
            assert r["reported_attributes"] == []
            continue
        assert r["reported_attributes"] == r["attributes"]
        side = "bilateral" if len(r["sides"]) == 2 else r["sides"][0]
        for word in [side, *r["zones"]]:
            assert re.search(rf"\b{word}\b", text), (word, text)


def test_manifest_schema_boxes_and_no_header_identity(tiny):
    from grounding.data.adapters.synthetic import synthetic_manifest

    table = synthetic_manifest(str(tiny), (0.6, 0.2, 0.2), 3)
    assert table.schema.equals(MANIFEST_SCHEMA)
    rows = table.to_pylist()
    index = _index(tiny)
    assert len(rows) == len(index)
    for row, rec in zip(rows, index):
        assert row["dataset"] == "synthetic" and row["site"] == rec["site"]
        exposed = rec["site"] == "A" or (rec["site"] == "B" and rec["purpose"] == "eval")
        assert row["has_boxes"] == exposed
        assert row["boxes"] == (rec["boxes"] if exposed else [])
        assert Path(row["image_uri"]).is_file()
        assert row["attributes"] == [] and row["split"] in ("train", "val", "test")
        if rec["site"] == "C":
            assert row["severity_raw"] == rec["severity"] and row["severity"] == pytest.approx(rec["severity"] / 8)
            assert row["offset_days"] == rec["offset_days"]
        else:
            assert row["severity"] is None
        if rec["report_file"]:
            assert row["report_text"] == (tiny / rec["report_file"]).read_text()
    by_patient = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    dump = json.dumps(rows)
    for rec in [r for r in index if r["format"] == "dicom"]:
        ds = pydicom.dcmread(tiny / rec["file"], stop_before_pixels=True)
        for key in ("PatientName", "PatientID", "AccessionNumber", "InstitutionName", "PatientBirthDate"):
            value = str(ds.get(key, ""))
            assert value and value not in dump, key


def test_site_c_layout_reads_with_the_covid_adapter(tiny, monkeypatch):
    from grounding.data.adapters.covid import covid_manifest

    monkeypatch.setenv("GROUNDING_PSEUDONYM_SALT", "test-salt")

    table, stats = covid_manifest(str(tiny / "site_c"), str(tiny / "site_c" / "severity.csv"))
    c_rows = [r for r in _index(tiny) if r["site"] == "C"]
    assert stats["rows"] == len(c_rows) == stats["with_severity"]
    raw = sorted(table.column("severity_raw").to_pylist())
    assert raw == sorted(float(r["severity"]) for r in c_rows)


def test_site_shift_is_measurable(tiny):
    stats = {}
    for site in ("A", "B"):
        imgs = [load_display(tiny / r["file"]).astype(float) / 255 for r in _index(tiny) if r["site"] == site]
        fine = [np.abs(i - ndimage.gaussian_filter(i, 2)).mean() for i in imgs]  # noise + blur texture
        stats[site] = (np.mean([i.mean() for i in imgs]), np.mean(fine))
    assert stats["B"][0] - stats["A"][0] > 0.03  # gamma 0.7 and another window: brighter
    assert abs(stats["A"][1] - stats["B"][1]) > 0.1 * stats["A"][1]  # other noise and detector blur


def test_canary_dicom_carries_the_given_strings(tmp_path):
    phi = {"PatientName": "CANARY^ZQXW", "PatientID": "CANARY-ID-99817", "PatientBirthDate": "19010203",
           "StudyDate": "19991231", "InstitutionName": "CANARY INSTITUTE 7781", "AccessionNumber": "CANACC5531"}
    path = tmp_path / "canary.dcm"
    write_canary_dicom(str(path), phi)
    ds = pydicom.dcmread(path)
    for key, value in phi.items():
        assert str(ds[key].value) == value
    assert ds.pixel_array.shape == (256, 256) and ds.Modality == "CR"


def test_config_validation():
    with pytest.raises(ConfigError, match="site_c_images_min"):
        GroundingConfig.from_dict({"synth": {"site_c_images_min": 5, "site_c_images_max": 3}})
    with pytest.raises(ConfigError, match="n_site_b_boxed"):
        GroundingConfig.from_dict({"synth": {"n_site_b": 2, "n_site_b_boxed": 3}})
    with pytest.raises(ConfigError, match="site_b_rle_fraction"):
        GroundingConfig.from_dict({"synth": {"site_b_rle_fraction": 1.5}})


def test_cli_writes_dataset_manifest_config_and_sheet(tmp_path, capsys):
    from rayjobs.synth import main

    sets = ["synth.n_site_a=2", "synth.n_site_b=2", "synth.n_site_b_boxed=1", "synth.n_site_c_patients=1",
            "synth.site_a_size=96", "synth.site_b_size=96", "synth.site_c_size=96", "synth.workers=1",
            "synth.contact_per_site=2"]
    argv = ["--out", str(tmp_path)] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 0
    for name in ("manifest.parquet", "index.parquet", "config.yaml", "contact_sheet.png", "summary.json"):
        assert (tmp_path / name).is_file(), name
    assert pq.read_table(tmp_path / "manifest.parquet").schema.equals(MANIFEST_SCHEMA)
    assert "site A: 2 images" in capsys.readouterr().out
