"""Per-site image makers: render, store in the site's format, write the report, return the truth row."""

from __future__ import annotations

import io
from copy import deepcopy
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from grounding.data import storage
from grounding.config import SynthConfig
from grounding.synth import anatomy, dicom_writer, imaging, lesions, reports
from grounding.synth.cases import attributes_for, flat_attributes, image_rng
from grounding.synth.render import Acquisition, Rendered, render_case

_CLINICAL = ["Fever and cough for three days.", "Shortness of breath, hypoxic on room air.",
             "Dry cough, fatigue, positive RT-PCR.", "Admitted with fever and dyspnea."]


def _positive_render(rng, h, w, acq, patient, view, box_jitter, tries: int = 4) -> Rendered:
    """A positive image whose opacity is visible (some score and a box); redraw if it vanished."""
    out = None
    for _ in range(tries):
        out = render_case(rng, h, w, acq, patient, lesions.sample_truth(rng), view, box_jitter)
        if out.score > 0 and len(out.boxes):
            return out
    return out


def _row(key: str, file: str, site: str, patient: str, study: str, img: Rendered, h: int, w: int, view: str,
         fmt: str, photometric: str, bits: int, ts: str, roles: dict | None, reported: list[str], purpose: str,
         offset: int | None, report_file: str) -> dict:

    t = img.truth
    positive = t is not None and img.score > 0
    return {
        "image_key": key, "file": file, "site": site, "patient_key": patient, "study_key": study,
        "width": w, "height": h, "view": view, "format": fmt, "photometric": photometric, "bits_stored": bits,
        "transfer_syntax": ts, "positive": positive,
        "boxes": [float(v) for v in img.boxes.reshape(-1)] if positive else [],
        "attributes": flat_attributes(roles) if positive else [], "reported_attributes": reported if positive else [],
        "sides": list(t.sides) if positive else [], "zones": list(t.zones) if positive else [],
        "pattern": t.pattern if positive else "", "texture": t.texture if positive else "",
        "density": float(t.density) if positive else 0.0, "severity": img.score,
        "severity_right": img.score_right, "severity_left": img.score_left,
        "fraction_right": round(img.fraction_right, 6), "fraction_left": round(img.fraction_left, 6),
        "purpose": purpose, "offset_days": offset, "devices": [d for d in img.devices if d != "text marker"],
        "report_file": report_file,
    }


def make_site_a(cfg: SynthConfig, out: str, i: int, rng: np.random.Generator, acq: Acquisition) -> dict:
    """RSNA-like: one image per patient, CR JPEG Baseline 8-bit MONOCHROME2, boxes, no report."""

    size = cfg.site_a_size
    patient = anatomy.sample_patient(rng)
    view = "PA" if rng.random() < 0.55 else "AP"
    if rng.random() < cfg.site_a_positive_fraction:
        img = _positive_render(rng, size, size, acq, patient, view, cfg.box_jitter)
    else:
        img = render_case(rng, size, size, acq, patient, None, view, cfg.box_jitter)
    roles = attributes_for(img.truth, img.score, rng, cfg.severity_wording_noise) if img.truth else None
    key = f"A-{i:06d}"
    file = f"site_a/{key}.dcm"
    identity = dicom_writer.fake_identity(rng, 0)
    uids = {k: dicom_writer.uid(cfg.seed, "A", i, k) for k in ("study", "series", "sop")}
    pixels = imaging.quantize(img.display, 8)
    ts = dicom_writer.write(str(Path(out, file)), pixels, transfer="jpeg", photometric="MONOCHROME2", bits_stored=8,
                            sop_class=dicom_writer.CR_STORAGE, identity=identity, uids=uids, view=view,
                            jpeg_quality=cfg.site_a_jpeg_quality)
    return _row(key, file, "A", f"A-p{i:06d}", f"A-s{i:06d}", img, size, size, view, "dicom", "MONOCHROME2", 8, ts,
                roles, flat_from(roles), "detector", None, "")


def flat_from(roles: dict | None) -> list[str]:

    return flat_attributes(roles)


