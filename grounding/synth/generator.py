"""Generate the synthetic dataset: sites A, B, C, reports, the truth index and a summary.

Layout under ``out_dir``::

    site_a/A-000000.dcm ...        RSNA-like: CR, JPEG Baseline 8-bit, MONOCHROME2
    site_b/B-000000.dcm ...        MIMIC-like: 16-bit (12 stored), MONOCHROME1/2, Explicit VR LE or RLE
    site_c/metadata.csv            COVID-collection layout (patientid, offset, view, modality, folder,
    site_c/images/*.png|*.jpg        filename, clinical_notes, finding, ...)
    site_c/severity.csv            filename, score (geographic extent 0-8)
    site_c/annotations/generalblockchain-structure.csv   radiologist boxes (Top/Left/Width/Height)
    reports/<study>.txt            report text (sites B and C; site A has none, like RSNA)
    index.parquet                  the full truth per image (INDEX_SCHEMA)
    summary.json                   counts and the domain-shift knobs

Every image has its own generator seeded from ``(seed, site, index)``, so the output is
byte-identical for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from grounding.data import storage
from grounding.config import SynthConfig
from grounding.synth import sites
from grounding.synth.cases import image_rng
from grounding.synth.render import Acquisition

INDEX_SCHEMA = pa.schema([
    ("image_key", pa.string()), ("file", pa.string()), ("site", pa.string()),
    ("patient_key", pa.string()), ("study_key", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("view", pa.string()), ("format", pa.string()), ("photometric", pa.string()), ("bits_stored", pa.int32()),
    ("transfer_syntax", pa.string()), ("positive", pa.bool_()), ("boxes", pa.list_(pa.float64())),
    ("attributes", pa.list_(pa.string())), ("reported_attributes", pa.list_(pa.string())),
    ("sides", pa.list_(pa.string())), ("zones", pa.list_(pa.string())), ("pattern", pa.string()),
    ("texture", pa.string()), ("density", pa.float64()), ("severity", pa.int32()),
    ("severity_right", pa.int32()), ("severity_left", pa.int32()), ("fraction_right", pa.float64()),
    ("fraction_left", pa.float64()), ("purpose", pa.string()), ("offset_days", pa.int32()),
    ("devices", pa.list_(pa.string())), ("report_file", pa.string()),
])


def acquisition(cfg: SynthConfig, site: str) -> Acquisition:
    if site == "A":
        return Acquisition(cfg.site_a_noise, cfg.site_a_gamma, cfg.site_a_blur, cfg.site_a_exposure_jitter,
                           cfg.site_a_positioning_jitter, 0.0)
    return Acquisition(cfg.site_b_noise, cfg.site_b_gamma, cfg.site_b_blur, cfg.site_b_exposure_jitter,
                       cfg.site_b_positioning_jitter, cfg.site_b_device_fraction)


def plan(cfg: SynthConfig) -> list[tuple[str, int, bool]]:
    """(site, index, eval_boxes) jobs; which site-B images keep expert boxes is fixed by the seed."""
    perm = np.random.default_rng([cfg.seed, 99]).permutation(cfg.n_site_b)
    boxed = set(int(i) for i in perm[: cfg.n_site_b_boxed])
    jobs = [("A", i, False) for i in range(cfg.n_site_a)]
    jobs += [("B", i, i in boxed) for i in range(cfg.n_site_b)]
    jobs += [("C", p, False) for p in range(cfg.n_site_c_patients)]
    return jobs


def _run(args: tuple) -> list[dict]:
    cfg, out_dir, (site, index, boxed) = args
    if site == "A":
        return [sites.make_site_a(cfg, out_dir, index, image_rng(cfg.seed, "A", index), acquisition(cfg, "A"))]
    if site == "B":
        return [sites.make_site_b(cfg, out_dir, index, boxed, image_rng(cfg.seed, "B", index),
                                  acquisition(cfg, "B"))]
    return sites.make_site_c_patient(cfg, out_dir, index, acquisition(cfg, "B"))


def generate(cfg: SynthConfig, out_dir: str | Path) -> dict:
    """Write the whole dataset under ``out_dir`` (a local folder) and return the summary dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, str(out), job) for job in plan(cfg)]
    if cfg.workers > 1 and len(jobs) > 4:
        ctx = multiprocessing.get_context("spawn")  # no fork: callers may hold threads (torch, Ray)
        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx) as pool:
            results = list(pool.map(_run, jobs, chunksize=4))
    else:
        results = [_run(job) for job in jobs]
    records = [rec for batch in results for rec in batch]
    sites.write_site_c_tables(out, [r for r in records if r["site"] == "C"])
    for rec in records:
        rec.pop("_c", None)
    index = pa.Table.from_pylist(records, schema=INDEX_SCHEMA)
    storage.write_table(index, str(out / "index.parquet"))
    summary = summarise(cfg, records)
    storage.atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True))
    return summary


def summarise(cfg: SynthConfig, records: list[dict]) -> dict:
    from collections import Counter

    def count(key: str, site: str) -> dict:
        return dict(sorted(Counter(str(r[key]) for r in records if r["site"] == site).items()))

    per_site = {}
    for site in ("A", "B", "C"):
        rows = [r for r in records if r["site"] == site]
        per_site[site] = {
            "images": len(rows), "positive": sum(r["positive"] for r in rows),
            "patients": len({r["patient_key"] for r in rows}),
            "with_report": sum(bool(r["report_file"]) for r in rows),
            "purpose": count("purpose", site), "photometric": count("photometric", site),
            "transfer_syntax": count("transfer_syntax", site), "format": count("format", site),
            "with_devices": sum(bool(r["devices"]) for r in rows),
            "mean_severity": float(np.mean([r["severity"] for r in rows])) if rows else 0.0,
        }
    return {
        "dataset": "synthetic",
        "images": len(records),
        "sites": per_site,
        "notes": {
            "A": "detector-training site, RSNA-like: CR JPEG Baseline 8-bit MONOCHROME2, boxes, no reports",
            "B": "report-only site, MIMIC-like: 16-bit (12 stored), some MONOCHROME1, other gamma/noise/blur/"
                 "positioning, devices and markers; n_site_b_boxed keep expert boxes (purpose eval)",
            "C": "COVID-collection layout: PNG/JPEG, several images per patient over days, severity.csv 0-8",
            "boxes": "xyxy in stored pixels; index.parquet holds the truth for every image",
            "severity": "geographic extent: per lung 0-4 by involved fraction (0, <25, 25-50, 50-75, >75 %), sum 0-8",
        },
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k != "workers"},
    }


__all__ = ["INDEX_SCHEMA", "acquisition", "generate", "plan"]