def make_site_b(cfg: SynthConfig, out: str, i: int, boxed: bool, rng: np.random.Generator,
                acq: Acquisition) -> dict:
    """MIMIC-like: 16-bit/12 stored, some MONOCHROME1 (CR), the rest DX; some RLE; devices; report."""

    size = cfg.site_b_size
    patient_no = i * 2 // 3  # about 1.5 studies per patient; anatomy and identity follow the patient
    prng = np.random.default_rng([cfg.seed, 2, patient_no, 7])
    patient = anatomy.sample_patient(prng)
    identity = dicom_writer.fake_identity(prng, int(i - (patient_no * 3 + 1) // 2) * 30)
    view = "AP" if rng.random() < 0.7 else "PA"
    if rng.random() < cfg.site_b_positive_fraction:
        img = _positive_render(rng, size, size, acq, patient, view, cfg.box_jitter)
    else:
        img = render_case(rng, size, size, acq, patient, None, view, cfg.box_jitter)
    roles = attributes_for(img.truth, img.score, rng, cfg.severity_wording_noise) if img.score > 0 else None
    text, reported = reports.write_report(roles is not None, roles, img.devices, view, "", cfg.attribute_omission,
                                          cfg.report_clutter, rng)
    key, study = f"B-{i:06d}", f"B-s{i:06d}"
    report_file = f"reports/{study}.txt"
    storage.atomic_write_text(Path(out, report_file), text)
    mono1 = rng.random() < cfg.site_b_monochrome1_fraction
    transfer = "rle" if rng.random() < cfg.site_b_rle_fraction else "explicit"
    values = imaging.quantize(img.display, 12)
    lo, hi = np.percentile(values, [1, 99.5])
    stored = (4095 - values).astype(np.uint16) if mono1 else values
    photometric = "MONOCHROME1" if mono1 else "MONOCHROME2"
    sop = dicom_writer.CR_STORAGE if mono1 else dicom_writer.DX_PRESENTATION_STORAGE
    center = 4095 - (lo + hi) / 2 if mono1 else (lo + hi) / 2
    uids = {k: dicom_writer.uid(cfg.seed, "B", i, k) for k in ("study", "series", "sop")}
    file = f"site_b/{key}.dcm"
    ts = dicom_writer.write(str(Path(out, file)), stored, transfer=transfer, photometric=photometric, bits_stored=12,
                            sop_class=sop, identity=identity, uids=uids, view=view,
                            window=(float(center), float(max(hi - lo, 1.0))))
    return _row(key, file, "B", f"B-p{patient_no:06d}", study, img, size, size, view, "dicom", photometric, 12, ts,
                roles, reported, "eval" if boxed else "grounding", None, report_file)


def covid_truth(rng: np.random.Generator) -> lesions.Truth:
    """COVID-like: mostly bilateral, peripheral/lower predominant, ground glass or consolidation."""
    t = lesions.sample_truth(rng)
    t.pattern = str(rng.choice(["multifocal", "diffuse", "patchy"], p=[0.4, 0.35, 0.25]))
    t.sides = ["right", "left"] if rng.random() < 0.8 else [str(rng.choice(["right", "left"]))]
    t.zones = list(rng.choice(["lower", "peripheral", "basal", "middle"], size=2 if t.pattern == "multifocal" else 1,
                              replace=False))
    if t.pattern == "diffuse" and rng.random() < 0.5:
        t.zones = []
    t.texture = str(rng.choice(["hazy", "consolidation"], p=[0.6, 0.4]))
    t.density = float(rng.uniform(0.35, 0.5) if t.texture == "hazy" else rng.uniform(0.6, 0.9))
    return t


def make_site_c_patient(cfg: SynthConfig, out: str, p: int, acq: Acquisition) -> list[dict]:
    """Several PNG/JPEG images of one patient over days; the opacity waxes and wanes."""

    prng = image_rng(cfg.seed, "C", p)
    patient = anatomy.sample_patient(prng)
    count = int(prng.integers(cfg.site_c_images_min, cfg.site_c_images_max + 1))
    later = prng.choice(np.arange(1, cfg.site_c_days_max + 1), size=min(count - 1, cfg.site_c_days_max), replace=False)
    days = [0, *sorted(int(d) for d in later)]
    base = covid_truth(prng)
    peak, scale = float(prng.uniform(2, cfg.site_c_days_max * 0.7 + 2)), float(prng.uniform(0.8, 1.5))
    age, sex = int(prng.integers(25, 90)), str(prng.choice(["M", "F"]))
    view_pa = prng.random() < 0.5
    rows, prev = [], None
    for j, day in enumerate(days):
        rng = image_rng(cfg.seed, "C", p, j + 1)
        factor = scale * (0.35 + 0.9 * np.exp(-(((day - peak) / 6.0) ** 2)))
        width = cfg.site_c_size
        height = int(round(width * rng.uniform(1.0, 1.15)))
        view = "PA" if view_pa else "AP"
        img = render_case(rng, height, width, acq, patient, deepcopy(base), view, cfg.box_jitter,
                          lesion_rng=np.random.default_rng([cfg.seed, 3, p, 999]), fill_scale=factor)
        roles = attributes_for(img.truth, img.score, rng, cfg.severity_wording_noise) if img.score > 0 else None
        comparison = "" if prev is None else ("worse" if img.score > prev else "better" if img.score < prev else "unchanged")
        text, reported = reports.write_report(roles is not None, roles, img.devices, view, comparison,
                                              cfg.attribute_omission, cfg.report_clutter, rng)
        text = f"{rng.choice(_CLINICAL)} {age}-year-old.\n{text}"
        prev = img.score
        jpeg = rng.random() < cfg.site_c_jpeg_fraction
        key = f"C-{p:04d}-{j:02d}"
        name = f"synth-covid-{p:04d}-day{day:02d}.{'jpg' if jpeg else 'png'}"
        pixels = imaging.quantize(img.display, 8)
        buf = io.BytesIO()
        pil = Image.fromarray(pixels, mode="L")
        if not jpeg and rng.random() < 0.3:  # the real collection mixes grey and RGB files
            pil = pil.convert("RGB")
        pil.save(buf, format="JPEG" if jpeg else "PNG", **({"quality": 90} if jpeg else {}))
        file = f"site_c/images/{name}"
        storage.atomic_write_bytes(Path(out, file), buf.getvalue())
        study = f"C-s{p:04d}-{j:02d}"
        report_file = f"reports/{study}.txt"
        storage.atomic_write_text(Path(out, report_file), text)
        row = _row(key, file, "C", f"C-p{p:04d}", study, img, height, width, view, "jpeg" if jpeg else "png",
                   "MONOCHROME2", 8, "", roles, reported, "eval", day, report_file)
        row["_c"] = {"patientid": 1000 + p, "sex": sex, "age": age, "name": name, "notes": text,
                     "boxed": bool(rng.random() < cfg.site_c_box_fraction), "texture": base.texture}
        rows.append(row)
    return rows


METADATA_COLUMNS = ["patientid", "offset", "sex", "age", "finding", "survival", "intubated", "intubation_present",
                    "went_icu", "in_icu", "needed_supplemental_O2", "extubated", "temperature", "pO2_saturation",
                    "leukocyte_count", "neutrophil_count", "lymphocyte_count", "view", "modality", "date",
                    "location", "folder", "filename", "doi", "url", "license", "clinical_notes", "other_notes"]
BOX_COLUMNS = ["#", "Taxonomy", "Class", "Template Name", "File Folder", "Filename", "Image", "Tag", "Mask",
               "Resolution", "Top", "Left", "Width", "Height", "Points", "Text Annotation", "Minimal Top",
               "Minimal Left", "Minimal Width", "Minimal Height", "Attributes"]


def write_site_c_tables(out: Path, rows: list[dict]) -> None:
    """metadata.csv, severity.csv and the radiologist box table, in the real collection's layout."""
    meta, sev, boxes = [], [], []
    for r in rows:
        c = r["_c"]
        rec = dict.fromkeys(METADATA_COLUMNS, "")
        rec.update({"patientid": c["patientid"], "offset": r["offset_days"], "sex": c["sex"], "age": c["age"],
                    "finding": "Pneumonia/Viral/COVID-19", "view": r["view"], "modality": "X-ray",
                    "location": "Synthetic City", "folder": "images", "filename": c["name"], "license": "CC0",
                    "clinical_notes": c["notes"]})
        meta.append(rec)
        sev.append({"filename": c["name"], "score": r["severity"]})
        if c["boxed"] and r["boxes"]:
            cls = "COVID-19 Ground Glass Opacities" if c["texture"] == "hazy" else "COVID-19 Consolidation"
            for b in np.asarray(r["boxes"]).reshape(-1, 4):
                rec = dict.fromkeys(BOX_COLUMNS, "")
                rec.update({"#": len(boxes) + 1, "Class": cls, "Template Name": cls.split(" ", 1)[1],
                            "Filename": c["name"], "Image": f"images/{c['name']}",
                            "Resolution": f"{r['width']}x{r['height']}", "Top": b[1], "Left": b[0],
                            "Width": round(b[2] - b[0], 1), "Height": round(b[3] - b[1], 1)})
                boxes.append(rec)
    base = out / "site_c"
    storage.atomic_write_text(base / "metadata.csv", pd.DataFrame(meta, columns=METADATA_COLUMNS).to_csv(index=False))
    storage.atomic_write_text(base / "severity.csv", pd.DataFrame(sev, columns=["filename", "score"]).to_csv(index=False))
    storage.atomic_write_text(base / "annotations" / "generalblockchain-structure.csv",
                              pd.DataFrame(boxes, columns=BOX_COLUMNS).to_csv(index=False))
